"""The JSON module python-socketio and python-engineio encode and decode packets with (their
public ``json`` option): orjson, giving the same values as the standard library module they use
by default (``engineio.json``), which cost a new encoder or decoder object per call (~5 % of a
Socket.IO connect's CPU in a reconnect storm).

Where orjson would answer differently, the standard library answers:
- decoding: a text with any float in it (orjson turns integers past 64 bits into floats;
  ``engineio.json`` keeps them as ints and refuses those over 100 digits), and whatever orjson
  refuses (``NaN``, ``1e400``, lone surrogates), so a packet is accepted or refused as before;
- encoding: whatever orjson refuses (integers past 64 bits, keys that are not strings, lone
  surrogates). Non-ASCII text is written as UTF-8 rather than ``\\u`` escapes (the same JSON), and
  a NaN or an infinity as ``null`` (the standard library's ``NaN`` is not JSON); the server sends
  neither.
"""

from __future__ import annotations

from typing import Any

import orjson
from engineio import json as engineio_json


def loads(s: str, **_: Any) -> Any:
    try:
        value = orjson.loads(s)
    except orjson.JSONDecodeError:
        return engineio_json.loads(s)
    # orjson reads an integer past 64 bits as a float: a text with any float (rare in what
    # clients send) is read again as the standard library reads it.
    return engineio_json.loads(s) if _has_float(value) else value


def _has_float(value: Any) -> bool:
    stack = [value]  # not recursive: the nesting is the client's choice
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float:
            return True
        if kind is list:
            stack.extend(item)
        elif kind is dict:
            stack.extend(item.values())
    return False


def dumps(obj: Any, **_: Any) -> str:
    """Compact JSON (the libraries ask for ``separators=(",", ":")``, orjson's only form)."""
    try:
        return orjson.dumps(obj).decode()
    except TypeError:
        return str(engineio_json.dumps(obj, separators=(",", ":")))
