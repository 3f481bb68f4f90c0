"""One error type for everything a client can get wrong, and where it maps on each protocol.

Both front ends (REST and gRPC) share the decoding and validation code, so the decision "this is the
client's fault, and which kind" is made once, as an :class:`InferenceError` carrying a
:class:`ErrorKind`.  Each front end then translates the kind with its own table: a bad request never
reaches the generic 500 path, which is kept for genuine server faults.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"
    EXHAUSTED = "exhausted"
    TIMEOUT = "timeout"


HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.BAD_REQUEST: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.EXHAUSTED: 503,
    ErrorKind.TIMEOUT: 408,
}


class InferenceError(Exception):
    """A request the server refuses, with a message that names the bad value and the fix."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.kind]


def bad_request(message: str) -> InferenceError:
    return InferenceError(ErrorKind.BAD_REQUEST, message)


def not_found(message: str) -> InferenceError:
    return InferenceError(ErrorKind.NOT_FOUND, message)
