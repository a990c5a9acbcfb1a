"""Why no connection to an endpoint was made: refused, a host that does not resolve, a
port that accepts connections but never answers ZeroMQ, no answer at all.

ZeroMQ hides the cause (it reconnects in the background and its monitor reports each
attempt; subscribed for good, those events fill an idle socket's monitor during an
outage and then block the context's I/O thread). So the cause is found with one plain
socket, in a thread, started only when a wait for a connection is about to give up
(:meth:`Connection.request`): a working connection never probes.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import threading

__all__ = ["Probe", "PROBE_SECONDS"]

#: how long before a wait for a connection gives up the probe starts (at most half the
#: wait): a loopback or LAN answer comes within it, and the call's deadline is kept.
PROBE_SECONDS = 0.2


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Probe:
    """One check of ``endpoint`` (``tcp://host:port`` or ``ipc://path``), in a daemon
    thread, within ``budget`` seconds; :meth:`cause` says what it found."""

    def __init__(self, endpoint: str, budget: float) -> None:
        self.endpoint = endpoint
        self.budget = max(budget, 0.01)
        self._cause = ""
        self._thread = threading.Thread(target=self._run, name="pyelevator-probe", daemon=True)
        self._thread.start()

    def cause(self, grace: float = 0.05) -> str:
        """What the probe found, waiting up to ``grace`` more seconds for it."""
        self._thread.join(grace)
        return self._cause or "the check of why did not finish in time"

    def _run(self) -> None:
        try:
            self._cause = self._check()
        except Exception as exc:  # pragma: no cover - a probe must never raise
            self._cause = f"the check of why failed ({exc})"

    def _check(self) -> str:
        scheme, _, address = self.endpoint.partition("://")
        if scheme == "ipc":
            return self._connect(socket.AF_UNIX, address, "socket path")
        if scheme != "tcp":
            return f"no connection ({scheme} is not checked)"
        host, _, port_text = address.rpartition(":")
        host = host.strip("[]")
        port = int(port_text) if port_text.isdigit() else -1
        if not 0 < port < 65536:
            return f"the port {port_text!r} is not a number from 1 to 65535"
        if _is_ip(host):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            return self._connect(family, (host, port), "port")
        resolved: list = []
        failed: list = []

        def resolve() -> None:
            try:
                resolved.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
            except (OSError, UnicodeError) as exc:
                failed.append(exc)

        # in a thread of its own: a resolver may take far longer than the budget
        resolver = threading.Thread(target=resolve, name="pyelevator-resolve", daemon=True)
        resolver.start()
        resolver.join(self.budget / 2)
        if failed:
            exc = failed[0]
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return f"the host {host!r} does not resolve ({reason})"
        if not resolved:
            return (f"the host {host!r} did not resolve within {self.budget / 2:g}s "
                    "(is a DNS server reachable?)")
        family, _, _, _, sockaddr = resolved[0]
        return self._connect(family, sockaddr, "port")

    def _connect(self, family: int, address: object, what: str) -> str:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.budget / 2)
            code = sock.connect_ex(address)  # type: ignore[arg-type]
        except socket.timeout:
            code = errno.ETIMEDOUT
        except OSError as exc:
            code = exc.errno or errno.EIO
        finally:
            sock.close()
        if code == 0:
            return (f"the {what} accepts connections, but no ZeroMQ handshake completed "
                    "(is an Elevator server listening there?)")
        if code == errno.ECONNREFUSED:
            return f"connection refused (nothing listens on that {what}: is the server running?)"
        if code == errno.ENOENT:
            return "no socket file at that path (is the server running?)"
        if code in (errno.ETIMEDOUT, errno.EAGAIN, errno.EINPROGRESS):
            return ("the connection attempt got no answer (the host is down or unreachable, "
                    "or a firewall drops it)")
        return f"connecting failed: {os.strerror(code).lower()}"
