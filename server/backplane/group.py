"""Group commit: calls made while one is in flight go to Redis together, as one call, when it returns.

A single-event POST through Redis cost ~30 µs more than in memory, most of it system calls: the
publish script's write and the tail's next XREAD. With several publishers at once (services post
one event per state change, concurrently), the POSTs that arrive while a script call is in
flight are sent as one script call when it returns: one write, one Lua call, one XREAD wakeup
for all of them. A call made while none is in flight is sent at once, so an isolated POST waits
for nothing; the whole group is all-or-nothing, as each POST's own events always were.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from server.backplane.resp import ReplyLost

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Waiting(Generic[Item, Result]):
    __slots__ = ("future", "items")

    def __init__(self, items: Sequence[Item], future: asyncio.Future[list[Result]]) -> None:
        self.items = items
        self.future = future


class GroupCommit(Generic[Item, Result]):
    """``submit(items)`` returns ``send``'s results for those items, in order; ``send`` is called with
    the items of every ``submit`` that waited for the call in flight (at most ``max_items``, unless one
    alone has more), and must return one result per item."""

    def __init__(self, send: Callable[[list[Item]], Awaitable[list[Result]]], max_items: int) -> None:
        self._send = send
        self._max_items = max_items
        self._queue: collections.deque[_Waiting[Item, Result]] = collections.deque()
        self._busy = False
        self._task: asyncio.Task[None] | None = None  # the group being sent (a reference keeps it)

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        if self._busy:
            waiting = _Waiting(items, asyncio.get_running_loop().create_future())
            self._queue.append(waiting)
            return await waiting.future
        self._busy = True
        try:
            return await self._send(list(items))
        finally:
            self._next()

    def _next(self) -> None:
        """The call in flight is over: send what queued meanwhile, as one call, or go idle."""
        group: list[_Waiting[Item, Result]] = []
        count = 0
        queue = self._queue
        while queue and (not group or count + len(queue[0].items) <= self._max_items):
            waiting = queue.popleft()
            if not waiting.future.done():  # done: its caller was cancelled while it waited
                group.append(waiting)
                count += len(waiting.items)
        if not group:
            self._busy = False
            self._task = None
            return
        self._task = asyncio.ensure_future(self._send_group(group))

    async def _send_group(self, group: list[_Waiting[Item, Result]]) -> None:
        try:
            results = await self._send([item for waiting in group for item in waiting.items])
        except asyncio.CancelledError:  # shutting down: the callers must not wait forever
            for waiting in group:
                if not waiting.future.done():
                    waiting.future.set_exception(ReplyLost("the publish was cancelled"))
            raise
        except Exception as exc:
            for waiting in group:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
        else:
            start = 0
            for waiting in group:
                end = start + len(waiting.items)
                if not waiting.future.done():
                    waiting.future.set_result(results[start:end])
                start = end
        finally:
            self._next()
