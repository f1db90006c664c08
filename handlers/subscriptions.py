"""What a client may subscribe to, and the rooms every connection belongs to (contract §2)."""

from __future__ import annotations

import re
from collections.abc import Iterable

GLOBAL_ROOM = "global"
_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")


class SubscriptionError(ValueError):
    """A store id or list a client asked for is not acceptable."""


def valid_id(value: object) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


USER_PREFIX, ROLE_PREFIX, STORE_PREFIX, STAFF_PREFIX = "user:", "role:", "store:", "staff:"


def user_room(user_id: str) -> str:
    return USER_PREFIX + user_id


def role_room(role: str) -> str:
    return ROLE_PREFIX + role


def store_room(store_id: str) -> str:
    return STORE_PREFIX + store_id


def staff_room(store_id: str) -> str:
    return STAFF_PREFIX + store_id


def staff_rooms(role: str, stores: Iterable[str], staff_roles: Iterable[str], limit: int) -> list[str]:
    """The staff rooms a *verified* identity is in: one per store it works for, when its role is a
    staff role (at most ``limit``). Nothing a client sends reaches here: ``subscribe`` and
    ``stores`` name store ids, which become ``store:`` rooms only."""
    if role not in staff_roles:
        return []
    return [staff_room(store_id) for store_id in list(dict.fromkeys(stores))[:limit]]


def viewed_stores(rooms: Iterable[str]) -> list[str]:
    """The store ids among a connection's rooms."""
    return sorted(room[len(STORE_PREFIX) :] for room in rooms if room.startswith(STORE_PREFIX))


def base_rooms(user_id: str, role: str) -> list[str]:
    """The rooms a connection is put in at connect, before it receives anything."""
    return [user_room(user_id), role_room(role), GLOBAL_ROOM]


def store_rooms(store_ids: Iterable[object], limit: int) -> list[str]:
    """Rooms for the stores a client views; any bad id refuses the whole request."""
    rooms: list[str] = []
    for store_id in store_ids:
        if not valid_id(store_id):
            raise SubscriptionError("storeId must be 1-128 letters, digits or _.:@-")
        assert isinstance(store_id, str)
        room = store_room(store_id)
        if room not in rooms:
            rooms.append(room)
    if len(rooms) > limit:
        raise SubscriptionError(f"at most {limit} stores may be viewed at once")
    return rooms


def parse_store_list(text: str | None) -> list[str]:
    """``stores=s1,s2`` (query) → ``["s1", "s2"]``; empty items are skipped, so a client that joins
    an empty list (``stores=``) views no store rather than being refused."""
    if text is None:
        return []
    return [part for part in (item.strip() for item in text.split(",")) if part]
