"""``elevator``: a command-line client of an Elevator server.

    elevator [--endpoint HOST:PORT] [--db NAME] [--timeout SECONDS] COMMAND [ARGS]

Commands: ``ping``, ``get``, ``put``, ``delete``, ``mget``, ``range``, ``listdb``,
``createdb``, ``dropdb``, ``load``, ``dump``, ``stats`` (``elevator COMMAND --help``).

Files are bytes: keys and values are the UTF-8 text of the file, and bytes that are
not UTF-8 pass through unchanged (Python's ``surrogateescape``), so whatever ``load``
reads, ``dump`` writes back byte for byte. Formats (from the file's extension, or
``--format``):

* ``jsonl``: one ``{"key": "...", "value": "..."}`` object per line (``.jsonl``,
  ``.json``, ``.ndjson``); other members are ignored;
* ``csv``: two columns, RFC 4180 quoting, ``\\n`` line ends (``.csv``);
* ``tsv``: the same with tabs (``.tsv``, ``.tab``).

Blank lines are skipped. Errors are one line on stderr and a non-zero exit code: 1 for
a failure (and a bad input line), 2 for a bad command line, 130 when interrupted.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
import time
from typing import (IO, Any, Callable, Dict, Iterable, Iterator, List, NoReturn, Optional, Tuple,
                    TypedDict)

from . import errors
from .bulk import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, BulkLoadError, dump, load
from .client import Elevator
from .security import CurveKeys

__all__ = ["main", "build_parser", "read_pairs", "write_pairs", "BadLine", "FORMATS"]

PROG = "elevator"
FORMATS = ("jsonl", "csv", "tsv")
_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
               ".tsv": "tsv", ".tab": "tsv"}


class _TextEncoding(TypedDict):
    encoding: str
    errors: str


_ENCODING: _TextEncoding = {"encoding": "utf-8", "errors": "surrogateescape"}
DEFAULT_ENDPOINT = "127.0.0.1:4141"


class CliError(Exception):
    """A failure reported as one line on stderr with exit code ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class BadLine(ValueError):
    """An input line that is not a (key, value) record of its format."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source} line {line}: {message}")
        self.source = source
        self.line = line


# ----------------------------------------------------------------------- formats

def format_of(path: str, given: Optional[str], default: Optional[str] = None) -> str:
    """The format named by ``given``, else by ``path``'s extension, else ``default``."""
    if given is not None:
        return given
    ext = os.path.splitext(path)[1].lower() if path != "-" else ""
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    if default is not None:
        return default
    raise CliError(f"cannot tell the format of {path!r} from its extension: use --format "
                   f"({', '.join(FORMATS)})", 2)


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _s(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def read_pairs(stream: IO[bytes], fmt: str, source: str = "-",
               on_bad: Optional[Callable[[BadLine], None]] = None) -> Iterator[Tuple[bytes, bytes]]:
    """The ``(key, value)`` byte pairs of a binary stream in format ``fmt``, lazily.

    A bad line raises :class:`BadLine` (with its 1-based line number), or, with
    ``on_bad``, is passed to it and skipped.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    text = io.TextIOWrapper(stream, newline="", **_ENCODING)
    records = _read_jsonl(text, source) if fmt == "jsonl" \
        else _read_csv(text, source, "," if fmt == "csv" else "\t")
    for item in records:
        if isinstance(item, BadLine):
            if on_bad is None:
                raise item
            on_bad(item)
        else:
            yield item


def _read_jsonl(text: IO[str], source: str) -> Iterator[Any]:
    loads = json.loads
    for lineno, line in enumerate(text, 1):
        if not line.strip():
            continue
        try:
            obj = loads(line)
        except ValueError as exc:
            detail = f"{exc.msg} at column {exc.colno}" \
                if isinstance(exc, json.JSONDecodeError) else str(exc)
            yield BadLine(source, lineno, f"invalid JSON: {detail}")
            continue
        if not isinstance(obj, dict) or "key" not in obj or "value" not in obj:
            yield BadLine(source, lineno, 'expected an object {"key": ..., "value": ...}')
            continue
        key, value = obj["key"], obj["value"]
        if not isinstance(key, str) or not isinstance(value, str):
            yield BadLine(source, lineno, "key and value must be JSON strings")
            continue
        try:
            yield _b(key), _b(value)
        except UnicodeEncodeError:
            yield BadLine(source, lineno, "a string holds a lone surrogate escape (not UTF-8)")


def _read_csv(text: IO[str], source: str, delimiter: str) -> Iterator[Any]:
    reader = csv.reader(text, delimiter=delimiter, strict=True)
    line = 0
    while True:
        start = line + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # The reader cannot go on after a malformed quote: report and stop.
            yield BadLine(source, reader.line_num or start, f"malformed {_fmt_name(delimiter)}: {exc}")
            return
        line = reader.line_num
        if not row:
            continue
        if len(row) != 2:
            yield BadLine(source, start, f"expected 2 columns (key, value), found {len(row)}")
            continue
        yield _b(row[0]), _b(row[1])


def _fmt_name(delimiter: str) -> str:
    return "CSV" if delimiter == "," else "TSV"


class _LineFeedRows:
    """csv's writer quotes fields with ``\\r`` only when ``\\r`` is in its line
    terminator, so rows are written with ``\\r\\n`` and ended here with ``\\n``."""

    def __init__(self, out: IO[str]) -> None:
        self._write = out.write

    def write(self, row: str) -> Any:
        return self._write(row[:-2] + "\n")


def write_pairs(out: IO[str], fmt: str) -> Callable[[bytes, bytes], None]:
    """A function writing one ``(key, value)`` pair to text stream ``out`` in ``fmt``
    (``out`` must use UTF-8 with ``errors="surrogateescape"`` for arbitrary bytes)."""
    if fmt == "jsonl":
        encode = json.JSONEncoder(ensure_ascii=False).encode
        write = out.write

        def jsonl(key: bytes, value: bytes) -> None:
            write(f'{{"key": {encode(_s(key))}, "value": {encode(_s(value))}}}\n')
        return jsonl
    if fmt in ("csv", "tsv"):
        writer = csv.writer(_LineFeedRows(out), delimiter="," if fmt == "csv" else "\t",
                            lineterminator="\r\n")
        writerow = writer.writerow

        def row(key: bytes, value: bytes) -> None:
            writerow((_s(key), _s(value)))
        return row
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")


# ---------------------------------------------------------------------- progress

def _progress_bar(total: Optional[int], desc: str) -> Any:
    """A tqdm bar on stderr when stderr is a terminal and tqdm is installed, else None."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # the 'cli' extra is not installed: no bar, same behaviour
        return None
    return tqdm(total=total, desc=desc, unit=" pairs", unit_scale=True, file=sys.stderr,
                dynamic_ncols=True, leave=False)


def _note(message: str) -> None:
    """A summary line, only for a person watching (stderr is a terminal)."""
    if sys.stderr.isatty():
        print(message, file=sys.stderr)


# ---------------------------------------------------------------------- commands

def _client(args: argparse.Namespace, db: Optional[str] = None) -> Elevator:
    curve = None
    if args.curve_server_key or args.curve_client_key:
        if not (args.curve_server_key and args.curve_client_key):
            raise CliError("--curve-server-key and --curve-client-key go together", 2)
        curve = CurveKeys.from_files(args.curve_server_key, args.curve_client_key)
    return Elevator(db if db is not None else args.db, endpoint=args.endpoint,
                    timeout=args.timeout, curve=curve)


class _StdoutText:
    """stdout as text in the files' encoding; flushed and detached (never closed) on exit."""

    def __enter__(self) -> IO[str]:
        sys.stdout.flush()
        self._out = io.TextIOWrapper(sys.stdout.buffer, newline="", **_ENCODING)
        return self._out

    def __exit__(self, *exc: Any) -> None:
        try:
            self._out.flush()
        finally:
            self._out.detach()


def cmd_ping(args: argparse.Namespace) -> int:
    with _client(args, "default") as e:
        t0 = time.perf_counter()
        if not e.Ping():
            raise CliError(f"{e.endpoint} did not answer PONG")
        ms = (time.perf_counter() - t0) * 1000
    print(f"PONG from {e.endpoint} in {ms:.2f} ms")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with _client(args) as e:
        try:
            value = e.Get(_b(args.key))
        except errors.ElevatorKeyError:
            raise CliError(f"key {args.key!r} not found in {e.db_name!r}") from None
    sys.stdout.buffer.write(value + b"\n")
    return 0


def cmd_put(args: argparse.Namespace) -> int:
    with _client(args) as e:
        e.Put(_b(args.key), _b(args.value))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as e:
        e.Delete(_b(args.key))
    return 0


def cmd_mget(args: argparse.Namespace) -> int:
    keys = [_b(k) for k in args.keys]
    with _client(args) as e:
        values = e.MGet(keys)
    missing = []
    with _StdoutText() as out:
        write = write_pairs(out, args.format)
        for key, value in zip(keys, values):
            if value is None:
                missing.append(_s(key))
            else:
                write(key, value)
    if missing:
        shown = ", ".join(repr(k) for k in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CliError(f"{len(missing)} of {len(keys)} keys not found: {shown}")
    return 0


def _range_args(args: argparse.Namespace
                ) -> Tuple[Optional[bytes], Optional[bytes], Optional[bytes]]:
    """``(start, stop, prefix)``, the positional arguments of :func:`dump`."""
    return (None if args.start is None else _b(args.start),
            None if args.stop is None else _b(args.stop),
            None if args.prefix is None else _b(args.prefix))


def cmd_range(args: argparse.Namespace) -> int:
    with _client(args) as e, _StdoutText() as out:
        items: Iterable[Tuple[bytes, bytes]] = dump(e, *_range_args(args))
        write = write_pairs(out, args.format)
        for n, (key, value) in enumerate(items):
            if args.limit is not None and n >= args.limit:
                break
            write(key, value)
    return 0


def cmd_listdb(args: argparse.Namespace) -> int:
    with _client(args, "default") as e:
        for name in sorted(e.listdb()):
            print(name)
    return 0


def _option_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    try:
        return int(text)
    except ValueError:
        return text


def cmd_createdb(args: argparse.Namespace) -> int:
    options: Dict[str, Any] = {}
    for item in args.option:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"--option needs NAME=VALUE, not {item!r}", 2)
        options[name] = _option_value(value)
    with _client(args, "default") as e:
        e.createdb(args.name, options)
    return 0


def cmd_dropdb(args: argparse.Namespace) -> int:
    with _client(args, "default") as e:
        e.dropdb(args.name)
    return 0


def _open_input(path: str) -> Tuple[IO[bytes], str]:
    if path == "-":
        return sys.stdin.buffer, "<stdin>"
    try:
        return open(path, "rb"), path
    except OSError as exc:
        raise CliError(f"cannot read {path!r}: {exc.strerror or exc}") from None


def cmd_load(args: argparse.Namespace) -> int:
    fmt = format_of(args.file, args.format, "jsonl" if args.file == "-" else None)
    stream, source = _open_input(args.file)
    bad: List[BadLine] = []

    def skip_bad(exc: BadLine) -> None:
        bad.append(exc)
        print(f"{PROG}: skipped {exc}", file=sys.stderr)

    bar = _progress_bar(None, "load")
    progress: Optional[Callable[[int], None]] = None
    if bar is not None:
        progress = lambda n: bar.update(n - bar.n)  # noqa: E731 - called from worker threads
    try:
        with _client(args) as e:
            pairs = read_pairs(stream, fmt, source, skip_bad if args.skip_bad else None)
            try:
                report = load(e, pairs, batch_size=args.batch_size, workers=args.workers,
                              skip=args.skip, progress=progress)
            except BulkLoadError as exc:
                cause = exc.__cause__
                written = exc.written
                if isinstance(cause, BadLine):
                    raise CliError(
                        f"{cause}; the {written} pairs before it are written, none after it "
                        f"(fix it and resume with --skip {written}, or use --skip-bad)") from None
                raise CliError(f"{exc}" + (f" (resume with --skip {written})"
                                           if written else "")) from None
            except KeyboardInterrupt as exc:
                done = getattr(exc, "written", None)  # set by bulk.load
                if done is not None:
                    raise CliError(f"interrupted; the first {done} pairs are written "
                                   f"(resume with --skip {done})", 130) from None
                raise
    finally:
        if bar is not None:
            bar.close()
        if stream is not sys.stdin.buffer:
            stream.close()
    _note(f"loaded {report}" + (f"; {len(bad)} bad lines skipped" if bad else ""))
    if bad:
        print(f"{PROG}: {len(bad)} bad lines skipped (first: line {bad[0].line})",
              file=sys.stderr)
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    target = args.output
    fmt = format_of(target, args.format, "jsonl" if target == "-" else None)
    bar = _progress_bar(None, "dump")
    count = 0
    tmp_path = None
    try:
        with _client(args) as e:
            stdout = None
            if target == "-":
                stdout = _StdoutText()
                out = stdout.__enter__()
            else:
                # Written next to the target and renamed into place only when complete.
                directory = os.path.dirname(os.path.abspath(target))
                fd, tmp_path = tempfile.mkstemp(prefix=".elevator-dump-", dir=directory)
                out = io.open(fd, "w", newline="", **_ENCODING)
            write = write_pairs(out, fmt)
            try:
                for key, value in dump(e, *_range_args(args), page_size=args.page_size):
                    write(key, value)
                    count += 1
                    if bar is not None and count % 1000 == 0:
                        bar.update(1000)
                out.flush()
            except (errors.ElevatorError, KeyboardInterrupt) as exc:
                where = "stdout" if target == "-" else repr(target)
                done = (f"{count} pairs were written to stdout" if target == "-"
                        else f"nothing was written to {target!r}")
                if isinstance(exc, KeyboardInterrupt):
                    raise CliError(f"dump interrupted; {done}", 130) from None
                raise CliError(f"dump to {where} stopped: {exc}; {done}") from None
            finally:
                if stdout is not None:
                    stdout.__exit__(None, None, None)
                else:
                    out.close()
            if tmp_path is not None:
                os.replace(tmp_path, target)
                tmp_path = None
    finally:
        if bar is not None:
            bar.close()
        if tmp_path is not None:
            os.unlink(tmp_path)
    _note(f"dumped {count} pairs")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with _client(args) as e:
        t0 = time.perf_counter()
        e.Ping()
        ping_ms = (time.perf_counter() - t0) * 1000
        dbs = e.listdb()
        t0 = time.perf_counter()
        pairs = key_bytes = value_bytes = 0
        for key, value in dump(e, page_size=args.page_size):
            pairs += 1
            key_bytes += len(key)
            value_bytes += len(value)
        scan = time.perf_counter() - t0
        pool = e.pool.stats()
    stats = {"endpoint": e.endpoint, "ping_ms": round(ping_ms, 3), "databases": len(dbs),
             "db": e.db_name, "pairs": pairs, "key_bytes": key_bytes, "value_bytes": value_bytes,
             "scan_seconds": round(scan, 3), "retries": pool["retries"]}
    if args.json:
        print(json.dumps(stats))
    else:
        for name, value in stats.items():
            print(f"{name}: {value}")
    return 0


# ------------------------------------------------------------------------ parser

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see --help)\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}: {text!r}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    # The connection options are accepted before or after the command.
    common = _Parser(add_help=False)  # add_parser wants parents of the subparsers' class
    common.add_argument("--endpoint", default=argparse.SUPPRESS,
                        help="HOST:PORT or a ZeroMQ URL (default: $ELEVATOR_ENDPOINT or "
                             f"{DEFAULT_ENDPOINT})")
    common.add_argument("--db", default=argparse.SUPPRESS,
                        help="database (default: default)")
    common.add_argument("--timeout", type=_positive_float, default=argparse.SUPPRESS,
                        help="seconds per request, retries included (default: 10)")
    common.add_argument("--curve-server-key", default=argparse.SUPPRESS, metavar="FILE",
                        help="the server's public key file (NAME.key from 'elevator-server "
                             "keygen'), for a server started with --curve-secret-key "
                             "(default: $ELEVATOR_CURVE_SERVER_KEY)")
    common.add_argument("--curve-client-key", default=argparse.SUPPRESS, metavar="FILE",
                        help="this client's secret key file (NAME.key_secret) "
                             "(default: $ELEVATOR_CURVE_CLIENT_KEY)")
    p = _Parser(prog=PROG, parents=[common], description="Command-line client of an Elevator "
                "key-value server.", epilog="Run 'elevator COMMAND --help' for a command's options.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, parents=[common], help=help, description=help)
        sp.set_defaults(func=func)
        return sp

    add("ping", cmd_ping, "check that the server answers")
    sp = add("get", cmd_get, "print the value of KEY (exit 1 when missing)")
    sp.add_argument("key")
    sp = add("put", cmd_put, "store VALUE under KEY")
    sp.add_argument("key")
    sp.add_argument("value")
    sp = add("delete", cmd_delete, "delete KEY")
    sp.add_argument("key")
    sp = add("mget", cmd_mget, "print the pairs of several keys (exit 1 if any is missing)")
    sp.add_argument("keys", nargs="+", metavar="KEY")
    sp.add_argument("--format", choices=FORMATS, default="tsv", help="(default: tsv)")

    def range_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--start", help="first key (inclusive)")
        sp.add_argument("--stop", help="last key (inclusive)")
        sp.add_argument("--prefix", help="only keys starting with PREFIX")

    sp = add("range", cmd_range, "print the pairs of a key range, in key order")
    range_options(sp)
    sp.add_argument("--limit", type=_int_at_least(0), help="at most N pairs")
    sp.add_argument("--format", choices=FORMATS, default="tsv", help="(default: tsv)")
    add("listdb", cmd_listdb, "list the databases")
    sp = add("createdb", cmd_createdb, "create a database")
    sp.add_argument("name")
    sp.add_argument("--option", "-O", action="append", default=[], metavar="NAME=VALUE",
                    help="a LevelDB option (bloom_filter_bits=10, lru_cache_size=...); repeatable")
    sp = add("dropdb", cmd_dropdb, "drop a database and delete its files")
    sp.add_argument("name")
    sp = add("load", cmd_load, "load (key, value) pairs from FILE ('-' for stdin)")
    sp.add_argument("file", metavar="FILE")
    sp.add_argument("--format", choices=FORMATS,
                    help="jsonl, csv or tsv (default: from the extension; jsonl for stdin)")
    sp.add_argument("--skip-bad", action="store_true",
                    help="report bad lines on stderr and go on (default: stop at the first)")
    sp.add_argument("--skip", type=_int_at_least(0), default=0, metavar="N",
                    help="pass over the first N pairs (resume an interrupted load)")
    sp.add_argument("--batch-size", type=_int_at_least(1), default=DEFAULT_BATCH_SIZE,
                    help="pairs per atomic batch (default: %(default)s)")
    sp.add_argument("--workers", type=_int_at_least(1), default=DEFAULT_WORKERS,
                    help="batches in flight (default: %(default)s)")
    sp = add("dump", cmd_dump, "write the pairs of a key range, in key order")
    range_options(sp)
    sp.add_argument("-o", "--output", default="-", metavar="FILE",
                    help="output file, written whole or not at all (default: stdout)")
    sp.add_argument("--format", choices=FORMATS,
                    help="jsonl, csv or tsv (default: from the extension; jsonl for stdout)")
    sp.add_argument("--page-size", type=_int_at_least(1), default=10_000,
                    help="pairs per read (default: %(default)s)")
    sp = add("stats", cmd_stats, "server round trip and the database's size (scans it)")
    sp.add_argument("--json", action="store_true", help="one JSON object")
    sp.add_argument("--page-size", type=_int_at_least(1), default=10_000, help=argparse.SUPPRESS)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``elevator`` command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    args.endpoint = getattr(args, "endpoint", None) or os.environ.get("ELEVATOR_ENDPOINT") \
        or DEFAULT_ENDPOINT
    args.db = getattr(args, "db", None) or "default"
    args.timeout = getattr(args, "timeout", None) or 10.0
    args.curve_server_key = getattr(args, "curve_server_key", None) \
        or os.environ.get("ELEVATOR_CURVE_SERVER_KEY")
    args.curve_client_key = getattr(args, "curve_client_key", None) \
        or os.environ.get("ELEVATOR_CURVE_CLIENT_KEY")
    try:
        return args.func(args)
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except BrokenPipeError:
        # The reader went away (elevator dump | head): not an error worth a line.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 1
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except errors.ElevatorError as exc:
        return _fail(f"{exc}", 1)
    except (OSError, ValueError, TypeError) as exc:
        return _fail(f"{type(exc).__name__}: {exc}", 1)


def _fail(message: str, code: int) -> int:
    one_line = message.replace("\r", " ").replace("\n", " ")
    print(f"{PROG}: error: {one_line}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
