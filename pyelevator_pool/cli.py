"""``elevator``: a command-line client of an Elevator server.

    elevator [--endpoint HOST:PORT] [--db NAME] [--timeout SECONDS] COMMAND [ARGS]

Commands: ``ping``, ``get``, ``put``, ``delete``, ``mget``, ``range``, ``listdb``,
``createdb``, ``dropdb``, ``load``, ``dump``, ``stats``, ``info`` (``elevator COMMAND --help``).

Files are bytes: keys and values are the UTF-8 text of the file, and bytes that are
not UTF-8 pass through unchanged (Python's ``surrogateescape``), so whatever ``load``
reads, ``dump`` writes back byte for byte. Formats (from the file's extension, or
``--format``):

* ``jsonl``: one ``{"key": "...", "value": "..."}`` object per line (``.jsonl``,
  ``.json``, ``.ndjson``); other members are ignored;
* ``csv``: two columns, RFC 4180 quoting, ``\\n`` line ends (``.csv``);
* ``tsv``: the same with tabs (``.tsv``, ``.tab``).

Blank lines are skipped. Lines end with ``\n`` (or ``\r\n``); line numbers count
them. A line longer than ``load --max-line-size`` (16 MiB) is a bad line, never read
whole. A CSV/TSV record may span lines (a quoted field holding newlines); a malformed
one is its lines up to where the fault was found, and ``--skip-bad`` resumes reading at
the next line (an unclosed quote costs the lines up to the next quote or the end).
Errors are one line on stderr and a non-zero exit code: 1 for a failure (a bad input
line, a closed or broken stdin/stdout), 2 for a bad command line, 130 when interrupted.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shlex
import sys
import tempfile
import time
from typing import (IO, Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple,
                    TypedDict)

from . import __version__, errors, urls
from .args import integer, number
from .argparsing import Parser, arg_type
from .bulk import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, BulkLoadError, dump, load
from .client import Elevator
from .security import CurveKeys, load_key_pair, load_public_key

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


#: default of ``load --max-line-size``: the longest input line (and CSV/TSV record) read
DEFAULT_MAX_LINE_SIZE = 16 * 1024 * 1024
#: default of ``load --batch-bytes``: with lines up to 16 MiB a batch stays under 24 MiB,
#: well inside the server's default max_message_size (64 MiB)
DEFAULT_BATCH_BYTES = 8 * 1024 * 1024


class BadLine(ValueError):
    """An input record that is not a (key, value) pair of its format: ``line`` is its
    first physical line (1-based), ``last`` its last. ``fatal``: reading cannot go on
    past it (``read_pairs`` raises it even with ``on_bad``)."""

    def __init__(self, source: str, line: int, message: str, *, last: Optional[int] = None,
                 fatal: bool = False) -> None:
        last = line if last is None or last < line else last
        where = f"line {line}" if last == line else f"lines {line}-{last}"
        super().__init__(f"{source} {where}: {message}")
        self.source = source
        self.line = line
        self.last = last
        self.fatal = fatal


class _TooLong(Exception):
    """A physical line, or a record's lines together, longer than the bound."""


class _Lines:
    """The physical (``\n``-ended) lines of a binary stream as text, each read with a
    bound, so memory stays bounded whatever the input (``/dev/zero`` included).

    ``lineno`` is the number of the last line read. A line longer than ``limit`` bytes
    raises :class:`_TooLong` at once; its rest is passed over only if reading goes on.
    ``record_bytes`` counts the bytes since :meth:`new_record`: a record (a CSV row with
    quoted newlines) longer than ``limit`` raises :class:`_TooLong` too. Not a generator:
    it goes on after raising.
    """

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self._readline = stream.readline
        self.limit = limit
        self.lineno = 0
        self.record_bytes = 0
        self._in_long_line = False

    def __iter__(self) -> "_Lines":
        return self

    def new_record(self) -> None:
        self.record_bytes = 0

    def __next__(self) -> str:
        readline = self._readline
        if self._in_long_line:  # pass over the rest of an over-long line, in bounded reads
            while True:
                rest = readline(1 << 16)
                if not rest or rest.endswith(b"\n"):
                    break
            self._in_long_line = False
        line = readline(self.limit + 1)
        if not line:
            raise StopIteration
        self.lineno += 1
        self.record_bytes += len(line)
        if len(line) > self.limit and not line.endswith(b"\n"):
            self._in_long_line = True
            raise _TooLong(f"longer than {self.limit} bytes (--max-line-size)")
        if self.record_bytes > self.limit + 1:
            raise _TooLong(f"a record longer than {self.limit} bytes (--max-line-size)")
        return line.decode("utf-8", "surrogateescape")


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


# csv before Python 3.11 refuses NUL (reader) or cannot write it unquoted (writer), so
# NUL crosses the csv module as a lone high surrogate, which surrogateescape text never holds.
_NUL, _NUL_STANDIN = "\x00", "\ud800"


def _hide_nul(text: str) -> str:
    return text.replace(_NUL, _NUL_STANDIN) if _NUL in text else text


def _show_nul(text: str) -> str:
    return text.replace(_NUL_STANDIN, _NUL) if _NUL_STANDIN in text else text


def read_pairs(stream: IO[bytes], fmt: str, source: str = "-",
               on_bad: Optional[Callable[[BadLine], None]] = None, *,
               max_line_size: int = DEFAULT_MAX_LINE_SIZE) -> Iterator[Tuple[bytes, bytes]]:
    """The ``(key, value)`` byte pairs of a binary stream in format ``fmt``, lazily.

    A bad record raises :class:`BadLine` (with its 1-based line numbers), or, with
    ``on_bad``, is passed to it and skipped; reading resumes at the next physical line.
    A line longer than ``max_line_size`` bytes is a bad line (never read whole). A
    CSV/TSV record is its line, or its lines when a quoted field holds newlines; a
    malformed one ends where the parser found the fault (an unclosed quote runs to the
    next quote or the end of the input). A quoted record running past ``max_line_size``
    is a fatal :class:`BadLine`, raised even with ``on_bad``: where it ends is unknown.

    :raises OSError: reading ``stream`` failed.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    integer("max_line_size", max_line_size, minimum=1)
    lines = _Lines(stream, max_line_size)
    if fmt == "jsonl":
        records = _read_jsonl(lines, source)
    else:
        # The record bound above applies first (a field is never longer than its record).
        if csv.field_size_limit() <= max_line_size:
            csv.field_size_limit(max_line_size + 1)
        records = _read_csv(lines, source, "," if fmt == "csv" else "\t")
    for item in records:
        if isinstance(item, BadLine):
            if on_bad is None or item.fatal:
                raise item
            on_bad(item)
        else:
            yield item


def _read_jsonl(lines: _Lines, source: str) -> Iterator[Any]:
    loads = json.loads
    while True:
        lines.new_record()
        try:
            line = next(lines)
        except StopIteration:
            return
        except _TooLong as exc:
            yield BadLine(source, lines.lineno, str(exc))
            continue
        lineno = lines.lineno
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


def _read_csv(lines: _Lines, source: str, delimiter: str) -> Iterator[Any]:
    # csv's reader starts each record afresh, so after a csv.Error it goes on at the
    # next physical line: the bad record is its lines up to where the error was found.
    reader = csv.reader(map(_hide_nul, lines), delimiter=delimiter, strict=True)
    name = _fmt_name(delimiter)
    while True:
        start = lines.lineno + 1
        lines.new_record()
        try:
            row = next(reader)
        except StopIteration:
            return
        except _TooLong as exc:
            if lines.lineno > start:  # inside a quoted field: its end cannot be found
                yield BadLine(source, start, f"{exc}: a quoted field that does not end? "
                              f"(cannot resynchronise; seen up to line {lines.lineno})",
                              fatal=True)
                return
            yield BadLine(source, start, str(exc))
            continue
        except csv.Error as exc:
            hint = f" (the quote opened on line {start} is never closed?)" \
                if "unexpected end of data" in str(exc) else ""
            yield BadLine(source, start, f"malformed {name}: {exc}{hint}", last=lines.lineno)
            continue
        if not row:
            continue
        if len(row) != 2:
            yield BadLine(source, start, f"expected 2 columns (key, value), found {len(row)}",
                          last=lines.lineno)
            continue
        yield _b(_show_nul(row[0])), _b(_show_nul(row[1]))


def _fmt_name(delimiter: str) -> str:
    return "CSV" if delimiter == "," else "TSV"


class _LineFeedRows:
    """csv's writer quotes fields with ``\\r`` only when ``\\r`` is in its line
    terminator, so rows are written with ``\\r\\n`` and ended here with ``\\n``."""

    def __init__(self, out: IO[str]) -> None:
        self._write = out.write

    def write(self, row: str) -> Any:
        return self._write(_show_nul(row[:-2]) + "\n")


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
            writerow((_hide_nul(_s(key)), _hide_nul(_s(value))))
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

def _os_reason(exc: OSError) -> str:
    """``no such file``, ``is a directory``...: an OSError without Python's spelling."""
    return (exc.strerror or str(exc)).lower()


def _curve_keys(args: argparse.Namespace) -> Optional[CurveKeys]:
    """The CURVE keys of the key file flags, None without them; a bad file names its flag."""
    if not (args.curve_server_key or args.curve_client_key):
        return None
    if not (args.curve_server_key and args.curve_client_key):
        raise CliError("--curve-server-key and --curve-client-key go together", 2)

    def load(flag: str, path: str, loader: Callable[[str], Any]) -> Any:
        try:
            open(path, "rb").close()  # pyzmq calls a missing file an "invalid certificate"
            return loader(path)
        except OSError as exc:
            raise CliError(f"{flag} {path!r}: {_os_reason(exc)}") from None
        except ValueError as exc:
            raise CliError(f"{flag} {path!r}: {exc}") from None

    server = load("--curve-server-key", args.curve_server_key, load_public_key)
    public, secret = load("--curve-client-key", args.curve_client_key, load_key_pair)
    return CurveKeys(server, public, secret)


def _client(args: argparse.Namespace, db: Optional[str] = None) -> Elevator:
    name = db if db is not None else args.db
    e = Elevator(name, endpoint=args.endpoint, timeout=args.timeout, curve=_curve_keys(args),
                 open=False)
    try:
        e.open()
    except errors.DatabaseError:
        missing = _is_missing(e, name)
        e.close()
        if missing:
            raise CliError(f"database {name!r} does not exist at {args.endpoint}: create it "
                           f"with: {PROG} createdb {shlex.quote(name)}") from None
        raise
    except BaseException:
        e.close()
        raise
    return e


def _is_missing(e: Elevator, name: str) -> bool:
    """Whether the server has no database ``name`` (not one it failed to open)."""
    try:
        return name not in e.listdb()
    except errors.ElevatorError:
        return False


#: the CLI's words for why the security handshake failed (AuthenticationError.reason)
_CURVE_ADVICE = {
    "key_refused": "the server refused this client's CURVE key (--curve-client-key): its "
                   "public key (NAME.key) must be in the server's --curve-authorized-keys "
                   "directory",
    "key_revoked": "the server no longer accepts this client's CURVE key (--curve-client-key): "
                   "its public key (NAME.key) must be in the server's --curve-authorized-keys "
                   "directory",
    "server_needs_curve": "the server requires CURVE: give --curve-server-key FILE (the "
                          "server's public NAME.key) and --curve-client-key FILE (this "
                          "client's NAME.key_secret), or $ELEVATOR_CURVE_SERVER_KEY and "
                          "$ELEVATOR_CURVE_CLIENT_KEY",
    "server_without_curve": "the server does not use CURVE: leave out --curve-server-key and "
                            "--curve-client-key ($ELEVATOR_CURVE_SERVER_KEY, "
                            "$ELEVATOR_CURVE_CLIENT_KEY)",
    "wrong_server_key": "the security handshake failed: check --curve-server-key (the "
                        "server's public NAME.key); if the server does not use CURVE, leave "
                        "out --curve-server-key and --curve-client-key",
}


def _no_access(exc: errors.AuthenticationError, endpoint: str) -> str:
    advice = _CURVE_ADVICE.get(exc.reason)
    return f"no access to {endpoint}: {advice}" if advice else str(exc)


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null, so that no later flush (ours, or the interpreter's at
    exit) fails again and prints a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
        finally:
            os.close(devnull)
    except OSError:
        pass


def _stdout_failed(exc: BaseException) -> CliError:
    """The one-line error for a failed write to stdout (after silencing it)."""
    _silence_stdout()
    if isinstance(exc, BrokenPipeError):
        reason = "broken pipe (its reader went away)"
    elif isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    else:
        reason = str(exc)
    return CliError(f"cannot write to stdout: {reason}")


def _stdout() -> IO[bytes]:
    """The binary stdout. :raises CliError: it is closed (``>&-``)."""
    if sys.stdout is None or getattr(sys.stdout, "closed", False):
        raise CliError("stdout is closed: there is nowhere to write")
    return sys.stdout.buffer


def _write_stdout(data: bytes) -> None:
    """Write and flush ``data`` to stdout. :raises CliError: stdout is closed or broken."""
    out = _stdout()
    try:
        sys.stdout.flush()
        out.write(data)
        out.flush()
    except (OSError, ValueError) as exc:
        raise _stdout_failed(exc) from None


def _echo(text: str) -> None:
    _write_stdout(_b(text + "\n"))


class _StdoutText:
    """stdout as text in the files' encoding; flushed and detached (never closed) on exit.

    :raises CliError: stdout is closed, or writing to it failed (broken pipe...).
    """

    def __enter__(self) -> IO[str]:
        self._buffer = _stdout()
        try:
            sys.stdout.flush()
        except (OSError, ValueError) as exc:
            raise _stdout_failed(exc) from None
        self._out = io.TextIOWrapper(self._buffer, newline="", **_ENCODING)
        return self._out

    def _is_stdout_failure(self, exc: Optional[BaseException]) -> bool:
        if isinstance(exc, errors.ElevatorError):  # also OSError or ValueError subclasses
            return False
        return isinstance(exc, OSError) or (isinstance(exc, ValueError) and self._buffer.closed)

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        failure = exc if self._is_stdout_failure(exc) else None
        if failure is None:
            try:
                self._out.flush()
            except (OSError, ValueError) as err:
                failure = err
        if failure is not None:
            _silence_stdout()  # what is still buffered drains into /dev/null
        try:
            self._out.detach()
        except (OSError, ValueError):
            pass
        if failure is not None:
            raise _stdout_failed(failure) from None


def cmd_ping(args: argparse.Namespace) -> int:
    with _client(args, "default") as e:
        t0 = time.perf_counter()
        if not e.Ping():
            raise CliError(f"{e.endpoint} did not answer PONG")
        ms = (time.perf_counter() - t0) * 1000
    _echo(f"PONG from {e.endpoint} in {ms:.2f} ms")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with _client(args) as e:
        try:
            value = e.Get(_b(args.key))
        except errors.ElevatorKeyError:
            raise CliError(f"key {args.key!r} not found in {e.db_name!r}") from None
    _write_stdout(value + b"\n")
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
        names = sorted(e.listdb())
    _echo("\n".join(names))
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
        if sys.stdin is None or getattr(sys.stdin, "closed", False):
            raise CliError("stdin is closed: there is nothing to read (give a FILE)")
        return sys.stdin.buffer, "<stdin>"
    try:
        return open(path, "rb"), path
    except OSError as exc:
        raise CliError(f"cannot read {path!r}: {exc.strerror or exc}") from None


def _line_numbers(bad: List[BadLine], most: int = 20) -> str:
    """``3, 6-8, 12``: the lines of the bad records, the first ``most`` of them."""
    shown = [str(b.line) if b.last == b.line else f"{b.line}-{b.last}" for b in bad[:most]]
    return ", ".join(shown) + (f" and {len(bad) - most} more records" if len(bad) > most else "")


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
            pairs = read_pairs(stream, fmt, source, skip_bad if args.skip_bad else None,
                               max_line_size=args.max_line_size)
            try:
                report = load(e, pairs, batch_size=args.batch_size, workers=args.workers,
                              skip=args.skip, progress=progress, batch_bytes=args.batch_bytes)
            except BulkLoadError as exc:
                cause = exc.__cause__
                written = exc.written
                if isinstance(cause, BadLine):
                    hint = "" if cause.fatal or args.skip_bad else ", or use --skip-bad"
                    raise CliError(
                        f"{cause}; the {written} pairs before it are written, none after it "
                        f"(fix it and resume with --skip {written}{hint})") from None
                if isinstance(cause, OSError) and not isinstance(cause, errors.ElevatorError):
                    raise CliError(
                        f"cannot read {source}: {cause.strerror or cause}; the {written} pairs "
                        f"before it are written (resume with --skip {written})") from None
                hint = ""
                if isinstance(cause, errors.LimitExceeded):
                    hint = (" (lower --batch-size)" if cause.limit == "max_keys"
                            else " (lower --batch-bytes or --max-line-size)")
                raise CliError(f"{exc}{hint}" + (f" (resume with --skip {written})"
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
    lines = sum(b.last - b.line + 1 for b in bad)
    _note(f"loaded {report}" + (f"; {lines} bad lines skipped" if bad else ""))
    if bad:
        print(f"{PROG}: {lines} bad lines skipped: {_line_numbers(bad)}", file=sys.stderr)
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    target = args.output
    fmt = format_of(target, args.format, "jsonl" if target == "-" else None)
    bar = _progress_bar(None, "dump")
    count = 0
    tmp_path = None
    try:
        with _client(args) as e:
            stdout: Optional[_StdoutText] = None
            if target == "-":
                stdout = _StdoutText()
                out = stdout.__enter__()
            else:
                # Written next to the target and renamed into place only when complete.
                directory = os.path.dirname(os.path.abspath(target))
                try:
                    fd, tmp_path = tempfile.mkstemp(prefix=".elevator-dump-", dir=directory)
                except OSError as exc:
                    raise _cannot_write(target, exc) from None
                out = io.open(fd, "w", newline="", **_ENCODING)
            write = write_pairs(out, fmt)
            failure: Optional[BaseException] = None
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
            except OSError as exc:
                failure = exc
                if stdout is not None:
                    raise  # told apart by _StdoutText
                raise _cannot_write(target, exc) from None
            except BaseException as exc:
                failure = exc  # a failed write to stdout is told apart by _StdoutText
                raise
            finally:
                if stdout is not None:
                    stdout.__exit__(type(failure), failure, None)
                else:
                    out.close()
            if tmp_path is not None:
                try:
                    os.replace(tmp_path, target)
                except OSError as exc:
                    raise _cannot_write(target, exc) from None
                tmp_path = None
    finally:
        if bar is not None:
            bar.close()
        if tmp_path is not None:
            os.unlink(tmp_path)
    _note(f"dumped {count} pairs")
    return 0


def _cannot_write(target: str, exc: OSError) -> CliError:
    """The error for a dump target that cannot be written: it names the target, never
    the temporary file next to it."""
    return CliError(f"cannot write {target!r}: {_os_reason(exc)}; nothing was written to it")


def cmd_info(args: argparse.Namespace) -> int:
    with _client(args, "default") as e:
        info = e.info()
    name = getattr(args, "db", None)
    if name is not None:
        info["databases"] = {name: _database_info(info, name, e.endpoint)}
    if args.json:
        _echo(json.dumps(info, sort_keys=True))
        return 0
    nested = ("commands", "queues", "databases")
    lines = [f"{key}: {value}" for key, value in info.items() if key not in nested]
    lines.append("queues: " + _pairs(info.get("queues", {})))
    for cmd, figures in info.get("commands", {}).items():
        lines.append(f"{cmd}: {_pairs(figures)}")
    for db, figures in info.get("databases", {}).items():
        lines.append(f"db {db}: " + _pairs({k: v for k, v in figures.items()
                                             if k != "leveldb_stats"}))
        if name is not None and figures.get("leveldb_stats"):
            lines.append(figures["leveldb_stats"].rstrip("\n"))
    _echo("\n".join(lines))
    return 0


def _pairs(figures: Dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in figures.items())


def _database_info(info: Dict[str, Any], name: str, endpoint: str) -> Dict[str, Any]:
    """INFO's figures of database ``name``; CliError when the server has none."""
    databases = info.get("databases")
    if databases is None:
        raise CliError(f"{endpoint} gives no figures per database (an older server): use "
                       "'elevator stats --exact'")
    if name not in databases:
        raise CliError(f"database {name!r} doesn't exist on {endpoint} "
                       f"(create it: elevator createdb {name})")
    figures: Dict[str, Any] = databases[name]
    return figures


def cmd_stats(args: argparse.Namespace) -> int:
    with _client(args) as e:
        t0 = time.perf_counter()
        e.Ping()
        ping_ms = (time.perf_counter() - t0) * 1000
        dbs = e.listdb()
        stats: Dict[str, Any] = {"endpoint": e.endpoint, "ping_ms": round(ping_ms, 3),
                                 "databases": len(dbs), "db": e.db_name}
        if args.exact:
            t0 = time.perf_counter()
            pairs = key_bytes = value_bytes = 0
            for key, value in dump(e, page_size=args.page_size):
                pairs += 1
                key_bytes += len(key)
                value_bytes += len(value)
            stats.update(pairs=pairs, key_bytes=key_bytes, value_bytes=value_bytes,
                         scan_seconds=round(time.perf_counter() - t0, 3))
        else:
            e.mount()  # so that INFO can estimate its keys (a mounted one only)
            figures = _database_info(e.info(), e.db_name, e.endpoint)
            stats.update(keys_estimate=figures["keys_estimate"],
                         size_bytes=figures["size_bytes"])
        stats["retries"] = e.pool.stats()["retries"]
    if args.json:
        _echo(json.dumps(stats))
    else:
        _echo("\n".join(f"{name}: {value}" for name, value in stats.items()))
    return 0


# ------------------------------------------------------------------------ parser

def _int_at_least(name: str, minimum: int) -> Callable[[str], int]:
    return arg_type(name, integer, minimum=minimum)


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_SIZE = re.compile(r"(\d+)\s*([KMG]?)(?:I?B)?", re.IGNORECASE)


def _parse_size(text: str) -> int:
    """A byte count: ``1000``, ``64K``, ``16M``, ``1GiB`` (binary units)."""
    match = _SIZE.fullmatch(text.strip().replace("_", ""))
    if match is None:
        raise ValueError(text)
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def _size(name: str) -> Callable[[str], int]:
    """A byte count >= 1, in the units of :func:`_parse_size`."""
    return arg_type(name, integer, convert=_parse_size,
                    expected="a size in bytes (1000, 64K, 16M, 1G)", minimum=1)


def build_parser() -> argparse.ArgumentParser:
    # The connection options are accepted before or after the command.
    common = Parser(add_help=False)  # add_parser wants parents of the subparsers' class
    common.add_argument("--endpoint", default=argparse.SUPPRESS,
                        help="HOST:PORT or a ZeroMQ URL (default: $ELEVATOR_URL's, $ELEVATOR_ENDPOINT or "
                             f"{DEFAULT_ENDPOINT})")
    common.add_argument("--db", default=argparse.SUPPRESS,
                        help="database (default: $ELEVATOR_URL's or default)")
    common.add_argument("--timeout", default=argparse.SUPPRESS,
                        type=arg_type("timeout", number, convert=float, expected="a number"),
                        help="seconds per request, retries included (default: 10)")
    common.add_argument("--curve-server-key", default=argparse.SUPPRESS, metavar="FILE",
                        help="the server's public key file (NAME.key from 'elevator-server "
                             "keygen'), for a server started with --curve-secret-key "
                             "(default: $ELEVATOR_CURVE_SERVER_KEY)")
    common.add_argument("--curve-client-key", default=argparse.SUPPRESS, metavar="FILE",
                        help="this client's secret key file (NAME.key_secret) "
                             "(default: $ELEVATOR_CURVE_CLIENT_KEY)")
    p = Parser(prog=PROG, parents=[common], description="Command-line client of an Elevator "
                "key-value server.", epilog="Run 'elevator COMMAND --help' for a command's options.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, parents=[common], help=help, description=help,
                            error_prog=PROG)
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
    sp.add_argument("--limit", type=_int_at_least("limit", 0), help="at most N pairs")
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
    sp.add_argument("--skip", type=_int_at_least("skip", 0), default=0, metavar="N",
                    help="pass over the first N pairs (resume an interrupted load)")
    sp.add_argument("--batch-size", type=_int_at_least("batch_size", 1),
                    default=DEFAULT_BATCH_SIZE,
                    help="pairs per atomic batch (default: %(default)s)")
    sp.add_argument("--workers", type=_int_at_least("workers", 1), default=DEFAULT_WORKERS,
                    help="batches in flight (default: %(default)s)")
    sp.add_argument("--max-line-size", type=_size("max_line_size"),
                    default=DEFAULT_MAX_LINE_SIZE, metavar="BYTES",
                    help="longest input line (or CSV/TSV record), 16M, 1G...: a longer one is "
                         "a bad line, never read whole (default: 16 MiB)")
    sp.add_argument("--batch-bytes", type=_size("batch_bytes"), default=DEFAULT_BATCH_BYTES,
                    metavar="BYTES",
                    help="also end a batch at this many bytes of keys and values, to stay "
                         "under the server's max_message_size (default: 8 MiB)")
    sp = add("dump", cmd_dump, "write the pairs of a key range, in key order")
    range_options(sp)
    sp.add_argument("-o", "--output", default="-", metavar="FILE",
                    help="output file, written whole or not at all (default: stdout)")
    sp.add_argument("--format", choices=FORMATS,
                    help="jsonl, csv or tsv (default: from the extension; jsonl for stdout)")
    sp.add_argument("--page-size", type=_int_at_least("page_size", 1), default=10_000,
                    help="pairs per read (default: %(default)s)")
    sp = add("info", cmd_info, "the server's statistics (the INFO extension)")
    sp.add_argument("--json", action="store_true", help="one JSON object")
    sp = add("stats", cmd_stats, "server round trip and the database's size (from INFO, or "
             "--exact)")
    sp.add_argument("--json", action="store_true", help="one JSON object")
    sp.add_argument("--exact", action="store_true",
                    help="count the pairs and their bytes by reading every one (slow)")
    sp.add_argument("--page-size", type=_int_at_least("page_size", 1), default=10_000,
                    help=argparse.SUPPRESS)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``elevator`` command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        env = urls.from_environment()
    except ValueError as exc:
        parser.error(str(exc))
    url_endpoint, url_db, url_pool = env if env is not None else (None, None, {})
    args.endpoint = getattr(args, "endpoint", None) or url_endpoint \
        or os.environ.get("ELEVATOR_ENDPOINT") or DEFAULT_ENDPOINT
    args.db = getattr(args, "db", None) or url_db or "default"
    args.timeout = getattr(args, "timeout", None) or url_pool.get("timeout") or 10.0
    args.curve_server_key = getattr(args, "curve_server_key", None) \
        or os.environ.get("ELEVATOR_CURVE_SERVER_KEY")
    args.curve_client_key = getattr(args, "curve_client_key", None) \
        or os.environ.get("ELEVATOR_CURVE_CLIENT_KEY")
    try:
        code: int = args.func(args)
        if sys.stdout is not None:
            try:
                sys.stdout.flush()  # here, not at exit, where a failure is a traceback
            except (OSError, ValueError) as exc:
                raise _stdout_failed(exc) from None
        return code
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except BrokenPipeError as exc:
        return _fail(str(_stdout_failed(exc)), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except errors.AuthenticationError as exc:
        return _fail(_no_access(exc, args.endpoint), 1)
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
