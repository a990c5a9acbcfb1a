"""A loopback relay for the tests: clients connect to its ROUTER, it talks to a real server
with one DEALER per client, and it can drop, duplicate or swap a page of a streamed reply.

>>> with Relay(server.endpoint) as relay:
...     relay.set_fault("drop", 2)      # the 3rd page (index 2) of every stream is lost
...     Elevator(endpoint=relay.endpoint).Range()

A reply is a stream page when its header carries ``more`` or ``seq``; pages are counted
per stream (client, reply id) from 0. Everything else passes untouched, both ways.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import msgpack
import zmq

from pyelevator_pool import protocol

FAULTS = ("drop", "dup", "swap")
_HOLD = 2.0  # seconds a swapped page waits for its successor before it is let through


class Relay:
    """A ROUTER/DEALER proxy on its own thread; every socket lives on that thread."""

    def __init__(self, server_endpoint: str) -> None:
        self.server_endpoint = server_endpoint
        self.endpoint: Optional[str] = None
        self._lock = threading.Lock()
        self._fault: Optional[str] = None
        self._nth = 0
        #: faults applied so far, and stream pages seen
        self.faults_done = 0
        self.pages_seen = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)

    def start(self) -> "Relay":
        self._thread.start()
        if not self._ready.wait(10) or self.endpoint is None:
            raise RuntimeError(f"the relay did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def __enter__(self) -> "Relay":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def set_fault(self, kind: Optional[str], nth: int = 0) -> None:
        """From now on, ``kind`` (drop, dup, swap with the next; None: pass everything)
        page ``nth`` (0-based) of every streamed reply. Raises ValueError for another kind."""
        if kind is not None and kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}")
        with self._lock:
            self._fault, self._nth = kind, nth

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        ctx: zmq.Context = zmq.Context.instance()
        front = ctx.socket(zmq.ROUTER)
        front.linger = 0
        backends: Dict[bytes, zmq.Socket] = {}
        owners: Dict[zmq.Socket, bytes] = {}
        counts: Dict[Tuple[bytes, Any], int] = {}
        held: Dict[Tuple[bytes, Any], Tuple[float, List[bytes]]] = {}
        poller = zmq.Poller()
        try:
            front.bind("tcp://127.0.0.1:*")
            self.endpoint = front.getsockopt_string(zmq.LAST_ENDPOINT)
            poller.register(front, zmq.POLLIN)
            self._ready.set()
            while not self._stop.is_set():
                for sock, _ in poller.poll(20):
                    if sock is front:
                        cid, *frames = front.recv_multipart()
                        back = backends.get(cid)
                        if back is None:
                            back = backends[cid] = ctx.socket(zmq.DEALER)
                            back.linger = 0
                            back.connect(self.server_endpoint)
                            owners[back] = cid
                            poller.register(back, zmq.POLLIN)
                        back.send_multipart(frames)
                    else:
                        cid = owners[sock]
                        self._relay_reply(front, cid, sock.recv_multipart(), counts, held)
                now = time.monotonic()
                for key, (since, frames) in list(held.items()):
                    if now - since > _HOLD:  # no successor came: not a swap after all
                        del held[key]
                        front.send_multipart([key[0], *frames])
        except BaseException as exc:  # reported by start() or seen as a dead relay
            self._error = exc
            self._ready.set()
        finally:
            front.close(0)
            for back in backends.values():
                back.close(0)

    def _relay_reply(self, front: zmq.Socket, cid: bytes, frames: List[bytes],
                     counts: Dict[Tuple[bytes, Any], int],
                     held: Dict[Tuple[bytes, Any], Tuple[float, List[bytes]]]) -> None:
        try:
            head = msgpack.unpackb(frames[0], raw=False)
        except Exception:
            head = None
        if not isinstance(head, dict) or not (protocol.MORE in head or protocol.SEQ in head):
            front.send_multipart([cid, *frames])
            return
        key = (cid, head.get("id"))
        index = counts.get(key, 0)
        counts[key] = index + 1
        if not head.get(protocol.MORE):
            counts.pop(key, None)  # the last page: the id may be used again
        self.pages_seen += 1
        with self._lock:
            fault, nth = self._fault, self._nth
        pending = held.pop(key, None)
        if fault is not None and index == nth:
            self.faults_done += 1
            if fault == "drop":
                return
            if fault == "dup":
                front.send_multipart([cid, *frames])
            elif fault == "swap":
                held[key] = (time.monotonic(), frames)
                return
        front.send_multipart([cid, *frames])
        if pending is not None:
            front.send_multipart([cid, *pending[1]])
