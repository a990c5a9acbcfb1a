"""Run a real ``elevator-server`` in a child process: for tests, benchmarks and the CLI's demos.

>>> with ServerProcess(data_dir) as server:
...     client = Elevator(endpoint=server.endpoint)

The server is started with ``--port 0`` (the OS picks a free loopback port) and
``--ready-file``; the endpoint is read from that file once the server answers.
:meth:`kill` sends SIGKILL, :meth:`restart` starts it again on the same port.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, List, Optional, Sequence

import zmq

from . import protocol

__all__ = ["ServerProcess", "ping"]


def ping(endpoint: str, timeout: float = 1.0, context: Optional[zmq.Context[Any]] = None,
         security: Optional[Callable[[zmq.Socket[Any]], None]] = None) -> bool:
    """True when a server at ``endpoint`` answers PING within ``timeout`` seconds.

    ``security`` configures the socket first (a ``CurveKeys`` for a CURVE server).
    """
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        if security is not None:
            security(sock)
        sock.connect(endpoint)
        sock.send(protocol.encode_request(protocol.PING, []))
        if not sock.poll(int(timeout * 1000)):
            return False
        reply = protocol.decode_reply(sock.recv_multipart())
        return reply.status == protocol.Status.SUCCESS
    finally:
        sock.close(0)


class ServerProcess:
    """A real elevator-server child process on a free loopback port.

    ``data_dir``: where the server keeps its databases (a temporary directory
    that is removed on :meth:`stop` when None). ``args``: extra command-line flags.
    ``security``: client socket options (a ``CurveKeys``) for the readiness PING of a
    server started with ``--curve-secret-key``.
    """

    def __init__(self, data_dir: Optional[str] = None, *, args: Sequence[str] = (),
                 port: int = 0, start_timeout: float = 20.0, log_path: Optional[str] = None,
                 python: str = sys.executable,
                 security: Optional[Callable[[zmq.Socket[Any]], None]] = None) -> None:
        self.security = security
        self._tmp: Optional[tempfile.TemporaryDirectory[str]] = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="elevator-")
            data_dir = self._tmp.name
        self.data_dir = str(data_dir)
        self.args = list(args)
        self.port = port
        self.start_timeout = start_timeout
        self.python = python
        self.log_path = log_path or os.path.join(self.data_dir, "server.log")
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.endpoint: Optional[str] = None

    def command(self) -> List[str]:
        ready = os.path.join(self.data_dir, ".ready")
        return [self.python, "-m", "pyelevator_pool.server", "--port", str(self.port),
                "--data-dir", self.data_dir, "--ready-file", ready, *self.args]

    def start(self) -> "ServerProcess":
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("server already running")
        ready = os.path.join(self.data_dir, ".ready")
        if os.path.exists(ready):
            os.unlink(ready)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"elevator-server exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            if os.path.exists(ready):
                with open(ready) as f:
                    endpoint = f.read().strip()
                if endpoint and ping(endpoint, timeout=1.0, security=self.security):
                    self.endpoint = endpoint
                    if endpoint.startswith("tcp://"):
                        self.port = int(endpoint.rsplit(":", 1)[1])
                    return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"elevator-server did not become ready in {self.start_timeout}s:\n"
                           + self.log_tail())

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no chance to flush or close anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait for the graceful exit; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def restart(self, *, kill: bool = True) -> "ServerProcess":
        """Stop (SIGKILL by default) and start again on the same port and data dir."""
        if kill:
            self.kill()
        else:
            self.terminate()
        return self.start()

    def stop(self) -> None:
        self.terminate()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
