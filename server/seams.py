"""Every place where this server relies on a private detail of aiohttp, python-engineio or
python-socketio, in one list, with the versions they were written for.

Each seam is marked in the code by a ``# SEAM: <name>`` comment at the line that relies on it;
tests/test_seams.py holds the list and those comments to each other, checks that every seam still
exists in the installed libraries, and fails, naming the library and both versions, when the
installed versions are not those below. An upgrade is then a decision: run
``bench/newest_releases.sh`` against the newest releases, read every seam below against the new
code, and only then move ``WRITTEN_FOR`` and the pins in requirements.txt together.
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from importlib import metadata

# The versions every seam below was read against (requirements.txt pins the same ones).
WRITTEN_FOR = {
    "aiohttp": "3.14.5",
    "python-engineio": "4.15.1",
    "python-socketio": "5.18.1",
}


@dataclass(frozen=True)
class Seam:
    name: str  # what the ``# SEAM:`` comment names
    library: str  # its distribution, a key of WRITTEN_FOR
    target: str  # "module:Class.attribute" that must exist (a method, or an attribute set in __init__)
    where: str  # the file of ours that relies on it
    why: str


SEAMS: tuple[Seam, ...] = (
    # --- aiohttp: a WebSocket's socket taken over after the handshake (server/transports/websocket.py) ---
    Seam(
        "aiohttp.RequestHandler._message_tail",
        "aiohttp",
        "aiohttp.web_protocol:RequestHandler._message_tail",
        "server/transports/websocket.py",
        "bytes a client sent right behind its upgrade request, which aiohttp's parser holds",
    ),
    Seam(
        "aiohttp.RequestHandler.transport",
        "aiohttp",
        "aiohttp.web_protocol:RequestHandler.transport",
        "server/transports/websocket.py",
        "set to None so that aiohttp, told the connection is lost, does not close the socket we took",
    ),
    Seam(
        "aiohttp.RequestHandler.connection_lost",
        "aiohttp",
        "aiohttp.web_protocol:RequestHandler.connection_lost",
        "server/transports/websocket.py",
        "called by us so that aiohttp frees its request, parser, reader and handler task (~12 KiB)",
    ),
    Seam(
        "aiohttp.StreamResponse.prepare",
        "aiohttp",
        "aiohttp.web_response:StreamResponse.prepare",
        "server/transports/websocket.py",
        "TakenOver: a response whose prepare and write_eof write nothing, for a socket already ours",
    ),
    # --- aiohttp: the listening socket's protocol factory (server/transports/front_door.py) ---
    Seam(
        "aiohttp.Application._make_handler",
        "aiohttp",
        "aiohttp.web_app:Application._make_handler",
        "server/transports/front_door.py",
        "what every runner (run_app, test servers) asks for its protocol factory: wrapped in the front door",
    ),
    Seam(
        "aiohttp.Server.__call__",
        "aiohttp",
        "aiohttp.web_server:Server.__call__",
        "server/transports/front_door.py",
        "makes the RequestHandler a socket is handed to (connection_made, then the bytes read so far)",
    ),
    # --- python-engineio ------------------------------------------------------------------------
    Seam(
        "engineio.AsyncServer._async",
        "python-engineio",
        "engineio.base_server:BaseServer._async",
        "server/transports/socketio.py",
        "its table of async-mode drivers: its 'websocket' entry becomes our WebSocketDriver, and its "
        "'translate_request' passes through an environ the front door made",
    ),
    Seam(
        "engineio.AsyncServer.handle_request",
        "python-engineio",
        "engineio.async_server:AsyncServer.handle_request",
        "server/transports/socketio.py",
        "its aiohttp route for every Engine.IO HTTP request: JSONP is refused before it; the front "
        "door calls it with an environ (a new session's WebSocket upgrade), which it reads as "
        "translate_request made it (REQUEST_METHOD, QUERY_STRING, HTTP_* headers)",
    ),
    Seam(
        "engineio.AsyncServer._log_error_once",
        "python-engineio",
        "engineio.base_server:BaseServer._log_error_once",
        "server/transports/socketio.py",
        "how it reports a client's bad request (at ERROR): ours logs at INFO",
    ),
    Seam(
        "engineio.AsyncSocket.__class__",
        "python-engineio",
        "engineio.async_socket:AsyncSocket.send",
        "server/transports/socketio.py",
        "each socket python-engineio makes is turned into a LeanSocket (a subclass) in place",
    ),
    Seam(
        "engineio.AsyncSocket.queue",
        "python-engineio",
        "engineio.async_socket:AsyncSocket.queue",
        "server/transports/eio.py",
        "its per-socket asyncio.Queue, replaced by one made only when needed (polling, upgrade)",
    ),
    Seam(
        "engineio.AsyncSocket.state",
        "python-engineio",
        "engineio.async_socket:AsyncSocket.upgraded",
        "server/transports/eio.py",
        "connected, upgrading, upgraded, closing, closed, last_ping, read and set by us as it does",
    ),
    Seam(
        "engineio.AsyncSocket.send",
        "python-engineio",
        "engineio.async_socket:AsyncSocket.send",
        "server/transports/eio.py",
        "every packet it sends: written straight to our WebSocket, or queued with a bound",
    ),
    Seam(
        "engineio.AsyncSocket.poll",
        "python-engineio",
        "engineio.async_socket:AsyncSocket.poll",
        "server/transports/eio.py",
        "a long-poll's packets: at most Payload.max_decode_packets, as its own client requires",
    ),
    Seam(
        "engineio.AsyncSocket.handle_post_request",
        "python-engineio",
        "engineio.async_socket:AsyncSocket.handle_post_request",
        "server/transports/eio.py",
        "a long-polling POST: its parse errors become EngineIOError (400, session closed)",
    ),
    Seam(
        "engineio.AsyncSocket.schedule_ping",
        "python-engineio",
        "engineio.async_socket:AsyncSocket.schedule_ping",
        "server/transports/eio.py",
        "re-arms a socket's ping on PONG: ours hands it to one PingScheduler instead of a task",
    ),
    Seam(
        "engineio.AsyncSocket.close",
        "python-engineio",
        "engineio.async_socket:AsyncSocket.close",
        "server/transports/eio.py",
        "closing also closes our WebSocket, answers a waiting poll, and forgets the socket",
    ),
    Seam(
        "engineio.AsyncSocket._websocket_handler",
        "python-engineio",
        "engineio.async_socket:AsyncSocket._websocket_handler",
        "server/transports/eio.py",
        "the driver is built with this bound method; we read the socket from it (__self__)",
    ),
    Seam(
        "engineio.environ.aiohttp.request",
        "python-engineio",
        "engineio.async_drivers.aiohttp:translate_request",
        "server/transports/eio.py",
        "its aiohttp driver puts the aiohttp request in the environ under 'aiohttp.request'",
    ),
    # --- python-socketio ------------------------------------------------------------------------
    Seam(
        "socketio.AsyncServer._engineio_server_class",
        "python-socketio",
        "socketio.async_server:AsyncServer._engineio_server_class",
        "server/transports/socketio.py",
        "the Engine.IO server class it builds: ours (RealtimeEngine)",
    ),
    Seam(
        "socketio.AsyncServer._handle_eio_connect",
        "python-socketio",
        "socketio.async_server:AsyncServer._handle_eio_connect",
        "server/transports/socketio.py",
        "a new Engine.IO session: its socket class swapped, its environ reduced, its CONNECT timed",
    ),
    Seam(
        "socketio.AsyncServer._handle_eio_message",
        "python-socketio",
        "socketio.async_server:AsyncServer._handle_eio_message",
        "server/transports/socketio.py",
        "every client message: binary, malformed and reserved packets refused, the rest dispatched "
        "by us on the packet already decoded",
    ),
    Seam(
        "socketio.AsyncServer._handle_disconnect",
        "python-socketio",
        "socketio.async_server:AsyncServer._handle_disconnect",
        "server/transports/socketio.py",
        "what its message dispatch calls for a client's DISCONNECT packet (we dispatch, see above)",
    ),
    Seam(
        "socketio.AsyncServer._handle_event",
        "python-socketio",
        "socketio.async_server:AsyncServer._handle_event",
        "server/transports/socketio.py",
        "what its message dispatch calls for a client's EVENT packet (we dispatch, see above)",
    ),
    Seam(
        "socketio.AsyncServer._send_packet",
        "python-socketio",
        "socketio.async_server:AsyncServer._send_packet",
        "server/transports/socketio.py",
        "every packet it sends (CONNECT, acks, errors) goes through our bounded write path",
    ),
    Seam(
        "socketio.AsyncServer._handle_connect",
        "python-socketio",
        "socketio.async_server:AsyncServer._handle_connect",
        "server/transports/socketio.py",
        "after its CONNECT reply is written, the missed events follow (recovery)",
    ),
    Seam(
        "socketio.AsyncManager.basic_enter_room",
        "python-socketio",
        "socketio.base_manager:BaseManager.basic_enter_room",
        "server/transports/sio_manager.py",
        "only the None room (its index of connected clients) is kept: rooms live in our hub",
    ),
)


@dataclass(frozen=True)
class VersionMismatch:
    library: str
    written_for: str
    installed: str | None  # None: not installed

    def __str__(self) -> str:
        found = self.installed or "not installed"
        return (
            f"{self.library}: the seams in server/seams.py were written for {self.written_for}, "
            f"installed is {found}. Read each seam of {self.library} against the new version "
            f"(bench/newest_releases.sh runs the suite on it), then update WRITTEN_FOR and requirements.txt."
        )


def installed_version(library: str) -> str | None:
    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return None


def check_versions() -> list[VersionMismatch]:
    """The libraries whose installed version is not the one the seams were written for."""
    mismatches = []
    for library, written_for in WRITTEN_FOR.items():
        installed = installed_version(library)
        if installed != written_for:
            mismatches.append(VersionMismatch(library, written_for, installed))
    return mismatches


def seam_exists(seam: Seam) -> bool:
    """Whether the seam's target is still there: a class attribute, or one set in an ``__init__``
    of the class or its bases (instance attributes are not on the class), or a module function."""
    module_name, _, path = seam.target.partition(":")
    try:
        owner: object = importlib.import_module(module_name)
    except ImportError:
        return False
    *parents, attribute = path.split(".")
    for part in parents:
        owner = getattr(owner, part, None)
        if owner is None:
            return False
    if hasattr(owner, attribute):
        return True
    if not inspect.isclass(owner):
        return False
    assigned = re.compile(rf"\bself\.{re.escape(attribute)}\s*(?::[^=]*)?=")
    for cls in owner.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        try:
            source = inspect.getsource(init)
        except (OSError, TypeError):
            continue
        if assigned.search(source):
            return True
    return False
