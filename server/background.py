"""Fire-and-forget tasks that are not garbage-collected mid-flight, and work due a fixed time later."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# The event loop keeps only weak references to tasks: they are held here until done.
_tasks: set[asyncio.Future[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


class FixedDelay(Generic[T]):
    """Runs ``action(item)`` ``delay`` seconds after the last ``add(item)``, from one task per process.

    The delay is the same for every item, so the order items were added is also the order they
    fall due: an insertion-ordered map, no heap, no timer per item (DESIGN: time-based work is one
    task). Adding an item again moves it to the back; ``discard`` forgets it at once, so what a
    closed connection left here goes with it, not when it would have come due (a reconnect storm
    would otherwise leave thousands of closed connections held for a ping interval).
    ``action`` may be a coroutine function; it is awaited before the next item.
    """

    def __init__(self, delay: float, action: Callable[[T], Awaitable[None] | None]) -> None:
        self.delay = delay
        self._action = action
        # OrderedDict: its front is found in O(1) however many were removed (a dict's is not).
        self._due: OrderedDict[T, float] = OrderedDict()
        self._task: asyncio.Task[None] | None = None

    def add(self, item: T) -> None:
        due = self._due
        due[item] = time.monotonic() + self.delay
        due.move_to_end(item)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, item: T) -> None:
        self._due.pop(item, None)

    def __len__(self) -> int:
        return len(self._due)

    async def _run(self) -> None:
        due = self._due
        try:
            while due:
                item, when = next(iter(due.items()))
                wait = when - time.monotonic()
                if wait > 0:
                    del item  # not held while waiting: it may be discarded, and freed, meanwhile
                    await asyncio.sleep(wait)
                    continue
                del due[item]
                try:
                    result = self._action(item)
                    if result is not None:
                        await result
                except Exception:
                    log.exception("scheduled action failed")
        finally:
            self._task = None

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
