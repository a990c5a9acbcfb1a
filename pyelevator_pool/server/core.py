"""The server loop: one ROUTER socket, light commands inline, heavy ones on worker threads.

The main thread owns the ROUTER socket and answers cheap requests (GET, PUT, small
MGET/BATCH, most admin) itself, with no hand-off. Requests that may take long (RANGE,
big SLICE/MGET/BATCH frames, DBREPAIR...) go to the :class:`Scheduler`, which hands them
to ``workers`` threads one at a time, fairly between clients and in receipt order for
the writes to one database; the workers send their replies back over an inproc PUSH
socket that the loop forwards. The loop never stops reading: a client with too much
waiting is refused (scheduler.py), and a client that does not read its replies has them
held in a bounded backlog (outbox.py). plyvel releases the GIL inside LevelDB, so a big
RANGE does not hold up a GET behind it. Replies to one DEALER may come out of order;
clients that need order use ``meta.id``.
"""
from __future__ import annotations

import functools
import gc
import itertools
import logging
import os
import queue
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import zmq

from .. import protocol
from ..gcpause import gc_paused
from ..protocol import ErrorCode, ProtocolError, encode_error_reply
from ..security import load_key_pair
from .batches import DEFAULT_BATCH_IDLE
from .handlers import (DEFAULT_MAX_ITEMS, DEFAULT_MAX_KEYS, DEFAULT_MAX_REPLY_SIZE,
                       FAST_GET_MAX_FRAME, Dispatcher)
from .metrics import (DatabaseFigures, FiguresHandoff, LoopFigures, MetricsServer, ServerCollector,
                      disk_size)
from .outbox import Outbox, RateLimitedLog
from .peers import PeerBook
from .reqlog import RequestLog
from .scheduler import Scheduler, Task
from .stats import Stats, reply_error
from .store import CommandError, Store

__all__ = ["Config", "Server"]

log = logging.getLogger("elevator.server")

_RESULTS = "inproc://elevator-results"
_TICK = 0.1            # seconds between checks of the stop flag and idle databases
_BACKLOG_TICK = 0.01   # the same while some replies wait for a peer's queue to drain
_BURST = 256           # requests read per wake-up before looking at worker replies
_BIG_FRAME = 16 * 1024  # request frames above this are decoded on a worker
_DRAIN_TIME = 10.0     # seconds a graceful stop spends answering what is in flight
_DRAIN_QUIET = 0.25    # seconds without a new request after which a stop stops reading
_SCRAPE_WAIT = 5.0     # seconds a scrape waits for the loop's figures before the last ones


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
    #: a request taking this long (ms, receipt to reply) is logged; 0: never
    slow_log_ms: float = 100.0
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
    #: seconds a streamed WriteBatch may wait for its next chunk before it is dropped
    batch_idle: float = DEFAULT_BATCH_IDLE
    #: seconds between ZMTP heartbeats on each connection; a peer silent for 3 of them is
    #: dropped (its file descriptor freed). 0: no heartbeats
    heartbeat_interval: float = 5.0
    #: serve Prometheus metrics over HTTP on this port (needs prometheus_client); 0: not
    metrics_port: int = 0
    #: the metrics' listening address; None: ``bind``
    metrics_bind: Optional[str] = None

    def endpoint(self) -> str:
        if self.transport == "ipc":
            path = self.socket_path or os.path.join(self.data_dir, "elevator.sock")
            return f"ipc://{os.path.abspath(path)}"
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"tcp://{host}:{self.port or '*'}"


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
                                     max_reply_size=config.max_reply_size,
                                     batch_idle=config.batch_idle)
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
        #: tasks handed to the workers and not yet answered, by task number
        self._running: Dict[int, Task] = {}
        self._task_ids = itertools.count()
        self._rate_log = RateLimitedLog()
        self._peer_book = PeerBook()
        self._reqlog = RequestLog(config.slow_log_ms, name_of=self.store.name_of,
                                  peers=self._peer_book, rate_log=self._rate_log)
        self._outbox: Optional[Outbox] = None
        self._scheduler: Optional[Scheduler] = None
        self._started = time.monotonic()
        self.stats = Stats(now=self._started)
        self.dispatcher.info_source = self.info
        self._metrics: Optional[MetricsServer] = None
        self._handoff: Optional[FiguresHandoff] = None  # the loop's figures for scrapes

    def info(self) -> Dict[str, Any]:
        """What INFO answers: the server's identity and uptime, and the request statistics
        of the loop's inline path."""
        from .. import __version__
        now = time.monotonic()
        snap = self.stats.snapshot(now)
        requests, failures = self.stats.totals()
        loop = self._figures()
        return {"version": __version__, "pid": os.getpid(), "uptime": now - self._started,
                "data_dir": os.path.abspath(self.store.data_dir), "requests": requests,
                "failures": failures, "connections": loop.connections,
                "connections_total": loop.connections_total,
                "queues": {"heavy_waiting": loop.waiting, "heavy_running": loop.running,
                           "streams": loop.streams, "backlogged_clients": loop.backlogged_peers},
                **snap, "databases": self._databases(),
                "batches": self.dispatcher.batches.stats()}

    def _databases(self) -> Dict[str, Dict[str, Any]]:
        """INFO's view of each database: path, mounted, size on disk and its usage
        (Store.usage); a database dropped meanwhile is left out."""
        out: Dict[str, Dict[str, Any]] = {}
        for name, path, mounted in self.store.describe():
            size = disk_size(path)
            try:
                usage = self.store.usage(name, size)
            except CommandError:
                continue
            out[name] = {"path": path, "mounted": mounted, "size_bytes": size, **usage}
        return out

    # --------------------------------------------------------------- lifecycle

    def start(self) -> str:
        """Load the databases, bind the socket, start workers; returns the bound endpoint."""
        self._raise_fd_limit()
        self.store.load()
        ctx = self._ctx = _ServerContext()
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
        self._configure_heartbeat(front)
        Outbox.configure(front)
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
        if self.config.metrics_port:
            try:
                self._metrics = self._serve_metrics()
            except BaseException:
                front.close(0)
                ctx.term()
                self.store.close_all()
                raise
            log.info("metrics on %s", self._metrics.url)
        self._monitor_front(ctx, front)
        self._outbox = Outbox(front, self._peer_gone, rate_log=self._rate_log)
        self._scheduler = Scheduler(self.dispatcher, self._outbox, self._rate_log)
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

    def _serve_metrics(self) -> MetricsServer:
        from .. import __version__
        handoff = self._handoff = FiguresHandoff(self._figures())
        collector = ServerCollector(
            version=__version__, uptime=lambda: time.monotonic() - self._started,
            loop=lambda: handoff.fetch(_SCRAPE_WAIT),
            databases=lambda: [DatabaseFigures(*d) for d in self.store.describe()])
        bind = self.config.metrics_bind or self.config.bind
        return MetricsServer(collector, bind, self.config.metrics_port)

    def _figures(self) -> LoopFigures:
        """A copy of what the metrics thread may not read itself (on the loop's thread)."""
        scheduler, outbox, peers = self._scheduler, self._outbox, self._peer_book
        stats = self.stats
        return LoopFigures(
            stats.all_time(), stats.bytes_in, stats.bytes_out, connections=peers.open,
            connections_total=peers.accepted, running=len(self._running),
            waiting=scheduler.waiting() if scheduler is not None else 0,
            streams=scheduler.open_streams() if scheduler is not None else 0,
            backlogged_peers=outbox.backlogged_peers() if outbox is not None else 0)

    def _answer_scrape(self) -> None:
        """Hand a waiting scrape the loop's figures (each turn of the loop)."""
        handoff = self._handoff
        if handoff is not None and handoff.wanted():
            handoff.publish(self._figures())

    def _enable_curve(self, ctx: zmq.Context, front: zmq.Socket, secret_key_file: str) -> None:
        """CURVE on the ROUTER socket, and a ZAP handler that checks client keys."""
        from zmq.auth.thread import ThreadAuthenticator

        from ..security import permission_problems

        public, secret = load_key_pair(secret_key_file)
        assert self.config.curve_authorized_keys is not None
        for problem in permission_problems(secret_key_file, self.config.curve_authorized_keys):
            log.warning("%s", problem)
        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("elevator.auth"))
        self._auth.start()
        self._configure_keys()
        front.curve_secretkey = secret
        front.curve_publickey = public
        front.curve_server = True
        log.info("CURVE on: server public key %s", public.decode())

    def _configure_keys(self) -> None:
        """(Re)load the authorized client keys (at start and on SIGHUP).

        The handshake (ZAP) and the per-request check of open connections both read the
        one set loaded here, so a reload that removes a key also cuts its open connections
        off. Raises OSError for an unreadable directory, ValueError for a malformed key
        file; the keys loaded before are then kept.
        """
        from zmq.auth import CURVE_ALLOW_ANY

        from ..security import load_authorized_keys

        location = self.config.curve_authorized_keys
        assert location is not None and self._auth is not None
        if location == CURVE_ALLOW_ANY:
            log.warning("CURVE with --curve-authorized-keys '*': traffic is encrypted, but "
                        "any client that knows the server's public key gets in")
            self._peer_keys = None
            self._auth.configure_curve(domain="*", location=location)
            return
        keys = frozenset(load_authorized_keys(location))
        self._peer_keys = keys
        log.info("CURVE: %d authorized client keys in %s", len(keys), location)
        if not keys:
            log.warning("no client key (*.key) in %s: every client will be refused", location)
        if not self._auth.credentials_providers:
            self._auth.configure_curve_callback(domain="*", credentials_provider=_KeyCheck(self))

    # Set by _configure_keys (None: no per-request key check) and _monitor_front.
    _peer_keys: Optional[frozenset[bytes]] = None
    _front_monitor: Optional[zmq.Socket] = None
    _monitor_next_read = 0.0
    _accept_failures = 0
    _accept_errno = 0
    _accept_log_next = 0.0

    def _peer_allowed(self, frame: Any) -> bool:
        """Whether the sender of ``frame`` (received with copy=False) may still be served:
        True without CURVE or with '*', else whether its CURVE key (the User-Id that ZAP
        set) is among the keys loaded last."""
        keys = self._peer_keys
        if keys is None:
            return True
        try:
            user = frame.get("User-Id")
        except (zmq.ZMQError, AttributeError, KeyError):  # no metadata: not a CURVE peer
            return False
        return isinstance(user, str) and user.encode("ascii", "replace") in keys

    def _auth_refusal(self, frames: List[Any]) -> List[bytes]:
        """The reply frames (after the routing id) refusing a request of a revoked key."""
        payload = frames[-1].bytes if len(frames) == 2 else None
        return encode_error_reply(
            ErrorCode.AUTH, "this client's CURVE key is no longer authorized (removed from "
            "--curve-authorized-keys and reloaded): the request was not run",
            id=protocol.peek_id(payload) if payload is not None else None)

    def _recv_authorized(self, flags: int = 0) -> Optional[List[bytes]]:
        """Receive one request with its sender's key checked: its frames, or None when the
        key was revoked (the refusal is then already sent). Raises zmq.Again as recv does."""
        front = self._front
        assert front is not None
        frames = front.recv_multipart(flags, copy=False)
        self._peer_book.learn(frames[0].bytes, frames[0])
        if not self._peer_allowed(frames[-1]):
            ident, refusal = frames[0].bytes, self._auth_refusal(frames)
            self._reqlog.failed(ident, None, None, refusal, ErrorCode.AUTH)
            if self._outbox is not None:
                self._outbox.send(ident, refusal)
            else:
                front.send_multipart([ident, *refusal])
            return None
        return [f.bytes for f in frames]

    def _raise_fd_limit(self) -> None:
        """Raise the soft limit of open files to the hard one: every connection holds one."""
        try:
            import resource
        except ImportError:  # not a POSIX system
            return
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            infinity = resource.RLIM_INFINITY
            # Linux caps an unlimited hard limit at fs.nr_open (2**20 by default).
            target = hard if hard != infinity else max(soft, 1 << 20)
            if soft == infinity or soft >= target:
                log.info("open files limit: %s", "unlimited" if soft == infinity else soft)
                return
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("open files limit raised from %d to %d", soft, target)
        except (OSError, ValueError) as exc:
            log.warning("could not raise the open files limit: %s", exc)

    def _configure_heartbeat(self, front: zmq.Socket) -> None:
        """ZMTP heartbeats: a peer that answers none for 3 intervals is dropped, and its
        file descriptor freed, instead of being held until TCP notices (hours)."""
        interval = self.config.heartbeat_interval
        if not interval or interval <= 0:
            return
        ms = max(1, int(interval * 1000))
        front.setsockopt(zmq.HEARTBEAT_IVL, ms)
        front.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * ms)
        front.setsockopt(zmq.HEARTBEAT_TTL, min(3 * ms, 6553500))  # its max: 6553.5 s

    def _monitor_front(self, ctx: "_ServerContext", front: zmq.Socket) -> None:
        """Watch the ROUTER for failed accepts (out of file descriptors, above all)."""
        try:
            # accepts and disconnects: the connection counts (INFO, metrics), and the DEBUG lines
            events = zmq.EVENT_ACCEPT_FAILED | zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
            monitor = front.get_monitor_socket(events)
        except zmq.ZMQError as exc:
            log.warning("cannot monitor the listening socket: %s", exc)
            return
        monitor.linger = 0
        ctx.close_first.append(monitor)
        self._front_monitor = monitor

    def _drain_front_monitor(self) -> None:
        """Read the ROUTER's monitor events (call every loop tick, and while draining at
        stop): failed accepts are logged, at most one line a second, with how many failed
        and why.

        libzmq's I/O thread blocks while the monitor's queue is full (out of descriptors,
        its listener fails thousands of accepts a second): reading only every 0.1 s caps
        that spin, at the price of up to 0.1 s added latency for the clients meanwhile.
        Never disable the monitor instead: that waits for the I/O thread (a deadlock).
        """
        import struct

        monitor = self._front_monitor
        if monitor is None or monitor.closed:
            return
        now = time.monotonic()
        if now < self._monitor_next_read and not self._stop.is_set():
            return
        self._monitor_next_read = now + 0.1
        for _ in range(10000):  # bounded: a spinning listener queues up to the HWM
            try:
                frames = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError:
                return
            if len(frames) >= 1 and len(frames[0]) >= 6:
                event, value = struct.unpack("=HI", frames[0][:6])
                if event == zmq.EVENT_ACCEPT_FAILED:
                    self._accept_failures += 1
                    self._accept_errno = value
                elif event == zmq.EVENT_ACCEPTED:
                    self._peer_book.opened(value)
                elif event == zmq.EVENT_DISCONNECTED:
                    self._peer_book.closed(value)
        if self._accept_failures and now >= self._accept_log_next:
            self._accept_log_next = now + 1.0
            limit = _open_files_limit()
            log.error("cannot accept new connections: %d accept failures (%s)%s; existing "
                      "clients are still served", self._accept_failures,
                      os.strerror(self._accept_errno) if self._accept_errno else "unknown",
                      f"; open files limit {limit}" if limit else "")
            self._accept_failures = 0

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
        outbox, scheduler = self._outbox, self._scheduler
        assert front is not None and outbox is not None and scheduler is not None
        poller = zmq.Poller()
        poller.register(front, zmq.POLLIN)
        if results is not None:
            poller.register(results, zmq.POLLIN)
        unmount_after = self.config.unmount_after
        tick = max(0.05, min(1.0, unmount_after / 2)) if unmount_after > 0 else None
        next_tick = time.monotonic() + tick if tick else None
        next_stream_check = time.monotonic() + 1.0
        batch_tick = min(1.0, self.config.batch_idle / 4)
        next_batch_check = time.monotonic() + batch_tick
        try:
            while not self._stop.is_set():
                wait = _BACKLOG_TICK if outbox.has_backlog() else _TICK
                events = dict(poller.poll(int(wait * 1000)))
                if front in events:
                    self._read_requests(front, _BURST)
                if results is not None and results in events:
                    self._forward_replies(results, _BURST)
                self._pump()
                outbox.flush()
                if self._reload_keys.is_set():
                    self._reload_keys.clear()
                    try:
                        self._configure_keys()
                    except (OSError, ValueError) as exc:  # ValueError: a *.key without a key
                        log.error("reloading the authorized keys: %s (keeping the old ones)", exc)
                self._drain_front_monitor()
                self._rate_log.flush()
                now = time.monotonic()
                self._answer_scrape()
                if now >= next_stream_check:
                    next_stream_check = now + 1.0
                    scheduler.close_idle_streams()
                if now >= next_batch_check:
                    next_batch_check = now + batch_tick
                    self._expire_batches()
                if tick is not None and next_tick is not None and now >= next_tick:
                    next_tick = now + tick
                    for name in self.store.unmount_idle(unmount_after):
                        log.debug("idle database %s unmounted", name)
            self._drain(front, results)
        finally:
            self._shutdown()

    def _read_requests(self, front: zmq.Socket, budget: int) -> int:
        """Read up to ``budget`` requests: answer the cheap ones now, queue the heavy ones
        (and writes behind a queued write to their database) with the scheduler."""
        handled = 0
        # CURVE with a key directory: every request's sender is checked (revoked keys).
        recv = functools.partial(self._peer_book.recv, front) if self._peer_keys is None \
            else self._recv_authorized
        send = self._outbox.send  # type: ignore[union-attr]
        scheduler = self._scheduler
        assert scheduler is not None
        workers = self.config.workers
        dispatcher = self.dispatcher
        fast_get = dispatcher.fast_get
        stats = self.stats
        reqlog = self._reqlog
        slow_after = reqlog.slow_after
        received = time.monotonic()
        while handled < budget:
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            handled += 1
            if frames is None:  # a revoked CURVE key: _recv_authorized sent the refusal
                continue
            if len(frames) != 2:
                rid = protocol.peek_id(frames[1]) if len(frames) > 1 else None
                reply = encode_error_reply(
                    ErrorCode.REQUEST, f"request has {len(frames) - 1} frames, expected 1",
                    id=rid)
                send(frames[0], reply)
                reqlog.failed(frames[0], None, None, reply, ErrorCode.REQUEST)
                continue
            ident, frame = frames
            if len(frame) <= FAST_GET_MAX_FRAME:
                fast = fast_get(frame, received)
                if fast is not None:
                    send(ident, fast)
                    answered = time.monotonic()
                    stats.record(protocol.GET, answered - received, answered, None,
                                 len(frame), _size(fast))
                    if answered - received >= slow_after:  # rare: decode it for the db's name
                        reqlog.answered(ident, protocol.GET, dispatcher.decode(frame).uid,
                                        len(frame), fast, answered - received, None)
                    continue
            big = len(frame) > _BIG_FRAME
            if big and workers:
                rid, cmd, uid = protocol.peek(frame)  # even its decoding is heavy: a worker does it
                scheduler.submit(ident, received, frame=frame, rid=rid, cmd=cmd, uid=uid)
                continue
            try:
                if big:
                    with gc_paused():
                        request = dispatcher.decode(frame)
                else:
                    request = dispatcher.decode(frame)
            except ProtocolError as exc:
                reply = dispatcher.decode_failure(exc)
                send(ident, reply)
                reqlog.failed(ident, None, None, reply, exc.code)
                continue
            if request.cmd == protocol.CREDIT:
                scheduler.credit(ident, request.args)
                continue
            if big or scheduler.is_heavy(request) or scheduler.write_must_wait(
                    request.cmd, request.uid) or dispatcher.stream_page(request):
                scheduler.submit(ident, received, request=request, request_size=len(frame))
                continue
            if request.cmd in protocol.NOTIFICATIONS:  # a batch's abort: never answered
                dispatcher.notify(request, ident, len(frame))
                continue
            reply = scheduler.expired_reply(request, received) or dispatcher.run(request, ident)
            send(ident, reply)
            answered = time.monotonic()
            error = reply_error(reply)
            stats.record(request.cmd, answered - received, answered, error, len(frame),
                         _size(reply))
            if error is not None or answered - received >= slow_after:
                reqlog.answered(ident, request.cmd, request.uid, len(frame), reply,
                                answered - received, error)
        return handled

    def _expire_batches(self) -> None:
        """Drop the streamed batches whose client sent no chunk for the idle time."""
        expired = self.dispatcher.batches.expire()
        if expired:
            self._rate_log(logging.WARNING, "batch-idle", "dropped %d streamed WriteBatch(es) "
                           "unwritten: no chunk for %gs (the client died or gave up)",
                           len(expired), self.config.batch_idle)

    def _pump(self) -> None:
        """Give the workers what the scheduler says may run next (run it here without
        workers)."""
        scheduler = self._scheduler
        assert scheduler is not None
        workers = self.config.workers
        while not workers or len(self._running) < workers:
            task = scheduler.next_task()
            if task is None:
                return
            if not workers:
                with gc_paused():
                    frames = self._execute(task)
                scheduler.complete(task, frames)
                self._task_answered(task, frames)
                continue
            tid = next(self._task_ids)
            self._running[tid] = task
            self._tasks.put((tid, task))

    def _execute(self, task: Task) -> List[Any]:
        try:
            return self._scheduler.execute(task)  # type: ignore[union-attr]
        except BaseException as exc:  # execute never raises, bar a bug or MemoryError
            log.exception("worker failed")
            return encode_error_reply(ErrorCode.RUNTIME, f"internal error: {exc}", id=task.rid)

    def _forward_replies(self, results: zmq.Socket, budget: int) -> int:
        scheduler = self._scheduler
        assert scheduler is not None
        n = 0
        while n < budget:
            try:
                frames = results.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            n += 1
            task = self._running.pop(int.from_bytes(frames[0].bytes, "little"))
            scheduler.complete(task, frames[1:])
            self._task_answered(task, frames[1:])
        return n

    def _task_answered(self, task: Task, frames: List[Any]) -> None:
        """The statistics, and the slow-request and failure lines, of a worker's reply
        (timed from receipt to sent); a stream's later pages are not counted (they wait
        for their reader's credit)."""
        if task.stream is not None or not frames:  # not counted: a page, a notification
            return
        header = frames[0] if isinstance(frames[0], bytes) else frames[0].bytes
        error = reply_error([header])
        answered = time.monotonic()
        seconds = answered - task.received
        if task.cmd is not None:  # an undecodable frame: not counted, as on the loop
            self.stats.record(task.cmd, seconds, answered, error, task.request_size,
                              _size(frames))
        if error is None and seconds < self._reqlog.slow_after:
            return
        request = task.request
        cmd: Optional[str]
        if request is not None:
            cmd, uid = request.cmd, request.uid
        else:  # decoded on the worker: read again what the loop peeked
            _, cmd, uid = protocol.peek(task.frame or b"")
        self._reqlog.answered(task.ident, cmd, uid, task.request_size, [header, *frames[1:]],
                              seconds, error)

    def _worker(self) -> None:
        assert self._ctx is not None
        out = self._ctx.socket(zmq.PUSH)
        out.setsockopt(zmq.LINGER, -1)
        out.connect(_RESULTS)
        try:
            while True:
                item = self._tasks.get()
                if item is None:
                    break
                tid, task = item
                with gc_paused():
                    frames = self._execute(task)
                out.send_multipart([tid.to_bytes(8, "little"), *frames], copy=False)
        finally:
            out.close()

    def _peer_gone(self, ident: bytes) -> None:
        self._peer_book.forget(ident)
        self._rate_log(logging.INFO, "peer-gone", "a client went away before its replies "
                       "were sent; its queued reads and streams are dropped")
        if self._scheduler is not None:
            self._scheduler.peer_gone(ident)

    # ------------------------------------------------------------------ stop

    def _drain(self, front: zmq.Socket, results: Optional[zmq.Socket]) -> None:
        """Stop accepting, answer what was already received and what workers are doing.

        The listener is not unbound first: in libzmq that also closes the connections it
        accepted, and the replies of requests still in the workers would be lost. The
        requests already queued are read, run and answered, open streams are ended with
        a failure page, and what the clients' queues could not take yet is flushed;
        closing the socket afterwards ends every connection.
        """
        scheduler, outbox = self._scheduler, self._outbox
        assert scheduler is not None and outbox is not None
        deadline = time.monotonic() + _DRAIN_TIME
        reading = True
        last_read = time.monotonic()
        while time.monotonic() < deadline:
            read = self._read_requests(front, _BURST) if reading else 0
            if read:
                last_read = time.monotonic()
            # Requests sent before the stop may still be on their way through libzmq's I/O
            # thread: reading ends only after a quiet spell, not at the first empty read.
            reading = reading and (read > 0 or time.monotonic() - last_read < _DRAIN_QUIET)
            forwarded = self._forward_replies(results, _BURST) if results is not None else 0
            self._pump()
            outbox.flush()
            self._drain_front_monitor()  # out of descriptors, libzmq waits for this reader
            self._rate_log.flush()
            self._answer_scrape()
            if not reading and not forwarded and not self._running and not scheduler.has_work():
                if scheduler.open_streams():
                    scheduler.end_streams("the server is stopping: stream ended")
                    continue
                if not outbox.has_backlog():
                    break
                time.sleep(_BACKLOG_TICK)
            elif results is not None and not read and not forwarded:
                results.poll(50)
        if self._running or outbox.has_backlog():
            log.warning("stopping with %d requests unanswered", len(self._running))

    def _shutdown(self) -> None:
        if self._metrics is not None:
            self._metrics.close()  # first: a scrape must not read a closing store
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




class _ServerContext(zmq.Context):
    """The server's context: its term() first closes the sockets in ``close_first`` (the
    ROUTER's event monitor), which would otherwise keep term() waiting forever."""

    close_first: List[zmq.Socket]

    def __init__(self) -> None:
        super().__init__()
        self.close_first = []

    def term(self) -> None:
        while self.close_first:
            self.close_first.pop().close(0)
        super().term()


class _KeyCheck:
    """The ZAP handler's CURVE key check: the server's currently loaded authorized keys."""

    def __init__(self, server: "Server") -> None:
        self._server = server

    def callback(self, domain: str, key: bytes) -> bool:
        keys = self._server._peer_keys
        return keys is not None and key in keys


def _size(frames: List[Any]) -> int:
    """Bytes of a reply's frames (bytes or zmq Frames)."""
    return sum(len(f) for f in frames)


def _open_files_limit() -> Optional[int]:
    """The soft limit of open files, None when unknown or unlimited."""
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft
