"""An Elevator-compatible server: LevelDB (plyvel) behind a ZeroMQ ROUTER socket.

Run it with ``elevator-server`` or ``python -m pyelevator_pool.server`` (``--help``).
The wire protocol is described in ``docs/protocol.rst``; :class:`Server` and :class:`Config`
embed it in a program.
"""
from __future__ import annotations

from .core import Config, Server
from .store import DEFAULT_DB

__all__ = ["Config", "Server", "DEFAULT_DB"]
