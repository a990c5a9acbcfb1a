"""Who the clients are: each connection's address, learned as its requests are received.

The ROUTER's routing id is opaque; ZeroMQ gives the peer's IP address as the
``Peer-Address`` metadata of a received frame (TCP only). :meth:`PeerBook.recv` receives a
request with its first frame uncopied to read that once per connection (no slower than
``recv_multipart``), so a slow-request line can name the client. Connection opened/closed
lines (DEBUG) come from the socket monitor's ACCEPTED/DISCONNECTED events, by descriptor.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Any, Dict, List

import zmq

__all__ = ["PeerBook"]

log = logging.getLogger("elevator.server")

#: addresses kept; past this the book starts over (re-learned on each client's next request)
_MAX_PEERS = 65536


class PeerBook:
    """Peer addresses by routing id (for log lines), and connection events (DEBUG lines)."""

    def __init__(self, max_peers: int = _MAX_PEERS) -> None:
        if isinstance(max_peers, bool) or not isinstance(max_peers, int) or max_peers < 1:
            raise ValueError(f"max_peers must be a positive integer, got {max_peers!r}")
        self._max = max_peers
        self._addresses: Dict[bytes, str] = {}
        self._by_fd: Dict[int, str] = {}
        #: connections accepted since start, and those of them still open (monitor events)
        self.accepted = 0
        self.open = 0

    def recv(self, front: zmq.Socket, flags: int = 0) -> List[bytes]:
        """One message of the ROUTER ``front``, as recv_multipart gives it (raises zmq.Again
        as it does); the sender's address is noted when it is new."""
        first = front.recv(flags, copy=False)
        ident = first.bytes
        frames = [ident, front.recv()]
        while front.getsockopt(zmq.RCVMORE):
            frames.append(front.recv())
        if ident not in self._addresses:
            self.learn(ident, first)
        return frames

    def learn(self, ident: bytes, frame: Any) -> None:
        """Note the address of the sender of ``frame`` (received with copy=False)."""
        if ident in self._addresses:
            return
        try:
            address = frame.get("Peer-Address")
        except (zmq.ZMQError, AttributeError, KeyError):  # not TCP: no address
            address = ""
        if len(self._addresses) >= self._max:
            self._addresses.clear()
        self._addresses[ident] = address if isinstance(address, str) else ""

    def describe(self, ident: bytes) -> str:
        """``peer=ADDRESS conn=ROUTINGID`` for a log line (``peer=?`` when unknown)."""
        return f"peer={self._addresses.get(ident) or '?'} conn={ident.hex()}"

    def forget(self, ident: bytes) -> None:
        self._addresses.pop(ident, None)

    # ------------------------------------------------------------ connections

    def opened(self, fd: int) -> None:
        """A connection accepted on descriptor ``fd`` (monitor EVENT_ACCEPTED)."""
        self.accepted += 1
        self.open += 1
        if not log.isEnabledFor(logging.DEBUG):  # counted for metrics only: no name needed
            return
        address = _peer_name(fd)
        if len(self._by_fd) >= self._max:
            self._by_fd.clear()
        self._by_fd[fd] = address
        log.debug("connection opened: peer=%s fd=%d", address, fd)

    def closed(self, fd: int) -> None:
        """A connection ended (monitor EVENT_DISCONNECTED): its descriptor is closed."""
        self.open = max(0, self.open - 1)  # never below 0, even if an event was lost
        if log.isEnabledFor(logging.DEBUG):
            log.debug("connection closed: peer=%s fd=%d", self._by_fd.pop(fd, "?"), fd)


def _peer_name(fd: int) -> str:
    """``ip:port`` of the TCP socket ``fd``, "local" for a unix socket, "?" when unreadable
    (the descriptor may already be closed: the monitor is read every 0.1 s)."""
    if fd < 0:
        return "?"
    try:
        sock = socket.socket(fileno=os.dup(fd))  # a duplicate: its family is read from it
    except OSError:
        return "?"
    try:
        name = sock.getpeername()
    except OSError:
        return "?"
    finally:
        sock.close()  # closes only the duplicate
    if isinstance(name, tuple) and len(name) >= 2:
        host = name[0]
        return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"
    return "local"
