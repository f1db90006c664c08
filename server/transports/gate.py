"""How many connects a process admits at once (``websocket.max_connecting``).

A connect is a chain of coroutines (front door, authentication, the node's rooms and start
position, the greeting) suspended at each backplane or session round trip. In a reconnect storm
all of a process's clients would be in that chain at once: with Redis, ~10 KB each, a peak that
the process's RSS never gives back (CPython keeps its arenas). Past the limit a connect waits
its turn as a callback and the bytes it sent, not as a suspended chain; the kernel holds what it
sends meanwhile. The limit is far above what one core completes concurrently, so it does not slow
a storm down: it only stops one from stacking up.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)


class ConnectGate:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._waiting: deque[Callable[[], None]] = deque()

    def enter(self, start: Callable[[], None]) -> None:
        """Call ``start`` now if a connect may begin, else once one ends. ``start`` must see to it
        that ``leave`` is called once, when its connect is done (or at once, if it has gone)."""
        if self.active < self.limit:
            self.active += 1
            start()
        else:
            self._waiting.append(start)

    def leave(self) -> None:
        self.active -= 1
        while self._waiting and self.active < self.limit:
            start = self._waiting.popleft()
            self.active += 1
            try:
                start()
            except Exception:  # a waiting connect must not take the others' turn with it
                log.exception("connect failed to start")
                self.active -= 1

    def __len__(self) -> int:
        """Connects waiting for their turn."""
        return len(self._waiting)
