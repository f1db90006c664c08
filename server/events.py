"""The event as it travels from the backplane to the transports, and its wire encodings.

An event's ``data`` is JSON-encoded once when it is published; every frame below is built from
those bytes by concatenation, once per event (cached), never once per recipient. Events that go
to many connections together (an ``EventBatch``) are also joined once per wire form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter

import orjson

from server.transports.websocket import OP_TEXT, deflate, frame, text_frame

EventId = tuple[int, int]
ZERO_ID = "0-0"


def parse_event_id(text: object) -> EventId | None:
    """``"1732572000000-3"`` → ``(1732572000000, 3)``; anything else → ``None``."""
    if not isinstance(text, str) or len(text) > 41:
        return None
    ms, sep, seq = text.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        return None
    return int(ms), int(seq)


def format_event_id(event_id: EventId) -> str:
    return f"{event_id[0]}-{event_id[1]}"


@dataclass(slots=True)
class Event:
    """One published event: its id, type, JSON-encoded data and the rooms it is addressed to."""

    id: str
    type: str
    data_json: bytes
    rooms: tuple[str, ...]
    sort_key: EventId = field(init=False, repr=False)
    _ws_frame: bytes | None = field(default=None, repr=False)
    _ws_frame_deflated: bytes | None = field(default=None, repr=False)
    _sio_payload: bytes | None = field(default=None, repr=False)
    _sio_frame: bytes | None = field(default=None, repr=False)
    _sio_frame_deflated: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        parsed = parse_event_id(self.id)
        if parsed is None:
            raise ValueError(f"not an event id: {self.id!r}")
        self.sort_key = parsed

    def _ws_payload(self) -> bytes:
        return b"".join(
            (
                b'{"type":',
                orjson.dumps(self.type),
                b',"data":',
                self.data_json,
                b',"id":"',
                self.id.encode(),
                b'"}',
            )
        )

    @property
    def ws_frame(self) -> bytes:
        """The plain-WebSocket frame: ``{"type": T, "data": D, "id": ID}``."""
        if self._ws_frame is None:
            self._ws_frame = text_frame(self._ws_payload())
        return self._ws_frame

    @property
    def ws_frame_deflated(self) -> bytes:
        """The same, compressed (permessage-deflate without context: the same for every client)."""
        if self._ws_frame_deflated is None:
            self._ws_frame_deflated = frame(OP_TEXT, deflate(self._ws_payload()), rsv1=True)
        return self._ws_frame_deflated

    @property
    def sio_payload(self) -> bytes:
        """The Socket.IO EVENT packet ``2["T",D,"ID"]`` (without Engine.IO's ``4`` prefix)."""
        if self._sio_payload is None:
            self._sio_payload = b"".join(
                (b"2[", orjson.dumps(self.type), b",", self.data_json, b',"', self.id.encode(), b'"]')
            )
        return self._sio_payload

    @property
    def sio_frame(self) -> bytes:
        """The whole WebSocket frame carrying the Engine.IO MESSAGE ``42[...]``."""
        if self._sio_frame is None:
            self._sio_frame = text_frame(b"4" + self.sio_payload)
        return self._sio_frame

    @property
    def sio_frame_deflated(self) -> bytes:
        if self._sio_frame_deflated is None:
            self._sio_frame_deflated = frame(OP_TEXT, deflate(b"4" + self.sio_payload), rsv1=True)
        return self._sio_frame_deflated


Form = Callable[["Event"], bytes]
WS_FRAME: Form = attrgetter("ws_frame")
WS_FRAME_DEFLATED: Form = attrgetter("ws_frame_deflated")
SIO_FRAME: Form = attrgetter("sio_frame")
SIO_FRAME_DEFLATED: Form = attrgetter("sio_frame_deflated")


class EventBatch(list[Event]):
    """Events on their way to many connections together (a broadcast): each wire form of the
    whole batch is joined once, not once per connection."""

    __slots__ = ("_joined",)

    def __init__(self, events: Sequence[Event]) -> None:
        super().__init__(events)
        self._joined: dict[Form, bytes] = {}


def joined(events: Sequence[Event], form: Form) -> bytes:
    """The ``form`` frames of ``events`` (e.g. ``WS_FRAME``), in order, as one write."""
    if len(events) == 1:
        return form(events[0])
    if isinstance(events, EventBatch):
        frames = events._joined.get(form)
        if frames is None:
            frames = events._joined[form] = b"".join(map(form, events))
        return frames
    return b"".join(map(form, events))


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    """An event accepted by the admin API, before the backplane gives it an id.

    ``idempotency_key`` is the stored key (see ``idempotency_key``); ``version_key`` names the
    entity whose ``version`` this event carries (``ver:TYPE:ENTITY``), both ``None`` when absent.
    """

    type: str
    data_json: bytes
    rooms: tuple[str, ...]
    idempotency_key: str | None = None
    version: int | None = None
    version_key: str | None = None

    def with_id(self, event_id: str) -> Event:
        return Event(event_id, self.type, self.data_json, self.rooms)


def idempotency_key(own: str | None, header: str | None, index: int) -> str | None:
    """The key an event's idempotency is stored under, one namespace per source.

    An event's own ``idempotencyKey`` is stored as it is (``idem:KEY``); a request's
    ``Idempotency-Key`` header covers each of its events as ``idem-header:KEY#INDEX`` (index 0 for
    a single event), so no header can ever answer for an event that carries its own key.
    """
    if own is not None:
        return f"idem:{own}"
    if header is not None:
        return f"idem-header:{header}#{index}"
    return None
