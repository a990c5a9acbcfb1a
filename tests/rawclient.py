"""A tiny raw DEALER client for the server's tests: protocol frames in, frames out, nothing more."""
from __future__ import annotations

import gc
import json
import os
import select
import signal
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import zmq

from pyelevator_pool import protocol

TIMEOUT = 5.0  # seconds; every receive in the tests is bounded


class RawClient:
    """One DEALER socket (LINGER=0); every receive has a timeout."""

    def __init__(self, endpoint: str, timeout: float = TIMEOUT) -> None:
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)
        self.timeout = timeout

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def send_frames(self, frames: Sequence[bytes]) -> None:
        self.sock.send_multipart(list(frames))

    def recv_frames(self, timeout: Optional[float] = None) -> List[bytes]:
        """The next reply's frames; TimeoutError when none comes in time."""
        t = self.timeout if timeout is None else timeout
        if not self.sock.poll(int(t * 1000)):
            raise TimeoutError(f"no reply within {t}s")
        return self.sock.recv_multipart()

    def recv(self, timeout: Optional[float] = None) -> protocol.Reply:
        frames = self.recv_frames(timeout)
        enabled = gc.isenabled()
        gc.disable()  # decoding big replies allocates many objects at once
        try:
            return protocol.decode_reply(frames)
        finally:
            if enabled:
                gc.enable()

    def raw(self, frame: bytes, timeout: Optional[float] = None) -> protocol.Reply:
        """Send one arbitrary frame, return the decoded reply."""
        self.sock.send(frame)
        return self.recv(timeout)

    def call(self, cmd: str, args: Sequence = (), uid: Optional[str] = None, *,
             id: Any = None, compression: bool = False,
             timeout: Optional[float] = None) -> protocol.Reply:
        self.sock.send(protocol.encode_request(cmd, list(args), uid, id=id,
                                               compression=compression))
        return self.recv(timeout)

    def uid(self, name: str = "default") -> str:
        reply = self.call(protocol.DBCONNECT, [name])
        assert reply.status == 1, reply
        uid = reply.datas[0]
        return uid.decode() if isinstance(uid, bytes) else uid


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, step: float = 0.005) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(step)


def run_forked(child: Callable[[], Dict[str, Any]], timeout: float = 20.0) -> Tuple[Dict[str, Any], int]:
    """Run ``child`` in a forked process; return (the dict it returned, its exit code).

    The child reports through a pipe as JSON (``{"error": repr(exc)}`` when it raised)
    and never returns into pytest. A child that is not done within ``timeout`` is
    SIGKILLed and AssertionError raised with what it had reported.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            os.write(write_end, json.dumps(child()).encode())
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(write_end, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    data = b""
    deadline = time.monotonic() + timeout
    done, status = 0, 0
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(read_end, 65536)
            if not chunk:
                break  # the child exited
            data += chunk
    finally:
        os.close(read_end)
        while True:  # the pipe closes an instant before the child can be reaped
            done, status = os.waitpid(pid, os.WNOHANG)
            if done or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        if not done:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the forked child hung; it reported {data!r}")
    return json.loads(data or b"{}"), os.waitstatus_to_exitcode(status)
