"""One ZeroMQ DEALER socket: send a request, await its reply, never take a stale one.

A :class:`Connection` is used by one thread at a time (the pool guarantees it).
Every request carries ``meta.id`` (a per-socket counter); this project's server
echoes it, so a late reply to a request that timed out is recognised and dropped,
and the socket stays usable. A server that does not echo ids (the original
Elevator) makes the connection fall back to the Lazy Pirate rule: after a timeout
the socket is *tainted*, and the pool closes it with ``LINGER=0`` and opens another.
"""
from __future__ import annotations

import errno
import itertools
import time
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import zmq
from zmq.utils.monitor import parse_monitor_message

from . import errors, protocol
from .gcpause import gc_paused
from .protocol import Reply
from .reachability import PROBE_SECONDS, Probe
from . import pids

__all__ = ["Connection", "normalize_endpoint"]

#: replies larger than this are decoded with the garbage collector paused (gcpause.py)
GC_PAUSE_THRESHOLD = 256 * 1024
#: how long the first poll for a reply waits before the slow path, which also watches
#: the socket's monitor for a lost connection. Most replies arrive well within it.
_FAST_POLL_MS = 20
#: plain ints on the hot path: pyzmq's IntFlag arithmetic runs Python code at each use
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
#: handshake failures reported by the socket's monitor (CURVE refused, mechanism mismatch,
#: a wrong server key), and the success that clears them.
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
#: Not the events of each connection attempt (CONNECT_RETRIED...): they repeat while the
#: server is down, and an idle socket's unread monitor would fill and block the context's
#: I/O thread. Why no connection was made is probed instead (reachability.py).
_MONITOR_EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | _HANDSHAKE_FAILED
#: a handshake failure without a definite cause (a wrong server key gives "no detail", but
#: so could a server killed mid-handshake) is only final when it repeats this many times
#: in a row; a refused key (AUTH) or a mechanism mismatch is final at once.
_VAGUE_HANDSHAKE_FAILURES = 3

#: the most a socket waits between reconnect attempts; capped per connection to half its
#: connect_timeout, so a request waiting for a connection sees at least one attempt
RECONNECT_IVL_MAX_MS = 1000


def normalize_endpoint(endpoint: str, transport: str = "tcp") -> str:
    """``host:port`` plus a transport, or a full ZeroMQ URL, as a ZeroMQ URL."""
    if not isinstance(endpoint, str):
        raise TypeError(f"endpoint must be a str, not {type(endpoint).__name__}")
    if not endpoint:
        raise ValueError("endpoint must not be empty")
    if "://" in endpoint:
        scheme = endpoint.split("://", 1)[0]
        if scheme not in ("tcp", "ipc", "inproc"):
            raise ValueError(f"endpoint {endpoint!r}: transport must be tcp, ipc or inproc")
        return endpoint
    if transport not in ("tcp", "ipc"):
        raise ValueError(f"transport must be 'tcp' or 'ipc', not {transport!r}")
    if transport == "tcp" and ":" not in endpoint:
        raise ValueError(f"endpoint {endpoint!r} must be HOST:PORT (or a tcp://, ipc:// URL)")
    return f"{transport}://{endpoint}"


def invalid_address(endpoint: str, exc: zmq.ZMQError) -> str:
    """Why ZeroMQ refused to connect to ``endpoint`` at once (EINVAL)."""
    if not endpoint.startswith("tcp://"):
        return f"{endpoint} is not a valid ZeroMQ address ({exc})"
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"{endpoint}: the port {port!r} is not a number from 1 to 65535"
    return f"{endpoint}: the host {host!r} does not resolve (it is not a valid host name)"


class Connection:
    """A DEALER socket connected to one server. Not thread-safe: one user at a time.

    ``security`` is a callable that applies CURVE (or other) options to a new
    socket before it connects.
    """

    def __init__(self, context: zmq.Context, endpoint: str, *,
                 heartbeat_interval: float = 1.0, security: Any = None,
                 connect_timeout: Optional[float] = None) -> None:
        self.endpoint = endpoint
        self.pid = pids.current()
        self.created = self.last_used = time.monotonic()
        #: True once the server echoed an id, False once it answered without one.
        self.ids_echoed: Optional[bool] = None
        self.is_tainted = False
        self.stale_replies = 0
        #: requests the server answered TIMEOUT (not started within meta.timeout)
        self.server_timeouts = 0
        #: the size of the last request frame sent or refused (bytes)
        self.last_frame_size = 0
        self._ids = itertools.count(1)
        #: a completed (handshaken) connection exists, as last reported by the monitor
        self._connected = False
        #: consecutive failed security handshakes, and what the last one said
        self._handshake_failures = 0
        self._handshake_problem = ""
        self._handshake_reason = ""
        sock = context.socket(zmq.DEALER)
        try:
            sock.linger = 0
            # Not ZMQ_IMMEDIATE: with it, libzmq 4.3 drops the unread frames of a reply
            # when the connection goes away, and aborts the process (fq.cpp "!_more") if
            # this thread has read the first frame but not the second. The same "send
            # only to a completed connection" rule is kept here instead, from the
            # monitor's events (see request), so "never sent" is still known.
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            sock.setsockopt(zmq.RECONNECT_IVL, 20)
            ivl_max = RECONNECT_IVL_MAX_MS
            if connect_timeout is not None:
                ivl_max = max(20, min(ivl_max, int(connect_timeout * 1000) // 2))
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, ivl_max)
            if heartbeat_interval:
                ivl = int(heartbeat_interval * 1000)
                sock.setsockopt(zmq.HEARTBEAT_IVL, ivl)
                sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * ivl)
            if security is not None:
                security(sock)
            self._monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
            try:
                sock.connect(endpoint)
            except zmq.ZMQError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # never valid, however often retried: fail at once, saying why
                raise errors.AddressError(f"cannot connect to {invalid_address(endpoint, exc)}",
                                          request_sent=False) from exc
        except BaseException:
            # The monitor is a socket too: left open, it would make the context's
            # term() (ElevatorPool.close) wait for it forever.
            monitor = self.__dict__.get("_monitor")
            if monitor is not None:
                # unbinds its inproc address now: the next socket may get the same fd
                sock.disable_monitor()
                monitor.close(0)
            sock.close(0)
            raise
        self.socket = sock
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        # the fast path's wait for a reply: a registered poller, not sock.poll's new one per call
        self._reply_poller = zmq.Poller()
        self._reply_poller.register(sock, zmq.POLLIN)

    def __repr__(self) -> str:
        state = "tainted" if self.is_tainted else ("closed" if self.is_closed else "open")
        return f"<Connection {self.endpoint} {state}>"

    @property
    def is_closed(self) -> bool:
        return self.socket.closed

    @property
    def zmq_sockets(self) -> Tuple[zmq.Socket, zmq.Socket]:
        """The ZeroMQ sockets this connection opened: its DEALER and its monitor."""
        return self.socket, self._monitor

    def close(self) -> None:
        """Close at once, dropping anything queued (LINGER=0). Only from the owning process."""
        if pids.current() != self.pid:
            return  # a forked child must not touch its parent's sockets
        if not self.socket.closed:
            try:
                self.socket.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(0)
            self.socket.close(0)

    def _drain_monitor(self) -> bool:
        """True when the monitor reported a disconnect since it was last drained.

        Also tracks whether a completed connection exists, and counts failed security
        handshakes (see :meth:`_check_handshake`).
        """
        lost = False
        while True:
            try:
                frames = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return lost
            try:
                message = parse_monitor_message(frames)
                event, value = int(message["event"]), int(message["value"])
            except Exception:  # pragma: no cover - libzmq always sends two well-formed frames
                lost = True
                self._connected = False
                continue
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshake_failures = 0
                self._connected = True
            elif event & _HANDSHAKE_FAILED:
                self._connected = False
                self._handshake_failed(event, value)
            else:
                lost = True
                self._connected = False

    def _handshake_failed(self, event: int, value: int) -> None:
        final = False
        curve = self.socket.getsockopt(zmq.MECHANISM) == zmq.CURVE
        reason = ""
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            final = True
            reason = "key_refused"
            problem = (f"the server refused this client's CURVE key (ZAP status {value}): "
                       "its public key must be in the server's --curve-authorized-keys directory")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL \
                and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            final = True
            reason = "server_without_curve" if curve else "server_needs_curve"
            problem = ("security mismatch: one side uses CURVE and the other does not (a server "
                       "started with --curve-secret-key needs clients with curve=CurveKeys(...))")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            problem = f"security handshake failed: ZMTP protocol error {value:#x}"
        elif curve:
            reason = "wrong_server_key"
            problem = (f"security handshake failed (errno {value}): check the server's public "
                       "key (curve_server_key), and that the server uses CURVE")
        else:
            reason = "server_needs_curve"
            problem = (f"security handshake failed (errno {value}): the server probably "
                       "requires CURVE (--curve-secret-key): give this client "
                       "curve=CurveKeys(...)")
        self._handshake_problem = problem
        self._handshake_reason = reason
        self._handshake_failures = (max(self._handshake_failures + 1, _VAGUE_HANDSHAKE_FAILURES)
                                    if final else self._handshake_failures + 1)

    def _check_handshake(self, cmd: str) -> None:
        """Raise AuthenticationError when the security handshake keeps failing."""
        if self._handshake_failures >= _VAGUE_HANDSHAKE_FAILURES:
            self.is_tainted = True
            raise errors.AuthenticationError(
                f"{cmd}: no access to {self.endpoint}: {self._handshake_problem}",
                reason=self._handshake_reason)

    def _await_connection(self, cmd: str, deadline: float, wait: float, call_timeout: float,
                          whole: bool) -> None:
        """Wait until a completed (handshaken, authenticated) connection exists, from the
        monitor's events, so that a request is only queued where it is sent at once and a
        refused handshake fails at once. ``whole``: the wait ends at the call's deadline
        (else at its connect_timeout, and the call retries)."""
        monitor = self._monitor
        # why there is no connection is probed shortly before giving up (not at all when
        # one comes): within the wait, so the error costs no time beyond it
        probe_at = deadline - min(PROBE_SECONDS, wait / 2)
        probe: Optional[Probe] = None
        while not self._connected:
            now = time.monotonic()
            if probe is None and now >= probe_at:
                probe = Probe(self.endpoint, deadline - now)
            remaining_ms = int(((deadline if probe else probe_at) - now) * 1000)
            if remaining_ms <= 0 and probe is not None:
                raise errors.ElevatorTimeout(
                    f"{cmd}: no connection to {self.endpoint} "
                    + (f"within {call_timeout:g}s" if whole else
                       f"after {wait:g}s (connect_timeout; the call's timeout is "
                       f"{call_timeout:g}s)")
                    + f": {self._no_connection_cause(probe)}", request_sent=False)
            if monitor.poll(max(remaining_ms, 0)):
                self._drain_monitor()
                self._check_handshake(cmd)

    def _no_connection_cause(self, probe: Probe) -> str:
        if self._handshake_failures:
            return f"the security handshake failed: {self._handshake_problem}"
        return probe.cause()

    def request(self, cmd: str, args: Sequence, uid: Optional[str] = None, *,
                timeout: float, compression: bool = False, stream: int = 0,
                connect_timeout: Optional[float] = None, call_timeout: Optional[float] = None,
                max_message_size: Optional[Callable[["Connection", float], Optional[int]]] = None
                ) -> Reply:
        """Send one request and return its reply (a failure reply is returned, not raised).

        Raises ElevatorTimeout (no reply within ``timeout`` seconds; ``request_sent``
        False when it could not even be queued), ConnectionError (the peer went away
        after the request was sent), ProtocolError (a malformed reply; the socket is
        tainted), AuthenticationError (the security handshake was refused: a CURVE key
        the server does not accept, or CURVE on one side only; never sent, not retried).

        ``stream`` (RANGE/SLICE): let the server send the items as pages of at most this
        many, decoded here as they arrive while the server reads the next ones; the
        Reply's datas is then every page's items in order, as one reply would have them
        (a server that does not stream just sends that one reply). ``timeout`` covers
        the whole stream.

        ``connect_timeout``: when no connection can take the request, give up waiting
        for one after this long (ElevatorTimeout, ``request_sent`` False) instead of
        the whole ``timeout``, so that a retry policy's ``stop`` is consulted.

        ``call_timeout``: the whole timeout of the call this request is part of (default
        ``timeout``), which the error messages name.

        ``max_message_size(conn, deadline)``: asked only for a frame larger than
        protocol.MIN_MAX_MESSAGE_SIZE, the server's limit (None: unknown); a larger
        frame raises LimitExceeded, never sent.

        Every request carries meta.timeout (the ms left); a server that could not start
        it in time answers TIMEOUT, raised as ElevatorTimeout with ``request_sent``
        False (nothing was done). A server's AUTH answer raises AuthenticationError.
        """
        rid = next(self._ids)
        start = time.monotonic()
        whole = timeout if call_timeout is None else call_timeout
        head, content = self._exchange(cmd, args, uid, rid, start, timeout, compression, stream,
                                       False, connect_timeout, whole, max_message_size)
        if stream and head.get(protocol.MORE):
            return self._receive_stream(cmd, rid, head, content, start + timeout, whole)
        return self._single(cmd, rid, head, content, bool(stream))

    def _single(self, cmd: str, rid: int, head: dict, content: bytes, stream: bool) -> Reply:
        """The Reply of a reply that is the only one: an unstreamed reply, or a stream's
        only page."""
        try:
            status = head.get("status")
            err_msg = head.get("err_msg")
            if stream:
                # the only page of a stream is page 0: a later one means the first were lost
                self._check_seq(head, 0, False)
            if status == protocol.Status.FAILURE:
                return self._failure(cmd, rid, head)
            if status not in (1, -2):
                raise errors.ProtocolError(f"unknown status {status!r}")
            if len(content) > GC_PAUSE_THRESHOLD:
                with gc_paused():
                    datas = protocol.decode_content(content, bool(head.get("compression")))
            else:
                datas = protocol.decode_content(content, bool(head.get("compression")))
        except errors.ProtocolError as exc:
            raise self._malformed(cmd, exc) from None
        return Reply(status, None, err_msg, rid, datas)

    def _exchange(self, cmd: str, args: Sequence, uid: Optional[str], rid: int, start: float,
                  timeout: float, compression: bool, stream: int, iterate: bool,
                  connect_timeout: Optional[float], whole: float,
                  max_message_size: Optional[Callable[["Connection", float], Optional[int]]]
                  ) -> Tuple[dict, bytes]:
        """Send request ``rid`` and receive its (first) reply's header and content, within
        ``timeout`` of ``start`` (the caller's ``time.monotonic()``)."""
        deadline = start + timeout
        frame = self._encode(cmd, args, uid, rid, compression, stream, deadline, iterate)
        self.last_frame_size = len(frame)
        if len(frame) > protocol.MIN_MAX_MESSAGE_SIZE and max_message_size is not None:
            maximum = max_message_size(self, deadline)
            if maximum is not None and len(frame) > maximum:
                raise errors.LimitExceeded(
                    f"{cmd}: a request of {len(frame)} bytes exceeds the server's limit of "
                    f"{maximum} bytes (max_message_size); not sent",
                    limit="max_message_size", value=len(frame), maximum=maximum)
        sock = self.socket
        sent = False
        try:
            if self._monitor.get(_EVENTS) & _POLLIN:
                # Events from before this request: a disconnect says nothing about it,
                # but updates whether a connection exists now.
                self._drain_monitor()
            if self._handshake_failures:
                self._check_handshake(cmd)
            if not self._connected:
                # Just opened, or the server is down: wait for a connection rather than
                # queue the request where it could be delivered long after we gave up.
                wait = timeout if connect_timeout is None else min(timeout, connect_timeout)
                self._await_connection(cmd, start + wait, wait, whole, wait == timeout)
                # meta.timeout must say what is left now, not before the wait
                frame = self._encode(cmd, args, uid, rid, compression, stream, deadline,
                                     iterate)
            try:
                sock.send(frame, _NOBLOCK)
            except zmq.Again as exc:
                # The queue to the server is full (a high-water mark of requests): not sent,
                # and the socket is still good.
                raise errors.from_zmq(exc, f"{cmd} to {self.endpoint}",
                                      request_sent=False) from exc
            sent = True
            return self._receive(cmd, rid, deadline, whole)
        except zmq.ZMQError as exc:
            self.is_tainted = True
            raise errors.from_zmq(exc, f"{cmd} to {self.endpoint}", request_sent=sent) from exc
        finally:
            self.last_used = time.monotonic()

    def _malformed(self, cmd: str, exc: errors.ProtocolError) -> errors.ProtocolError:
        """The error for a malformed reply, saying where it came from; the socket is
        tainted (replaced), since what it receives next cannot be trusted."""
        self.is_tainted = True
        return errors.ProtocolError(f"{cmd}: malformed reply from {self.endpoint}: {exc}")

    def _encode(self, cmd: str, args: Sequence, uid: Optional[str], rid: int,
                compression: bool, stream: int, deadline: float, iterate: bool = False
                ) -> bytes:
        return protocol.encode_request(
            cmd, args, uid, id=rid, compression=compression, stream=stream,
            window=protocol.DEFAULT_WINDOW if stream else None,
            timeout_ms=max(int((deadline - time.monotonic()) * 1000), 0), iterate=iterate)

    def _failure(self, cmd: str, rid: int, head: dict) -> Reply:
        """A failure reply, or the error it means for the transport (TIMEOUT, AUTH)."""
        code = head.get("err_code")
        err_msg = head.get("err_msg")
        if isinstance(err_msg, bytes):
            err_msg = err_msg.decode("utf-8", "replace")
        if code == protocol.ErrorCode.TIMEOUT and head.get("id") is not None:
            self.server_timeouts += 1
            raise errors.ElevatorTimeout(
                f"{cmd}: {self.endpoint} could not start it within the call's deadline "
                f"(nothing was done): {err_msg}", request_sent=False)
        if code == protocol.ErrorCode.AUTH and head.get("id") is not None:
            self.is_tainted = True
            raise errors.AuthenticationError(
                f"{cmd}: {self.endpoint} no longer accepts this client's CURVE key: {err_msg}",
                reason="key_revoked")
        detail = head.get(protocol.ERR_DETAIL)
        return Reply(protocol.Status.FAILURE, code, err_msg, rid, None,
                     detail if isinstance(detail, dict) else None)

    @staticmethod
    def _check_seq(head: dict, expected: int, seen_seq: bool) -> bool:
        """Whether the page carries a seq; raises ProtocolError when it is not
        page ``expected``, or has none after earlier pages had one."""
        seq = head.get(protocol.SEQ)
        if seq is None:
            if seen_seq:
                raise errors.ProtocolError(
                    f"incomplete stream: expected page {expected}, got a page without seq")
            return False
        if isinstance(seq, bool) or seq != expected:
            raise errors.ProtocolError(
                f"incomplete stream: expected page {expected}, got {seq!r}")
        return True

    def notify(self, cmd: str, args: Sequence, uid: Optional[str], *, first: bool,
               connect_timeout: float) -> bool:
        """Send a request that is never answered (a streamed batch's chunk or abort)
        without waiting; whether it was queued on a connection that has stayed up since
        the previous one (``first``: since now; a connection is awaited up to
        ``connect_timeout``). False: it may never reach the server, or reach another
        one, so what it belongs to must be sent again. Never raises."""
        if pids.current() != self.pid:
            return False  # a forked child never touches its parent's sockets
        try:
            lost = bool(self._monitor.get(_EVENTS) & _POLLIN) and self._drain_monitor()
            if lost and not first:
                return False
            if not self._connected:
                if not first:
                    return False
                self._await_connection(cmd, time.monotonic() + connect_timeout,
                                       connect_timeout, connect_timeout, True)
            self.socket.send(protocol.encode_notification(cmd, args, uid), _NOBLOCK)
        except (zmq.ZMQError, errors.ElevatorError):
            return False
        finally:
            self.last_used = time.monotonic()
        return True

    def _send_credit(self, rid: int, pages: int) -> None:
        """Grant ``pages`` more pages of stream ``rid`` (0: close it); never blocks."""
        try:
            self.socket.send(protocol.encode_credit(rid, pages), zmq.NOBLOCK)
        except zmq.ZMQError:
            # a full queue or a closed socket: the server's window bounds what it sends
            pass

    def _receive_stream(self, cmd: str, rid: int, head: dict, content: bytes, deadline: float,
                        timeout: float) -> Reply:
        """The pages of a streamed reply, the first one already received, as one Reply:
        each decoded while the server reads the next, with the GC paused; the collection
        of a page's lists then runs while the next page is on its way, instead of all of
        them after the last. A failure page ends the stream and is the Reply."""
        items: list = []
        status: int = protocol.Status.SUCCESS
        for page, _ in self._pages(cmd, rid, head, content, lambda: deadline, timeout):
            if page.status == protocol.Status.FAILURE:
                return page
            if page.status == protocol.Status.WARNING:
                status = page.status
            items.extend(page.datas)
        return Reply(status, None, page.err_msg, rid, items)

    def iterate(self, cmd: str, args: Sequence, uid: Optional[str], *, page: int,
                timeout: float, page_timeout: float, connect_timeout: Optional[float] = None,
                max_message_size: Optional[Callable[["Connection", float], Optional[int]]] = None
                ) -> Iterator[Tuple[Reply, bool]]:
        """Send ``cmd`` (RANGE) as an iteration streamed in pages of at most ``page`` items
        (meta ``iter``) and yield ``(Reply, is_last)`` per page as the caller takes them,
        crediting each page taken. ``timeout`` bounds the first page's wait, ``page_timeout`` each
        later one's. A failure page is the last Reply. Closing the generator early
        closes the stream (CREDIT [id, 0]). The request is sent, and its first page
        received, by the first ``next()``. Raises as :meth:`request`."""
        rid = next(self._ids)
        head, content = self._exchange(cmd, args, uid, rid, time.monotonic(), timeout, False,
                                       page, True, connect_timeout, timeout, max_message_size)
        if not head.get(protocol.MORE):
            yield self._single(cmd, rid, head, content, True), True
            return
        yield from self._pages(cmd, rid, head, content,
                               lambda: time.monotonic() + page_timeout, page_timeout)

    def _pages(self, cmd: str, rid: int, head: dict, content: bytes,
               deadline: Callable[[], float], timeout: float) -> Iterator[Tuple[Reply, bool]]:
        """The pages of a streamed reply, the first one already received, as
        ``(Reply, is_last)``;
        ``deadline()`` is asked for the time by which each further page must come.

        Pages must come as seq 0, 1, 2...: a gap, repeat or reversal raises
        ProtocolError (the socket is tainted). A stream without any seq (an older
        server) is taken as it comes; a page without seq after pages with one is an
        error. Each page taken is credited (CREDIT [id, 1]) when the next is asked for;
        giving up closes the stream (CREDIT [id, 0]).
        """
        expected = 0
        seen_seq = False
        done = False
        try:
            while True:
                try:
                    seen_seq = self._check_seq(head, expected, seen_seq)
                    expected += 1
                    page_status = head.get("status")
                    if page_status == protocol.Status.FAILURE:
                        done = True
                        yield self._failure(cmd, rid, head), True
                        return
                    if page_status not in (1, -2):
                        raise errors.ProtocolError(f"unknown status {page_status!r}")
                    with gc_paused():
                        page = protocol.decode_content(content, bool(head.get("compression")))
                    if not isinstance(page, list):
                        raise errors.ProtocolError("a streamed page is not an array")
                except errors.ProtocolError as exc:
                    raise self._malformed(cmd, exc) from None
                more = head.get(protocol.MORE)
                if not more:
                    done = True
                yield Reply(page_status, None, head.get("err_msg"), rid, page), not more
                if not more:
                    return
                if seen_seq:
                    self._send_credit(rid, 1)
                try:
                    head, content = self._receive(cmd, rid, deadline(), timeout)
                except zmq.ZMQError as exc:
                    self.is_tainted = True
                    raise errors.from_zmq(exc, f"{cmd} to {self.endpoint}",
                                          request_sent=True) from exc
                finally:
                    self.last_used = time.monotonic()
        finally:
            if not done and (seen_seq or head.get(protocol.SEQ) is not None) \
                    and not self.socket.closed:
                self._send_credit(rid, 0)

    def _receive(self, cmd: str, rid: int, deadline: float, timeout: float) -> Tuple[dict, bytes]:
        sock = self.socket
        watched = False
        while True:
            if not watched:
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                ready = self._reply_poller.poll(min(_FAST_POLL_MS, max(remaining_ms, 0)))
                if not ready:
                    watched = True
                    continue
            else:
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                if remaining_ms <= 0:
                    self._timed_out()
                    raise errors.ElevatorTimeout(
                        f"{cmd}: connected to {self.endpoint} and sent the request, but no "
                        f"reply came within {timeout:g}s")
                events = dict(self._poller.poll(remaining_ms))
                if self._monitor in events and self._drain_monitor() and sock not in events:
                    # The request may still sit in the socket's queue, to be delivered
                    # after a reconnect, long after this call gave up: replace the socket.
                    self.is_tainted = True
                    raise errors.ConnectionError(
                        f"{cmd}: connection to {self.endpoint} lost while waiting for the reply")
                if sock not in events:
                    continue
            frames = sock.recv_multipart(copy=True)
            try:
                if len(frames) != 2:
                    raise errors.ProtocolError(f"{len(frames)} frames, expected 2")
                head = protocol.decode_header(frames[0])
            except errors.ProtocolError as exc:
                raise self._malformed(cmd, exc) from None
            hid = head.get("id")
            if hid is None:
                if self.ids_echoed:
                    # A server that echoes ids sent one without: the refusal of a request
                    # it could not read (an older server), never this request's answer.
                    self.stale_replies += 1
                    continue
                # The original server: no ids, so one request in flight and no way to
                # recognise a late reply (see _timed_out).
                if self.ids_echoed is None:
                    self.ids_echoed = False
            elif hid != rid:
                self.ids_echoed = True
                self.stale_replies += 1  # the late reply of a request that timed out
                continue
            else:
                self.ids_echoed = True
            return head, frames[1]

    def _timed_out(self) -> None:
        # With echoed ids a late reply will be recognised and dropped: keep the socket.
        # Without them it would be read as the next request's answer: replace it.
        if not self.ids_echoed:
            self.is_tainted = True

    def ping(self, timeout: float) -> bool:
        """True when the server answers PING within ``timeout``; taints the socket otherwise."""
        try:
            reply = self.request(protocol.PING, [], None, timeout=timeout)
        except errors.ElevatorError:
            self.is_tainted = True
            return False
        return reply.status == protocol.Status.SUCCESS
