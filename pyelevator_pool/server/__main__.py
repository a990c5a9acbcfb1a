"""``elevator-server``: the command line of the Elevator-compatible server."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, NoReturn, Optional

from .. import protocol

__all__ = ["main", "build_parser"]

DEFAULT_DATA_DIR = "./elevator-data"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: easy to read in a supervisor's log.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="elevator-server",
                description="Elevator-compatible key-value server: LevelDB behind a ZeroMQ "
                            "ROUTER socket (msgpack protocol).")
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
    p.add_argument("--max-message-size", type=_positive_int,
                   default=protocol.DEFAULT_MAX_MESSAGE_SIZE, metavar="BYTES",
                   help="largest request accepted (default: %(default)s)")
    p.add_argument("--sync", action="store_true",
                   help="fsync every write (survives power loss, not only a crash of the server)")
    p.add_argument("--workers", type=_positive_int, default=2, metavar="N",
                   help="threads for heavy requests (RANGE, big MGET/BATCH/SLICE, admin); "
                        "0 answers everything on the main loop (default: %(default)s)")
    p.add_argument("--unmount-after", type=_seconds, default=600.0, metavar="SECONDS",
                   help="close databases idle this long (default always stays mounted); "
                        "0 never (default: %(default)s)")
    p.add_argument("--ready-file", metavar="PATH",
                   help="once listening, write the bound endpoint (e.g. tcp://127.0.0.1:4141) "
                        "to PATH")
    p.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                   type=str.upper, help="(default: %(default)s)")
    return p


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


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    prog = "elevator-server"
    problem = _check_data_dir(args.data_dir)
    if problem is None:
        for root in args.allow_paths:
            if not os.path.isabs(root):
                problem = f"--allow-path needs an absolute directory, not {root!r}"
    if problem is not None:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        return 2

    from .core import Config, Server  # plyvel is imported only once the flags are good

    config = Config(data_dir=args.data_dir, bind=args.bind, port=args.port,
                    transport=args.transport, socket_path=args.socket_path,
                    allow_paths=args.allow_paths, max_message_size=args.max_message_size,
                    sync=args.sync, workers=args.workers, unmount_after=args.unmount_after,
                    ready_file=args.ready_file)
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
