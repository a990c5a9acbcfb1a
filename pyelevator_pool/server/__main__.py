"""``elevator-server``: the command line of the Elevator-compatible server."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, List, Optional

from .. import __version__, protocol
from ..args import integer, number
from ..argparsing import Parser, arg_type
from .batches import DEFAULT_BATCH_IDLE
from .handlers import DEFAULT_MAX_ITEMS, DEFAULT_MAX_KEYS, DEFAULT_MAX_REPLY_SIZE, MIN_LIMIT

__all__ = ["main", "build_parser"]

DEFAULT_DATA_DIR = "./elevator-data"


def _count(text: str) -> int:
    """An integer, its digits optionally grouped: ``1_000_000``, ``1,000,000``."""
    return int(text.replace("_", "").replace(",", ""))


_port = arg_type("port", integer, maximum=65535)
#: clients check only frames above this floor against LIMITS: a lower limit would let
#: smaller frames through to be dropped by libzmq, unanswered
_message_size = arg_type("max_message_size", integer, convert=_count,
                         minimum=protocol.MIN_MAX_MESSAGE_SIZE)


def _limit(name: str) -> Callable[[str], int]:
    return arg_type(name, integer, convert=_count, minimum=MIN_LIMIT)


def _seconds(name: str) -> Callable[[str], float]:
    """A finite number of seconds >= 0."""
    return arg_type(name, number, convert=float, expected="a number of seconds", inclusive=True)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="elevator-server",
                description="Elevator-compatible key-value server: LevelDB behind a ZeroMQ "
                            "ROUTER socket (msgpack protocol).",
                epilog="'elevator-server keygen DIR [--name NAME]' writes a CURVE key pair "
                       "(NAME.key, NAME.key_secret) for --curve-secret-key and clients.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--bind", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, loopback only)")
    p.add_argument("--port", type=_port, default=4141,
                   help="TCP port; 0 picks a free one (default: %(default)s)")
    p.add_argument("--transport", choices=("tcp", "ipc"), default="tcp",
                   help="tcp (default) or ipc (a unix socket, see --socket)")
    p.add_argument("--socket", dest="socket_path", metavar="PATH",
                   help="socket file for --transport ipc (default: DATA_DIR/elevator.sock)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, metavar="DIR",
                   help="where the database registry (store.json) and the databases (dbs/) "
                        "live; created if missing (default: %(default)s)")
    p.add_argument("--allow-path", dest="allow_paths", action="append", default=[],
                   metavar="DIR",
                   help="allow DBCREATE of databases at absolute paths under DIR (repeatable); "
                        "without it only plain names inside the data dir are accepted")
    p.add_argument("--max-message-size", type=_message_size,
                   default=protocol.DEFAULT_MAX_MESSAGE_SIZE, metavar="BYTES",
                   help="largest request accepted, at least "
                        f"{protocol.MIN_MAX_MESSAGE_SIZE} (default: %(default)s)")
    p.add_argument("--max-keys", type=_limit("max_keys"), default=DEFAULT_MAX_KEYS,
                   metavar="N",
                   help="most keys of one MGET and operations of one BATCH "
                        "(default: %(default)s)")
    p.add_argument("--max-items", type=_limit("max_items"), default=DEFAULT_MAX_ITEMS,
                   metavar="N",
                   help="most items of one RANGE/SLICE reply (default: %(default)s)")
    p.add_argument("--max-reply-size", type=_limit("max_reply_size"),
                   default=DEFAULT_MAX_REPLY_SIZE, metavar="BYTES",
                   help="most bytes of keys and values in one RANGE/SLICE/MGET reply "
                        "(default: %(default)s)")
    p.add_argument("--curve-secret-key", metavar="FILE",
                   help="turn on CURVE encryption and authentication with this server "
                        "secret certificate (NAME.key_secret from 'elevator-server keygen'); "
                        "needs --curve-authorized-keys")
    p.add_argument("--curve-authorized-keys", metavar="DIR",
                   help="directory of the public certificates (*.key) of the clients allowed "
                        "in; re-read on SIGHUP. '*' accepts any client that knows the "
                        "server's public key (encryption only)")
    p.add_argument("--sync", action="store_true",
                   help="fsync every write (survives power loss, not only a crash of the server)")
    p.add_argument("--workers", type=arg_type("workers", integer), default=2, metavar="N",
                   help="threads for heavy requests (RANGE, big MGET/BATCH/SLICE, admin); "
                        "0 answers everything on the main loop (default: %(default)s)")
    p.add_argument("--unmount-after", type=_seconds("unmount_after"), default=600.0,
                   metavar="SECONDS",
                   help="close databases idle this long (default always stays mounted); "
                        "0 never (default: %(default)s)")
    p.add_argument("--batch-idle-timeout", dest="batch_idle",
                   type=arg_type("batch_idle_timeout", number, convert=float,
                                 expected="a number of seconds"),
                   default=DEFAULT_BATCH_IDLE, metavar="SECONDS",
                   help="drop, unwritten, a streamed WriteBatch whose client sent no chunk "
                        "for this long (default: %(default)s)")
    p.add_argument("--heartbeat-interval", type=_seconds("heartbeat_interval"), default=5.0,
                   metavar="SECONDS",
                   help="ZMTP heartbeat to every client this often; a client silent for 3 "
                        "intervals is dropped and its file descriptor freed; 0 off "
                        "(default: %(default)s)")
    p.add_argument("--ready-file", metavar="PATH",
                   help="once listening, write the bound endpoint (e.g. tcp://127.0.0.1:4141) "
                        "to PATH")
    p.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                   type=str.upper, help="(default: %(default)s)")
    p.add_argument("--slow-log-ms", type=arg_type("slow_log_ms", number, convert=float,
                                                  expected="a number of milliseconds",
                                                  inclusive=True),
                   default=100.0, metavar="MS",
                   help="log a WARNING line for every request that takes at least MS "
                        "milliseconds from receipt to reply (fractions allowed); 0 never "
                        "(default: %(default)s)")
    p.add_argument("--metrics-port", type=arg_type("metrics_port", integer, maximum=65535),
                   default=0, metavar="PORT",
                   help="serve Prometheus metrics over HTTP on PORT (any path, e.g. "
                        "/metrics; needs the 'metrics' extra: prometheus_client); 0 not "
                        "served (default: %(default)s)")
    p.add_argument("--metrics-bind", metavar="ADDR",
                   help="address the metrics listen on (default: --bind's)")
    return p


def _check_metrics(args: argparse.Namespace) -> Optional[str]:
    """Why the metrics flags cannot work, or None when they can (or are not given)."""
    if not args.metrics_port:
        if args.metrics_bind is not None:
            return "--metrics-bind needs --metrics-port PORT"
        return None
    if args.metrics_bind is not None and not args.metrics_bind.strip():
        return "--metrics-bind needs an address, not an empty string"
    from .metrics import MetricsUnavailable, load_prometheus_client
    try:
        load_prometheus_client()
    except MetricsUnavailable as exc:
        return str(exc)
    return None


def _check_data_dir(path: str) -> Optional[str]:
    """Why ``path`` cannot be the data dir, or None when it can."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        return f"cannot create the data dir {path!r}: {exc.strerror or exc}"
    if not os.path.isdir(path):
        return f"the data dir {path!r} is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"the data dir {path!r} is not writable"
    return None


def build_keygen_parser() -> argparse.ArgumentParser:
    p = Parser(prog="elevator-server keygen",
                description="Write a CURVE key pair as DIR/NAME.key (the public key: give it "
                            "to the other side) and DIR/NAME.key_secret (keep it secret; "
                            "mode 0600). Never overwrites a key.")
    p.add_argument("directory", metavar="DIR", help="where to write (created if missing)")
    p.add_argument("--name", default="server",
                   help="base name of the files (default: %(default)s); e.g. 'server' for "
                        "the server, one name per client")
    return p


def keygen(argv: List[str]) -> int:
    """``elevator-server keygen DIR [--name NAME]``; returns the exit code."""
    from ..security import generate_certificates

    args = build_keygen_parser().parse_args(argv)
    try:
        public_file, secret_file = generate_certificates(args.directory, args.name)
    except (OSError, ValueError) as exc:
        print(f"elevator-server keygen: error: {exc}", file=sys.stderr)
        return 2
    print(f"public key: {public_file}\nsecret key: {secret_file}")
    return 0


def _check_curve(args: argparse.Namespace) -> Optional[str]:
    """Why the CURVE flags cannot work, or None when they can (or are not given)."""
    if args.curve_secret_key is None and args.curve_authorized_keys is None:
        return None
    if args.curve_secret_key is None:
        return "--curve-authorized-keys needs --curve-secret-key FILE (the server's key pair)"
    if args.curve_authorized_keys is None:
        return ("--curve-secret-key needs --curve-authorized-keys DIR (the clients' public "
                "keys), or '*' to let in any client that knows the server's public key")
    from ..security import load_key_pair
    try:
        load_key_pair(args.curve_secret_key)
    except (OSError, ValueError) as exc:
        return f"--curve-secret-key: {exc}"
    if args.curve_authorized_keys != "*" and not os.path.isdir(args.curve_authorized_keys):
        return f"--curve-authorized-keys: {args.curve_authorized_keys!r} is not a directory"
    return None


def main(argv: Optional[List[str]] = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "keygen":
        return keygen(list(argv[1:]))
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    prog = "elevator-server"
    problem = _check_data_dir(args.data_dir)
    if problem is None:
        for root in args.allow_paths:
            if not os.path.isabs(root):
                problem = f"--allow-path needs an absolute directory, not {root!r}"
    if problem is None:
        problem = _check_curve(args)
    if problem is None:
        problem = _check_metrics(args)
    if problem is not None:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        return 2

    from .core import Config, Server  # plyvel is imported only once the flags are good

    config = Config(data_dir=args.data_dir, bind=args.bind, port=args.port,
                    transport=args.transport, socket_path=args.socket_path,
                    allow_paths=args.allow_paths, max_message_size=args.max_message_size,
                    sync=args.sync, workers=args.workers, unmount_after=args.unmount_after,
                    ready_file=args.ready_file, max_keys=args.max_keys, max_items=args.max_items,
                    max_reply_size=args.max_reply_size,
                    curve_secret_key=args.curve_secret_key,
                    curve_authorized_keys=args.curve_authorized_keys,
                    heartbeat_interval=args.heartbeat_interval, batch_idle=args.batch_idle,
                    metrics_port=args.metrics_port, metrics_bind=args.metrics_bind)
    config.slow_log_ms = args.slow_log_ms
    server = Server(config)
    server.install_signal_handlers()  # a SIGTERM during startup stops it as cleanly
    try:
        server.start()
    except Exception as exc:  # unusable data dir, corrupt registry, port taken, LOCK held...
        print(f"{prog}: error: {type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 2
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
