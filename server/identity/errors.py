"""Why a connection is refused or closed, in the words the client is told (contract §4, §5)."""

from __future__ import annotations

from typing import Literal

FailureKind = Literal["bad_request", "unauthorized", "forbidden", "unavailable"]
CLOSE_CODES: dict[str, int] = {
    "bad_request": 4400,
    "unauthorized": 4401,
    "forbidden": 4403,
    "unavailable": 1013,  # the session service did not answer: try again later
}


class AuthError(Exception):
    """The connection is refused; ``kind`` is what the client is told, ``message`` why."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind
        self.message = message

    @property
    def close_code(self) -> int:
        return CLOSE_CODES[self.kind]
