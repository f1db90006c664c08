"""Our server in memory, plus one Redis round trip per publish: the floor of any Redis backplane.

A publish through Redis must wait for Redis's answer before the POST is answered (the ids are
Redis's), so its process sleeps and wakes once more per POST than in memory. This measures that
alone: the memory backplane, with one ``PING`` on the backplane's own connection class
(``server/backplane/resp.py``) awaited before each publish. Nothing else of the Redis path runs
(no script, no tail), so ``bench/run``'s single-POST figure with it is the lowest a Redis-backed
process could reach on this machine. Used through ``bench/python-round-trip``:

    bench/run --variants ours-ws --workloads ingest --python bench/python-round-trip

``FLOOR_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``) is the Redis pinged.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from server.__main__ import run_server
from server.backplane.memory import MemoryBackplane
from server.backplane.resp import RespConnection
from server.events import OutgoingEvent

URL = os.environ.get("FLOOR_REDIS_URL", "redis://127.0.0.1:6379/15")
_publish = MemoryBackplane.publish
_connection: RespConnection | None = None


async def publish_after_a_round_trip(
    self: MemoryBackplane, events: Sequence[OutgoingEvent]
) -> list[str | None]:
    global _connection
    if _connection is None:
        _connection = RespConnection(URL, tls_verify=True, timeout=5.0)
    await _connection.call("PING")
    return await _publish(self, events)


MemoryBackplane.publish = publish_after_a_round_trip  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(run_server())
