"""The listening socket's backlog (``backlog`` in config.yaml).

aiohttp listens with a backlog of 128. In a reconnect storm (every client of a restarted process
at once) the kernel's accept queue overflowed, and each client whose SYN was dropped waited
1-3 s to send it again: those waits, not the server's CPU, made the slowest connects. The kernel
silently caps the backlog at ``net.core.somaxconn``, so a lower cap is said once in the log.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


def listen_backlog(requested: int, somaxconn: Path = SOMAXCONN) -> int:
    """The backlog to listen with: ``requested``, or the kernel's cap when that is lower."""
    try:
        cap = int(somaxconn.read_text())
    except (OSError, ValueError):
        return requested  # not Linux, or not readable: the kernel caps it anyway
    if cap < requested:
        log.warning(
            "listen backlog %d is capped by net.core.somaxconn=%d; raise it with "
            "sysctl -w net.core.somaxconn=%d for reconnect storms",
            requested,
            cap,
            requested,
        )
        return cap
    return requested
