"""Elevator URLs, parsed to constructor options: pure, no I/O.

``elevator://host:4141/mydb?timeout=5&max_size=16`` (TCP; the path is the database)
and ``elevator+ipc:///run/elevator.sock?db=mydb`` (IPC; the database is the ``db``
parameter). Every query parameter maps to one :class:`ElevatorPool` or
:class:`Elevator` option; an unknown one, or a value of the wrong type, is a
ValueError naming it.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import parse_qsl, unquote, urlsplit

SCHEMES = ("elevator", "elevator+tcp", "elevator+ipc")


def _number(text: str) -> float:
    return float(text)


def _optional_number(text: str) -> Optional[float]:
    return None if text.lower() in ("none", "") else float(text)


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false, 1/0, yes/no, on/off)")


#: pool options a URL may set, with the parser of each value
POOL_OPTIONS: Dict[str, Callable[[str], Any]] = {
    "max_size": int, "timeout": _number, "checkout_timeout": _number,
    "health_check_interval": _optional_number, "heartbeat_interval": _number,
    "connect_timeout": _number,
}
#: client options a URL may set (``db`` is the database name)
CLIENT_OPTIONS: Dict[str, Callable[[str], Any]] = {
    "db": str, "decode_responses": _boolean, "compression": _boolean,
    "encoding_errors": str, "open": _boolean,
}


def parse(url: str) -> Tuple[str, Optional[str], Dict[str, Any], Dict[str, Any]]:
    """``url`` as ``(endpoint, db_name, pool_options, client_options)``; ``endpoint``
    is a ZeroMQ URL, ``db_name`` None when the URL names no database."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{url!r}: the scheme must be one of {', '.join(SCHEMES)}, "
                         f"not {parts.scheme!r}")
    pool: Dict[str, Any] = {}
    client: Dict[str, Any] = {}
    for name, text in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        table = pool if name in POOL_OPTIONS else client if name in CLIENT_OPTIONS else None
        if table is None:
            known = ", ".join(sorted([*POOL_OPTIONS, *CLIENT_OPTIONS]))
            raise ValueError(f"{url!r}: unknown parameter {name!r} (known: {known})")
        if name in table:
            raise ValueError(f"{url!r}: parameter {name!r} given twice")
        convert = POOL_OPTIONS.get(name) or CLIENT_OPTIONS[name]
        try:
            table[name] = convert(text)
        except ValueError as exc:
            raise ValueError(f"{url!r}: parameter {name!r}: {text!r} is not a valid "
                             f"{getattr(convert, '__name__', 'value').strip('_')} ({exc})") from None
    db = client.pop("db", None)
    if parts.scheme == "elevator+ipc":
        if parts.netloc:
            raise ValueError(f"{url!r}: an IPC URL has no host; write elevator+ipc:///path")
        if not parts.path:
            raise ValueError(f"{url!r}: an IPC URL needs a socket path")
        return f"ipc://{unquote(parts.path)}", db, pool, client
    if not parts.hostname:
        raise ValueError(f"{url!r}: a TCP URL needs a host")
    try:
        port = parts.port or 4141
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number from 0 to 65535") from None
    path = unquote(parts.path.lstrip("/"))
    if path and db is not None:
        raise ValueError(f"{url!r}: the database is named twice (path and db=)")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"tcp://{host}:{port}", (path or db), pool, client


#: the environment variable that configures ``Elevator()`` given no endpoint, and the CLI
ENV_VAR = "ELEVATOR_URL"


def from_environment(environ: Optional[Dict[str, str]] = None
                     ) -> Optional[Tuple[str, Optional[str], Dict[str, Any]]]:
    """``(endpoint, db_name, pool_options)`` from ``$ELEVATOR_URL``, None when unset.
    Client options (``decode_responses``, ``open``...) change what calls return or
    when they fail, so a program states them in code: in the variable they are a
    ValueError."""
    import os
    url = (os.environ if environ is None else environ).get(ENV_VAR)
    if not url:
        return None
    try:
        endpoint, db, pool, client = parse(url)
    except ValueError as exc:
        raise ValueError(f"${ENV_VAR}: {exc}") from None
    if client:
        raise ValueError(f"${ENV_VAR}: {', '.join(sorted(client))}: client options change "
                         "what calls return or when they fail: give them to Elevator() in "
                         "code, or use "
                         f"Elevator.from_url(os.environ[{ENV_VAR!r}])")
    return endpoint, db, pool
