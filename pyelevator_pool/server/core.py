"""The server loop: one ROUTER socket, light commands inline, heavy ones on worker threads.

Concurrency model (chosen by measuring, see the server README section / benchmarks):
the main thread owns the ROUTER socket and answers cheap requests (GET, PUT,
small MGET/BATCH, admin) inline, with no hand-off at all. Requests that may take
long (RANGE, big SLICE/MGET/BATCH frames, DBREPAIR...) go to a small pool of
worker threads (``workers``; 0 = everything inline), which send their replies
back over an inproc PUSH socket that the main loop forwards. plyvel releases the
GIL inside LevelDB, so a big RANGE no longer holds up a GET behind it. Replies to
one DEALER may then come out of order, as with the original server's workers;
clients that need order use ``meta.id``.
"""
from __future__ import annotations

import gc
import logging
import os
import queue
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, List, Optional

import zmq

from .. import protocol
from ..protocol import ErrorCode, ProtocolError, encode_error_reply
from ..security import load_key_pair
from .handlers import (DEFAULT_MAX_ITEMS, DEFAULT_MAX_KEYS, DEFAULT_MAX_REPLY_SIZE,
                       Dispatcher)
from .store import Store

__all__ = ["Config", "Server"]

log = logging.getLogger("elevator.server")

_RESULTS = "inproc://elevator-results"
_MORE = b"more"  # the worker's mark on a streamed page that is not the last (never sent out)
_TICK = 0.1            # seconds between checks of the stop flag and idle databases
_BURST = 256           # requests read per wake-up before looking at worker replies
#: heavy requests handed to the workers and not yet answered, per worker, beyond which
#: the loop stops reading new requests: ZeroMQ's queues and TCP then push back on the
#: clients, instead of the server's memory growing with a flood of 64 MiB batches.
_QUEUED_PER_WORKER = 8
_BIG_FRAME = 16 * 1024  # request frames above this are decoded on a worker
_BIG_COUNT = 256       # MGET/BATCH/SLICE above this many items go to a worker
_DRAIN_TIME = 10.0     # seconds a graceful stop spends answering what is in flight


@dataclass
class Config:
    data_dir: str = "elevator-data"
    bind: str = "127.0.0.1"
    port: int = 4141
    transport: str = "tcp"
    socket_path: Optional[str] = None
    allow_paths: List[str] = field(default_factory=list)
    max_message_size: int = protocol.DEFAULT_MAX_MESSAGE_SIZE
    sync: bool = False
    workers: int = 2
    unmount_after: float = 600.0
    ready_file: Optional[str] = None
    max_keys: int = DEFAULT_MAX_KEYS
    max_items: int = DEFAULT_MAX_ITEMS
    max_reply_size: int = DEFAULT_MAX_REPLY_SIZE
    #: a ZeroMQ secret certificate file (elevator-server keygen): turns CURVE on
    curve_secret_key: Optional[str] = None
    #: a directory of authorized clients' public certificates (NAME.key), or "*": any
    #: client that knows the server's public key (encryption without authentication)
    curve_authorized_keys: Optional[str] = None

    def endpoint(self) -> str:
        if self.transport == "ipc":
            path = self.socket_path or os.path.join(self.data_dir, "elevator.sock")
            return f"ipc://{os.path.abspath(path)}"
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"tcp://{host}:{self.port or '*'}"


class _GcPause:
    """Pause the cyclic GC while a big request is decoded, run or encoded.

    Building 100k-item lists (a BATCH's ops, a RANGE's pairs) triggers collection after
    collection that find nothing: unpacking 100k pairs takes ~3x as long with the GC on.
    The GC is process-wide and several threads may pause it at once: it comes back on when
    the last of them is done.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                gc.disable()
            self._depth += 1

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                gc.enable()


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".ready-", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Server:
    """An Elevator-compatible server. :meth:`start` binds and loads, :meth:`serve` runs until
    :meth:`stop` (or SIGTERM/SIGINT when :meth:`install_signal_handlers` was called)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store(config.data_dir, allowed_roots=config.allow_paths, sync=config.sync)
        self.dispatcher = Dispatcher(self.store, max_message_size=config.max_message_size,
                                     sync=config.sync, max_keys=config.max_keys,
                                     max_items=config.max_items,
                                     max_reply_size=config.max_reply_size)
        if (config.curve_secret_key is None) != (config.curve_authorized_keys is None):
            raise ValueError("CURVE needs both curve_secret_key and curve_authorized_keys")
        self._auth: Any = None
        self._reload_keys = threading.Event()
        self.endpoint: Optional[str] = None
        self._stop = threading.Event()
        self._ctx: Optional[zmq.Context] = None
        self._front: Optional[zmq.Socket] = None
        self._results: Optional[zmq.Socket] = None
        self._tasks: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._threads: List[threading.Thread] = []
        self._in_flight = 0
        self._gc_paused = _GcPause()

    # --------------------------------------------------------------- lifecycle

    def start(self) -> str:
        """Load the databases, bind the socket, start workers; returns the bound endpoint."""
        self.store.load()
        ctx = self._ctx = zmq.Context()
        front = self._front = ctx.socket(zmq.ROUTER)
        if self.config.curve_secret_key is not None:
            try:
                self._enable_curve(ctx, front, self.config.curve_secret_key)
            except BaseException:
                front.close(0)
                if self._auth is not None:
                    self._auth.stop()
                ctx.term()
                self.store.close_all()
                raise
        limit = self.config.max_message_size
        # A frame far beyond the limit is refused by libzmq before it is buffered (the peer is
        # disconnected); one a little over it reaches decode_request, which answers REQUEST.
        front.setsockopt(zmq.MAXMSGSIZE, limit + min(limit, 1024 * 1024))
        front.setsockopt(zmq.LINGER, 2000)
        if self.config.transport == "tcp" and ":" in self.config.bind:
            front.setsockopt(zmq.IPV6, 1)
        try:
            front.bind(self.config.endpoint())
        except zmq.ZMQError as exc:
            front.close(0)
            ctx.term()
            self.store.close_all()
            raise OSError(f"cannot bind {self.config.endpoint()}: {exc}") from None
        self.endpoint = front.getsockopt_string(zmq.LAST_ENDPOINT)
        if self.config.workers > 0:
            results = self._results = ctx.socket(zmq.PULL)
            results.bind(_RESULTS)
            for i in range(self.config.workers):
                t = threading.Thread(target=self._worker, name=f"elevator-worker-{i}", daemon=True)
                t.start()
                self._threads.append(t)
        # Long-lived startup objects leave the GC's view; big decodes trigger fewer collections.
        gc.collect()
        gc.freeze()
        log.info("elevator-server listening on %s; data in %s (%d databases); workers=%d; "
                 "unmount idle after %ss%s", self.endpoint, self.store.data_dir,
                 len(self.store.list()), self.config.workers, self.config.unmount_after or "never",
                 "; sync writes" if self.config.sync else "")
        if self.config.transport == "tcp" and self.config.bind not in ("127.0.0.1", "::1",
                                                                       "localhost") \
                and self.config.curve_secret_key is None:
            log.warning("listening beyond loopback on %s without CURVE: anyone who reaches "
                        "this port can read, write and drop databases (see --curve-secret-key)",
                        self.endpoint)
        if self.config.ready_file:
            _write_atomically(self.config.ready_file, self.endpoint + "\n")
        return self.endpoint

    def _enable_curve(self, ctx: zmq.Context, front: zmq.Socket, secret_key_file: str) -> None:
        """CURVE on the ROUTER socket, and a ZAP handler that checks client keys."""
        from zmq.auth.thread import ThreadAuthenticator

        public, secret = load_key_pair(secret_key_file)
        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("elevator.auth"))
        self._auth.start()
        self._configure_keys()
        front.curve_secretkey = secret
        front.curve_publickey = public
        front.curve_server = True
        log.info("CURVE on: server public key %s", public.decode())

    def _configure_keys(self) -> None:
        """(Re)load the authorized client keys (at start and on SIGHUP)."""
        from zmq.auth import CURVE_ALLOW_ANY, load_certificates

        location = self.config.curve_authorized_keys
        assert location is not None and self._auth is not None
        if location == CURVE_ALLOW_ANY:
            log.warning("CURVE with --curve-authorized-keys '*': traffic is encrypted, but "
                        "any client that knows the server's public key gets in")
        else:
            count = len(load_certificates(location))  # raises OSError for a missing dir
            log.info("CURVE: %d authorized client keys in %s", count, location)
            if not count:
                log.warning("no client key (*.key) in %s: every client will be refused",
                            location)
        self._auth.configure_curve(domain="*", location=location)

    def stop(self) -> None:
        """Ask the loop to stop: it answers what is in flight, then closes everything."""
        self._stop.set()

    def reload_keys(self) -> None:
        """Ask the loop to reload the authorized client keys (what SIGHUP does)."""
        self._reload_keys.set()

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, frame: Any) -> None:
            log.info("received %s: stopping", signal.Signals(signum).name)
            self.stop()
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        if self.config.curve_secret_key is not None:
            def on_hup(signum: int, frame: Any) -> None:
                self.reload_keys()
            signal.signal(signal.SIGHUP, on_hup)

    # ---------------------------------------------------------------- the loop

    def serve(self) -> None:
        front, results = self._front, self._results
        assert front is not None
        poller = zmq.Poller()
        poller.register(front, zmq.POLLIN)
        # While the workers are saturated, only their replies are waited for.
        saturated_poller = zmq.Poller()
        if results is not None:
            poller.register(results, zmq.POLLIN)
            saturated_poller.register(results, zmq.POLLIN)
        unmount_after = self.config.unmount_after
        tick = max(0.05, min(1.0, unmount_after / 2)) if unmount_after > 0 else None
        next_tick = time.monotonic() + tick if tick else None
        try:
            while not self._stop.is_set():
                saturated = self._is_saturated()
                events = dict((saturated_poller if saturated else poller)
                              .poll(int(_TICK * 1000)))
                if front in events:
                    self._read_requests(front, _BURST)
                if results is not None and results in events:
                    self._forward_replies(front, results, _BURST)
                if self._reload_keys.is_set():
                    self._reload_keys.clear()
                    try:
                        self._configure_keys()
                    except (OSError, ValueError) as exc:  # ValueError: a *.key without a key
                        log.error("reloading the authorized keys: %s (keeping the old ones)", exc)
                if tick is not None and next_tick is not None and time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + tick
                    for name in self.store.unmount_idle(unmount_after):
                        log.debug("idle database %s unmounted", name)
            self._drain(front, results)
        finally:
            self._shutdown()

    def _read_requests(self, front: zmq.Socket, budget: int) -> int:
        handled = 0
        recv = front.recv_multipart
        send = front.send_multipart
        workers = self.config.workers
        dispatcher = self.dispatcher
        while handled < budget and not self._is_saturated():
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            handled += 1
            if len(frames) != 2:
                send([frames[0], *encode_error_reply(
                    ErrorCode.REQUEST, f"request has {len(frames) - 1} frames, expected 1")])
                continue
            ident, frame = frames
            big = len(frame) > _BIG_FRAME
            if big and workers:
                self._submit(ident, frame)  # even its decoding is heavy
                continue
            try:
                if big:
                    with self._gc_paused:
                        request = dispatcher.decode(frame)
                else:
                    request = dispatcher.decode(frame)
            except ProtocolError as exc:
                send([ident, *encode_error_reply(exc.code, str(exc), id=exc.id)])
                continue
            if big or self._is_heavy(request):
                if workers:
                    self._submit(ident, request)
                    continue
                with self._gc_paused:
                    reply = dispatcher.run(request)
            else:
                reply = dispatcher.run(request)
            send([ident, *reply], copy=False)
        return handled

    @staticmethod
    def _is_heavy(request: protocol.Request) -> bool:
        cmd, args = request.cmd, request.args
        if cmd == protocol.RANGE or cmd in _SLOW_ADMIN:
            return True
        if cmd in _BULK and args:
            first = args[1] if cmd == protocol.SLICE and len(args) > 1 else args[0]
            if isinstance(first, int):
                return first > _BIG_COUNT
            return isinstance(first, list) and len(first) > _BIG_COUNT
        return False

    def _is_saturated(self) -> bool:
        workers = self.config.workers
        return bool(workers) and self._in_flight >= workers * _QUEUED_PER_WORKER

    def _submit(self, ident: bytes, payload: Any) -> None:
        self._in_flight += 1
        self._tasks.put((ident, payload))

    def _forward_replies(self, front: zmq.Socket, results: zmq.Socket, budget: int) -> int:
        n = 0
        while n < budget:
            try:
                frames = results.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            n += 1
            if len(frames) == 4:  # a page of a streamed reply that more pages follow
                frames.pop()
            else:
                self._in_flight -= 1
            front.send_multipart(frames, copy=False)
        return n

    def _worker(self) -> None:
        assert self._ctx is not None
        out = self._ctx.socket(zmq.PUSH)
        out.setsockopt(zmq.LINGER, -1)
        out.connect(_RESULTS)
        dispatcher = self.dispatcher
        try:
            while True:
                task = self._tasks.get()
                if task is None:
                    break
                ident, payload = task
                try:
                    with self._gc_paused:
                        # One reply, or the pages of a streamed RANGE/SLICE, each sent as
                        # soon as it is packed; all but the last carry _MORE for the
                        # forwarder, which counts a request answered at its last reply.
                        for reply, last in dispatcher.replies(payload):
                            out.send_multipart([ident, *reply] if last
                                               else [ident, *reply, _MORE], copy=False)
                except BaseException as exc:  # replies() never raises, bar a bug or MemoryError
                    log.exception("worker failed")
                    out.send_multipart([ident, *encode_error_reply(
                        ErrorCode.RUNTIME, f"internal error: {exc}", id=self._request_id(payload))],
                        copy=False)
        finally:
            out.close()

    def _request_id(self, payload: Any) -> Any:
        """The ``meta.id`` of a task (a Request or a request frame), for an error reply;
        None when it has none or cannot be decoded."""
        if isinstance(payload, protocol.Request):
            return payload.id
        try:
            return self.dispatcher.decode(payload).id
        except Exception:
            return None

    # ------------------------------------------------------------------ stop

    def _drain(self, front: zmq.Socket, results: Optional[zmq.Socket]) -> None:
        """Stop accepting, answer what was already received and what workers are doing.

        The listener is not unbound first: in libzmq that also closes the connections it
        accepted, and the replies of requests still in the workers would be lost. The
        requests already queued are read (while the workers are saturated, reading waits
        for their replies), then no more are, and the workers' replies are forwarded;
        closing the socket afterwards ends every connection.
        """
        deadline = time.monotonic() + _DRAIN_TIME
        reading = True
        while time.monotonic() < deadline:
            read = 0
            if reading and not self._is_saturated():
                read = self._read_requests(front, _BURST)
                # Nothing to read while the workers could take more: every request
                # received before the stop has been read.
                reading = read > 0
            forwarded = (self._forward_replies(front, results, _BURST)
                         if results is not None else 0)
            if not read and not forwarded:
                if not reading and (results is None or self._in_flight == 0):
                    break
                if results is not None:
                    results.poll(50)
        if self._in_flight:
            log.warning("stopping with %d requests unanswered", self._in_flight)

    def _shutdown(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)
        for t in self._threads:
            t.join(_DRAIN_TIME)
        if self._results is not None:
            self._results.close(0)
        if self._front is not None:
            self._front.close()  # LINGER lets the last replies go out
        self.store.close_all()
        if self._auth is not None:
            self._auth.stop()
        if self._ctx is not None:
            self._ctx.term()
        if self.config.transport == "ipc" and self.endpoint:
            try:
                os.unlink(self.endpoint[len("ipc://"):])
            except OSError:
                pass
        log.info("elevator-server stopped")


_BULK = frozenset({protocol.MGET, protocol.BATCH, protocol.SLICE})
_SLOW_ADMIN = frozenset({protocol.DBREPAIR, protocol.DBCREATE, protocol.DBDROP,
                         protocol.DBMOUNT, protocol.DBUMOUNT, protocol.DBCONNECT})
