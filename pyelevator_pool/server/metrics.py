"""Prometheus metrics (``--metrics-port``): the server's figures in the text format, over HTTP.

A collector on a registry of its own runs at scrape time on the HTTP server's thread.
What only the loop may read (its :class:`Stats`, queues and connection counts) it asks
the loop for through a :class:`FiguresHandoff`: the loop copies them at its next turn
(:class:`LoopFigures`) and goes on, never waiting for the scrape; the scrape waits for
that copy, so it sees every request answered before it was asked. Database sizes are
read from the disk by the scrape itself. ``prometheus_client`` (the ``metrics`` extra) is
imported only when a metrics server is made, so the server runs without it otherwise.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from socketserver import ThreadingMixIn
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, List, NamedTuple, Optional,
                    Sequence)
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ..errors import ErrorCode
from .stats import CommandTotals, cumulative_buckets

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["LoopFigures", "FiguresHandoff", "DatabaseFigures", "ServerCollector",
           "MetricsServer",
           "MetricsUnavailable", "load_prometheus_client", "status_label"]

log = logging.getLogger("elevator.metrics")

INSTALL_HINT = "pip install 'pyelevator_pool[metrics]'"


class MetricsUnavailable(RuntimeError):
    """prometheus_client is not installed (the ``metrics`` extra)."""


def load_prometheus_client() -> "ModuleType":
    """The prometheus_client module, or MetricsUnavailable saying how to install it."""
    try:
        import prometheus_client
        import prometheus_client.core  # noqa: F401 - the metric families
    except ImportError as exc:
        raise MetricsUnavailable(
            f"--metrics-port needs the prometheus_client package ({exc}): {INSTALL_HINT}"
        ) from None
    return prometheus_client


class LoopFigures(NamedTuple):
    """What only the loop may read, copied by it for a scrape."""

    commands: Dict[str, CommandTotals]  # Stats.all_time()
    bytes_in: int = 0
    bytes_out: int = 0
    connections: int = 0        # TCP/IPC connections open now
    connections_total: int = 0  # connections accepted since start
    waiting: int = 0            # heavy requests queued for a worker
    running: int = 0            # requests on a worker now
    streams: int = 0            # streamed replies open
    backlogged_peers: int = 0   # clients whose replies wait for their queue to drain


class FiguresHandoff:
    """A scrape's request for the loop's figures, and the loop's answer.

    The loop calls :meth:`wanted` every turn (an attribute read) and, when True,
    :meth:`publish`; :meth:`fetch` (the scrape) waits for a publication newer than its
    request. The loop never waits on the scrape: publish only notifies."""

    def __init__(self, initial: LoopFigures) -> None:
        if not isinstance(initial, LoopFigures):
            raise TypeError(f"initial must be LoopFigures, not {type(initial).__name__}")
        self._cond = threading.Condition()
        self._figures = initial
        self._generation = 0
        self._wanted = False

    def wanted(self) -> bool:
        return self._wanted

    def publish(self, figures: LoopFigures) -> None:
        with self._cond:
            self._figures = figures
            self._generation += 1
            self._wanted = False
            self._cond.notify_all()

    def fetch(self, timeout: float) -> LoopFigures:
        """Figures published after this call, or the last ones after ``timeout`` seconds
        (a loop stuck in a long request)."""
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        with self._cond:
            asked = self._generation
            self._wanted = True
            if not self._cond.wait_for(lambda: self._generation != asked, timeout):
                log.warning("metrics: the loop did not answer in %ss; serving its last "
                            "figures", timeout)
            return self._figures


class DatabaseFigures(NamedTuple):
    name: str
    path: str
    mounted: bool


#: LoopFigures field -> (metric name, HELP); connections_total is the one counter
_LOOP_METRICS = {
    "connections": ("elevator_connections", "Client connections open now."),
    "waiting": ("elevator_heavy_requests_waiting",
                "Heavy requests (RANGE, big MGET/BATCH/SLICE, admin) queued for a worker."),
    "running": ("elevator_heavy_requests_running", "Requests being run by a worker now."),
    "streams": ("elevator_open_streams", "Streamed RANGE/SLICE replies open."),
    "backlogged_peers": ("elevator_backlogged_clients",
                         "Clients whose replies are held until their queue drains."),
}


def status_label(error: int) -> str:
    """The ``status`` label of a failure: its ErrorCode's name, or the number if unknown."""
    try:
        return ErrorCode(error).name
    except ValueError:
        return str(error)


def disk_size(path: str) -> Optional[int]:
    """Bytes of the regular files in the directory ``path`` (a LevelDB keeps no
    subdirectories), None when it cannot be read."""
    try:
        with os.scandir(path) as entries:
            return sum(e.stat(follow_symlinks=False).st_size for e in entries
                       if e.is_file(follow_symlinks=False))
    except OSError:
        return None


class ServerCollector:
    """A prometheus_client collector of one server's figures (read on the scraping thread)."""

    def __init__(self, *, version: str, uptime: Callable[[], float],
                 loop: Callable[[], LoopFigures],
                 databases: Callable[[], Sequence[DatabaseFigures]]) -> None:
        if not isinstance(version, str):
            raise TypeError(f"version must be a str, not {type(version).__name__}")
        for name, value in (("uptime", uptime), ("loop", loop), ("databases", databases)):
            if not callable(value):
                raise TypeError(f"{name} must be callable, not {type(value).__name__}")
        self._core = load_prometheus_client().core
        self._version = version
        self._uptime = uptime
        self._loop = loop
        self._databases = databases

    def describe(self) -> List[Any]:
        return []  # the names depend on what was seen: no registration-time checks

    def collect(self) -> Iterator[Any]:
        core = self._core
        loop = self._loop()
        requests = core.CounterMetricFamily(
            "elevator_requests", "Requests answered, by command and status (ok or the "
            "error code's name), since start.", labels=["command", "status"])
        durations = core.HistogramMetricFamily(
            "elevator_request_duration_seconds", "Seconds from a request's receipt to its "
            "reply, all time since start (INFO's quantiles cover the last minutes).",
            labels=["command"])
        for cmd, totals in sorted(loop.commands.items()):
            failed = sum(totals.failures.values())
            requests.add_metric([cmd, "ok"], totals.requests - failed)
            for code, n in sorted(totals.failures.items()):
                requests.add_metric([cmd, status_label(code)], n)
            buckets = [(_le(bound), n) for bound, n in cumulative_buckets(totals.counts)]
            durations.add_metric([cmd], buckets, totals.seconds)
        yield requests
        yield durations
        yield core.CounterMetricFamily("elevator_received_bytes",
                                       "Bytes of the requests answered.",
                                       value=loop.bytes_in)
        yield core.CounterMetricFamily("elevator_sent_bytes",
                                       "Bytes of the replies sent.", value=loop.bytes_out)
        # Not elevator_connections_total: in OpenMetrics that would be the gauge's family.
        yield core.CounterMetricFamily("elevator_connections_accepted",
                                       "Client connections accepted since start.",
                                       value=loop.connections_total)
        for field, (name, text) in _LOOP_METRICS.items():
            yield core.GaugeMetricFamily(name, text, value=getattr(loop, field))
        yield core.GaugeMetricFamily("elevator_uptime_seconds", "Seconds since the server "
                                     "started.", value=self._uptime())
        info = core.GaugeMetricFamily("elevator_build_info", "The server's version (always 1).",
                                      labels=["version"])
        info.add_metric([self._version], 1)
        yield info
        yield from self._database_metrics(core)

    def _database_metrics(self, core: Any) -> Iterator[Any]:
        size = core.GaugeMetricFamily("elevator_db_size_bytes", "Bytes of a database's files "
                                      "on disk.", labels=["db"])
        mounted = core.GaugeMetricFamily("elevator_db_mounted", "1 when a database is open "
                                         "(mounted), 0 when closed.", labels=["db"])
        for db in self._databases():
            mounted.add_metric([db.name], 1 if db.mounted else 0)
            on_disk = disk_size(db.path)
            if on_disk is not None:
                size.add_metric([db.name], on_disk)
        yield size
        yield mounted


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class _QuietHandler(WSGIRequestHandler):
    """Access lines go to the debug log, not stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics %s: " + format, self.client_address[0], *args)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape never holds the process up at exit


class _ThreadingWSGIServer6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """An HTTP server of ``collector``'s metrics (any path) on ``bind``:``port``, on a thread
    of its own, until :meth:`close`."""

    def __init__(self, collector: ServerCollector, bind: str, port: int) -> None:
        if not isinstance(collector, ServerCollector):
            raise TypeError(f"collector must be a ServerCollector, not "
                            f"{type(collector).__name__}")
        if not isinstance(bind, str) or not bind:
            raise ValueError(f"bind must be a non-empty address, got {bind!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65535:
            raise ValueError(f"port must be an int in 1..65535, got {port!r}")
        prometheus_client = load_prometheus_client()
        registry = prometheus_client.CollectorRegistry(auto_describe=False)
        registry.register(collector)
        app = prometheus_client.make_wsgi_app(registry)
        server_class = _ThreadingWSGIServer6 if ":" in bind else _ThreadingWSGIServer
        try:
            self._httpd = make_server(bind, port, app, server_class=server_class,
                                      handler_class=_QuietHandler)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {bind}:{port}: {exc.strerror or exc}") \
                from None
        host = f"[{bind}]" if ":" in bind else bind
        self.url = f"http://{host}:{self._httpd.server_address[1]}/metrics"
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.5},
                                        name="elevator-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and free the port (waits for the serving thread)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
