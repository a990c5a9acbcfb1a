"""ServerFacts: what a client caches about its server (database uids, LIMITS), in one place.

One object per pool, shared by every client on it, with its own lock. A fact is fetched
once, by whoever needs it first, and forgotten when the server shows it changed (a uid it
no longer knows, an over-limit answer, a connection lost after a frame the limits allowed).
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Optional

from . import protocol
from .protocol import Reply

__all__ = ["ServerFacts", "parse_limits"]


def parse_limits(reply: Reply) -> Dict[str, int]:
    """A LIMITS reply as ``{name: int > 0}``; ``{}`` for a server without LIMITS."""
    datas = reply.datas if reply.status != protocol.Status.FAILURE else None
    if not isinstance(datas, dict):
        return {}
    return {(k.decode("utf-8", "replace") if isinstance(k, bytes) else k): v
            for k, v in datas.items()
            if isinstance(v, int) and not isinstance(v, bool) and v > 0}


class ServerFacts:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # never held across a request
        self._uids: Dict[str, str] = {}
        self._limits: Optional[Dict[str, int]] = None

    # ------------------------------------------------------------------ uids

    def uid(self, name: str, resolve: Callable[[str], str], *,
            stale: Optional[str] = None) -> str:
        """The uid of database ``name``, resolved with ``resolve(name)`` (a DBCONNECT) when
        unknown or when the cached one is ``stale`` (the server no longer knows it).
        Threads resolving at once each send their DBCONNECT (it is idempotent) rather
        than one slow DBCONNECT holding up every database's clients on the pool."""
        with self._lock:
            uid = self._uids.get(name)
        if uid is None or uid == stale:
            uid = resolve(name)
            with self._lock:
                self._uids[name] = uid
        return uid

    def known_uid(self, name: str) -> Optional[str]:
        with self._lock:
            return self._uids.get(name)

    def forget_uid(self, name: str) -> None:
        with self._lock:
            self._uids.pop(name, None)

    # ---------------------------------------------------------------- limits

    def limits(self, fetch: Callable[[], Reply]) -> Dict[str, int]:
        """The server's limits (``max_keys``, ``max_items``, ``max_message_size``...),
        fetched with ``fetch()`` (a LIMITS request) the first time; ``{}`` for a server
        without LIMITS."""
        limits = self._limits
        if limits is None:
            limits = parse_limits(fetch())
            with self._lock:
                self._limits = limits
        return limits

    def cached_limits(self) -> Optional[Dict[str, int]]:
        """The limits if fetched, else None (nothing is sent)."""
        return self._limits

    def set_limits(self, limits: Dict[str, Any]) -> None:
        with self._lock:
            self._limits = dict(limits)

    def forget_limits(self) -> None:
        """The server may have restarted with other limits: fetch them again when needed."""
        with self._lock:
            self._limits = None
