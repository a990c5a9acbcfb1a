"""Checks of public arguments, one rule for all of them.

A value of the wrong type is a ``TypeError``, a value of the right type out of range (NaN
and infinity included) is a ``ValueError``; the message names the argument, what was
expected and what was given. ``bool`` is never taken for a number.
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional, Union

__all__ = ["number", "integer", "timeout", "boolean", "db_name", "to_bytes", "optional_bytes"]

Number = Union[int, float]
Key = Union[str, bytes]
Value = Union[str, bytes]


def number(name: str, value: Any, *, minimum: Number = 0, inclusive: bool = False) -> Number:
    """A finite int or float ``> minimum`` (``>=`` with ``inclusive``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    # written so that NaN fails too (every comparison with it is False)
    if not (value > minimum or (inclusive and value == minimum)) or math.isinf(value):
        raise ValueError(f"{name} must be {'>=' if inclusive else '>'} {minimum} "
                         f"(and finite), not {value!r}")
    return value


def integer(name: str, value: Any, *, minimum: int = 0, maximum: Optional[int] = None) -> int:
    """An int ``>= minimum`` (and ``<= maximum`` when given)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, not {value!r}")
    return value


def timeout(value: Any, name: str = "timeout") -> Optional[float]:
    """None (the default applies) or a finite number of seconds > 0."""
    if value is None:
        return None
    return float(number(name, value))


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value


def db_name(value: Any) -> str:
    """A database name: a non-empty str (the server checks the rest)."""
    if not isinstance(value, str):
        raise TypeError(f"database name must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError("database name must not be empty")
    return value


def looks_like_endpoint(name: str) -> bool:
    """Whether a database name is really an endpoint (``host:port``, ``tcp://...``)."""
    return "://" in name or bool(re.fullmatch(r"[\w.\-]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5}",
                                              name))


def to_bytes(value: Any, what: str = "key") -> bytes:
    """A key or value as bytes: str is UTF-8 encoded; anything else is a TypeError."""
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")


def optional_bytes(value: Any, what: str) -> Optional[bytes]:
    return None if value is None else to_bytes(value, what)
