"""Bytes to str for ``decode_responses``: UTF-8 with a chosen error handler, and a
decoding failure raised as an ElevatorError that is still a UnicodeDecodeError."""
from __future__ import annotations

from typing import Any

from .errors import ElevatorDecodeError

#: the handlers redis-py's ``encoding_errors`` accepts that make sense for reading
ENCODING_ERRORS = ("strict", "replace", "surrogateescape", "backslashreplace", "ignore")


def check_errors(value: Any) -> str:
    """An ``encoding_errors`` handler name, one of ENCODING_ERRORS."""
    if not isinstance(value, str):
        raise TypeError(f"encoding_errors must be a str, not {type(value).__name__}")
    if value not in ENCODING_ERRORS:
        raise ValueError(f"encoding_errors must be one of {', '.join(ENCODING_ERRORS)}, "
                         f"not {value!r}")
    return value


def decode(value: bytes, errors: str = "strict") -> str:
    """``value`` as UTF-8 text; a strict failure is an ElevatorDecodeError."""
    try:
        return value.decode("utf-8", errors)
    except UnicodeDecodeError as exc:
        raise ElevatorDecodeError(exc.encoding, exc.object, exc.start, exc.end,
                                  exc.reason) from None
