"""Group commit of publishes (server/backplane/group.py): what waits for a call in flight is sent
together when it returns; each caller gets its own results; failures reach exactly their group."""

from __future__ import annotations

import asyncio

import pytest

from server.backplane.group import GroupCommit


class Sender:
    """Records every call; each returns its items doubled, after the test lets it go."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.release = asyncio.Event()
        self.failures: dict[int, Exception] = {}  # call number (from 0) -> what it raises

    async def send(self, items: list[int]) -> list[int]:
        number = len(self.calls)
        self.calls.append(items)
        await self.release.wait()
        if number in self.failures:
            raise self.failures[number]
        return [item * 2 for item in items]


async def test_an_isolated_call_is_sent_at_once() -> None:
    sender = Sender()
    group = GroupCommit(sender.send, max_items=100)
    task = asyncio.create_task(group.submit([1, 2]))
    await asyncio.sleep(0)
    assert sender.calls == [[1, 2]]  # sent before anything else ran
    sender.release.set()
    assert await task == [2, 4]


async def test_calls_made_while_one_is_in_flight_go_together_and_each_gets_its_own_results() -> None:
    sender = Sender()
    group = GroupCommit(sender.send, max_items=100)
    first = asyncio.create_task(group.submit([1]))
    await asyncio.sleep(0)
    others = [asyncio.create_task(group.submit([10 * n, 10 * n + 1])) for n in range(1, 4)]
    await asyncio.sleep(0)
    assert sender.calls == [[1]]
    sender.release.set()
    assert await first == [2]
    assert [await task for task in others] == [[20, 22], [40, 42], [60, 62]]
    assert sender.calls == [[1], [10, 11, 20, 21, 30, 31]]


async def test_a_group_holds_at_most_max_items_unless_one_call_alone_has_more() -> None:
    sender = Sender()
    group = GroupCommit(sender.send, max_items=3)
    first = asyncio.create_task(group.submit([0]))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(group.submit(items)) for items in ([1, 2], [3], [4, 5, 6, 7], [8])]
    await asyncio.sleep(0)
    sender.release.set()
    await asyncio.gather(first, *queued)
    assert sender.calls == [[0], [1, 2, 3], [4, 5, 6, 7], [8]]


async def test_a_failure_reaches_every_caller_of_its_group_and_the_next_group_carries_on() -> None:
    sender = Sender()
    sender.failures[1] = ConnectionError("redis went away")
    group = GroupCommit(sender.send, max_items=100)
    first = asyncio.create_task(group.submit([1]))
    await asyncio.sleep(0)
    failing = [asyncio.create_task(group.submit([n])) for n in (2, 3)]
    await asyncio.sleep(0)
    sender.release.set()
    assert await first == [2]
    for task in failing:
        with pytest.raises(ConnectionError, match="redis went away"):
            await task
    assert await group.submit([4]) == [8]
    assert sender.calls == [[1], [2, 3], [4]]


async def test_a_caller_cancelled_while_it_waits_has_nothing_sent() -> None:
    sender = Sender()
    group = GroupCommit(sender.send, max_items=100)
    first = asyncio.create_task(group.submit([1]))
    await asyncio.sleep(0)
    gone = asyncio.create_task(group.submit([2]))
    kept = asyncio.create_task(group.submit([3]))
    await asyncio.sleep(0)
    gone.cancel()
    sender.release.set()
    await first
    assert await kept == [6]
    assert sender.calls == [[1], [3]]
