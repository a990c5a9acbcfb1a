"""The anchors the suite measures beside ``pyelevator_pool``, in the same run on the same data.

* :class:`EchoServer` — a raw ZeroMQ ROUTER in another process that sends every
  request straight back: the network floor of one Get (no msgpack, no LevelDB).
* :class:`RedisServer` — a real ``redis-server`` on a free loopback port in a
  temporary directory, no persistence (what a user would pick instead).
* :class:`LegacyClient` — the original py-elevator design rebuilt here in a few
  lines (our own code): ONE DEALER socket shared by all threads behind a lock, one
  request in flight, no request ids, no pool.
* :class:`FloorGetServer` — a minimal Python ROUTER that answers GETs from plyvel in
  its loop (no scheduling, no checks): the floor of a Python server's GET capacity,
  measured with :func:`pipelined_gets` like the real server.

Every receive is bounded by a timeout; every process started here is stopped by
the object that started it.
"""
from __future__ import annotations

import shutil
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, List, Optional, Sequence

import msgpack
import zmq

from pyelevator_pool import protocol

__all__ = ["EchoServer", "RedisServer", "LegacyClient", "FloorGetServer", "pipelined_gets",
           "free_port"]


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ raw echo

#: a ROUTER child process: prints its port, runs ANSWER for each request (``frames``:
#: identity and request), exits when its stdin closes. ``python -c``, not
#: multiprocessing, so that it never re-imports the caller's __main__.
_ROUTER_CODE = r"""
import sys, zmq
SETUP
ctx = zmq.Context()
sock = ctx.socket(zmq.ROUTER)
sock.linger = 0
port = sock.bind_to_random_port("tcp://127.0.0.1")
sys.stdout.write(f"{port}\n")
sys.stdout.flush()
poller = zmq.Poller()
poller.register(sock, zmq.POLLIN)
poller.register(sys.stdin.fileno(), zmq.POLLIN)
running = True
while running:
    for what, _ in poller.poll(1000):
        if what is sock:
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
ANSWER
        else:
            running = False  # stdin readable: closed by the parent
sock.close(0)
ctx.term()
"""


def _router_code(answer: str, setup: str = "") -> str:
    return _ROUTER_CODE.replace("SETUP", setup).replace("ANSWER", answer)


#: ROUTER in, the same frames out.
_ECHO_CODE = _router_code("                sock.send_multipart(frames, copy=False)")


class EchoServer:
    """A ZeroMQ ROUTER echo in a child process (``python -c``)."""

    def __init__(self, start_timeout: float = 20.0) -> None:
        self.start_timeout = start_timeout
        self.endpoint: Optional[str] = None
        self._proc: Optional[subprocess.Popen] = None

    def start(self) -> "EchoServer":
        self._proc = subprocess.Popen(self._command(), stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self._proc.stdout is not None
        ready = select.select([self._proc.stdout], [], [], self.start_timeout)[0]
        line = self._proc.stdout.readline().strip() if ready else b""
        if not line.isdigit():
            self.stop()
            raise RuntimeError(f"{type(self).__name__} process did not start "
                               f"(within {self.start_timeout}s)")
        self.endpoint = f"tcp://127.0.0.1:{int(line)}"
        return self

    def _command(self) -> List[str]:
        return [sys.executable, "-c", _ECHO_CODE]

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        try:
            proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()  # type: ignore[union-attr]

    def __enter__(self) -> "EchoServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class EchoClient:
    """One DEALER socket to an :class:`EchoServer`: send a frame, await it back."""

    def __init__(self, endpoint: str, context: zmq.Context, timeout: float = 10.0) -> None:
        self.sock = context.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)
        self.timeout_ms = int(timeout * 1000)

    def roundtrip(self, frame: bytes) -> bytes:
        sock = self.sock
        sock.send(frame)
        if not sock.poll(self.timeout_ms):
            raise TimeoutError("no echo within the timeout")
        return sock.recv()

    def close(self) -> None:
        self.sock.close(0)


# ------------------------------------------------------ minimal GET server

#: ROUTER over one plyvel database (argv[1]): each GET answered in the loop with the
#: reply frames this project's server sends.
_FLOOR_CODE = _router_code(setup="""
import msgpack, plyvel
db = plyvel.DB(sys.argv[1])
packb, unpackb, get = msgpack.packb, msgpack.unpackb, db.get
""", answer="""\
                req = unpackb(frames[1].bytes, raw=False)
                header = {"status": 1, "err_code": None, "err_msg": None,
                          "compression": False, "id": req["meta"].get("id")}
                sock.send_multipart([frames[0], packb(header),
                                     packb({"datas": [get(req["args"][0])]})], copy=False)""")


class FloorGetServer(EchoServer):
    """:data:`_FLOOR_CODE` in a child process, over the LevelDB at ``path`` (closed by
    the caller: LevelDB allows one process)."""

    def __init__(self, path: str, start_timeout: float = 20.0) -> None:
        super().__init__(start_timeout)
        self.path = path

    def _command(self) -> List[str]:
        return [sys.executable, "-c", _FLOOR_CODE, self.path]


def pipelined_gets(endpoint: str, frames: Sequence[bytes], context: zmq.Context, *,
                   window: int = 64, timeout: float = 30.0) -> int:
    """Send every GET frame of ``frames`` over one DEALER with up to ``window`` in flight
    (the frames are encoded beforehand: the client's cost stays small); return how many
    successful replies came back. Every wait is bounded by ``timeout``."""
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    timeout_ms = int(timeout * 1000)
    try:
        sent = done = good = 0
        total = len(frames)
        while done < total:
            while sent < total and sent - done < window:
                sock.send(frames[sent])
                sent += 1
            if not sock.poll(timeout_ms):
                raise TimeoutError(f"pipelined GETs: no reply within {timeout}s "
                                   f"({done} of {total} answered)")
            while True:
                try:
                    header, _content = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                done += 1
                if msgpack.unpackb(header).get("status") == 1:
                    good += 1
        return good
    finally:
        sock.close(0)


# --------------------------------------------------------------------- redis

class RedisServer:
    """A real ``redis-server`` on a free loopback port, in a temporary directory,
    without persistence. :meth:`available` tells whether one is installed."""

    def __init__(self, executable: Optional[str] = None, start_timeout: float = 20.0) -> None:
        self.executable = executable or shutil.which("redis-server")
        self.start_timeout = start_timeout
        self.port: Optional[int] = None
        self._proc: Optional[subprocess.Popen] = None
        self._tmp: Optional[tempfile.TemporaryDirectory] = None

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self) -> "RedisServer":
        if not self.executable:
            raise RuntimeError("redis-server is not installed (not on PATH)")
        import redis  # the 'bench' extra

        self._tmp = tempfile.TemporaryDirectory(prefix="bench-redis-")
        last_error: Optional[BaseException] = None
        for _attempt in range(3):  # a free port can be taken between the probe and the bind
            self.port = free_port()
            self._proc = subprocess.Popen(
                [self.executable, "--port", str(self.port), "--save", "", "--appendonly", "no",
                 "--bind", "127.0.0.1", "--dir", self._tmp.name],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline and self._proc.poll() is None:
                try:
                    client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1,
                                         socket_connect_timeout=1)
                    try:
                        if client.ping():
                            return self
                    finally:
                        client.close()
                except redis.exceptions.ConnectionError as exc:
                    last_error = exc
                    time.sleep(0.02)
            self._kill()
        self.stop()
        raise RuntimeError(f"redis-server did not start: {last_error}")

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None

    def stop(self) -> None:
        self._kill()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ------------------------------------------------------ the original design

class LegacyClient:
    """The original py-elevator design: one DEALER socket for every thread, a lock
    around each request, one request in flight, no ids, no GC care, no pool.

    Only what the suite measures: get, put, mget, range, slice, range_iter, batch.
    Raises TimeoutError when no reply comes within ``timeout`` (and replaces the
    socket, as the original had to).
    """

    def __init__(self, endpoint: str, db_name: str, *, timeout: float = 10.0,
                 context: Optional[zmq.Context] = None) -> None:
        self.endpoint = endpoint
        self.timeout_ms = int(timeout * 1000)
        self._ctx = context or zmq.Context.instance()
        self._lock = threading.Lock()
        self._sock = self._connect()
        self.uid = self._send("DBCONNECT", [db_name], None)[0]
        if isinstance(self.uid, bytes):
            self.uid = self.uid.decode()

    def _connect(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(self.endpoint)
        return sock

    def _send(self, cmd: str, args: Sequence, uid: Optional[str]) -> Any:
        frame = msgpack.packb({"meta": {}, "uid": uid, "cmd": cmd, "args": args},
                              use_bin_type=True)
        with self._lock:
            self._sock.send(frame)
            if not self._sock.poll(self.timeout_ms):
                self._sock.close(0)
                self._sock = self._connect()
                raise TimeoutError(f"{cmd}: no reply within {self.timeout_ms} ms")
            header, content = self._sock.recv_multipart()
        head = msgpack.unpackb(header, raw=False)
        if head["status"] == protocol.Status.FAILURE:
            raise RuntimeError(f"{cmd}: {head['err_msg']}")
        return msgpack.unpackb(content, raw=True)[b"datas"]

    def get(self, key: bytes) -> bytes:
        return self._send("GET", [key], self.uid)[0]

    def put(self, key: bytes, value: bytes) -> None:
        self._send("PUT", [key, value], self.uid)

    def mget(self, keys: List[bytes]) -> List[Optional[bytes]]:
        return self._send("MGET", [keys], self.uid)

    def range(self, start: Optional[bytes] = None, stop: Optional[bytes] = None) -> list:
        return self._send("RANGE", [start, stop, True, True, None], self.uid)

    def slice(self, start: Optional[bytes], count: int) -> list:
        return self._send("SLICE", [start, count, True, True], self.uid)

    def range_iter(self, start: Optional[bytes] = None, stop: Optional[bytes] = None) -> Any:
        # The original fetched the whole range in one request and iterated over it.
        return iter(self.range(start, stop))

    def batch(self, pairs: Sequence[Sequence[bytes]]) -> None:
        self._send("BATCH", [[[protocol.BATCH_PUT, k, v] for k, v in pairs]], self.uid)

    def close(self) -> None:
        with self._lock:
            self._sock.close(0)

