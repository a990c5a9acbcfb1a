"""The ``elevator`` command line, run as a subprocess against a real elevator-server."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from pyelevator_pool import Elevator
from pyelevator_pool.cli import BadLine, read_pairs, write_pairs

RUN_TIMEOUT = 60.0

# Awkward but legal data, in key order: UTF-8 text, the formats' special characters,
# an empty value, and bytes that are not UTF-8 at all.
DATA = sorted([
    (b"alpha", b"1"),
    (b"comma,key", b"value, with \"quotes\""),
    (b"empty", b""),
    ("gr\u00fc\u00dfe-\u2603".encode(), "\u00e9t\u00e9 \U0001f600".encode()),
    (b"tab\tkey", b"line\nbreak and \r return"),
    (b"latin1-\xe9\xff", b"\x00\x01raw\xfe"),
    (b"spaces ", b"  padded  "),
] + [(b"k%05d" % i, b"v%d" % (i * 31)) for i in range(500)])


def _text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def canonical(fmt: str, pairs) -> bytes:
    """The file dump writes, built here independently of the CLI's own writer."""
    if fmt == "jsonl":
        lines = [f'{{"key": {json.dumps(_text(k), ensure_ascii=False)}, '
                 f'"value": {json.dumps(_text(v), ensure_ascii=False)}}}\n' for k, v in pairs]
        return "".join(lines).encode("utf-8", "surrogateescape")
    buf = io.StringIO(newline="")
    # RFC 4180 quoting with \n line ends (pairs holding a \r are left to another test:
    # this writer would not quote them).
    writer = csv.writer(buf, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
    # csv before 3.11 cannot write NUL unquoted (3.11's form): a stand-in crosses it.
    for k, v in pairs:
        writer.writerow([_text(k).replace("\x00", "\ud800"), _text(v).replace("\x00", "\ud800")])
    out = buf.getvalue().replace("\ud800", "\x00")
    return out.encode("utf-8", "surrogateescape")


def elevator(endpoint, *args, stdin: bytes = b"", db=None):
    """Run the CLI; returns (exit code, stdout bytes, stderr text)."""
    cmd = [sys.executable, "-m", "pyelevator_pool.cli", "--endpoint", endpoint, "--timeout", "10"]
    if db is not None:
        cmd += ["--db", db]
    env = dict(os.environ)
    env.pop("ELEVATOR_ENDPOINT", None)
    proc = subprocess.run(cmd + [str(a) for a in args], input=stdin, capture_output=True,
                          timeout=RUN_TIMEOUT, env=env)
    return proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace")


# ------------------------------------------------------------ load/dump round trip

@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv"])
def test_load_then_dump_is_byte_identical(endpoint, db, tmp_path, fmt):
    pairs = [p for p in DATA if not (fmt != "jsonl" and b"\r" in p[0] + p[1])]
    source = tmp_path / f"in.{fmt}"
    source.write_bytes(canonical(fmt, pairs))
    rc, out, err = elevator(endpoint, "load", source, db=db.db_name)
    assert (rc, err) == (0, "")
    assert list(db.RangeIter()) == [list(p) for p in pairs]
    target = tmp_path / f"out.{fmt}"
    rc, out, err = elevator(endpoint, "dump", "-o", target, db=db.db_name)
    assert (rc, out, err) == (0, b"", "")
    assert target.read_bytes() == source.read_bytes()
    # Through stdin and stdout too, with the format named.
    rc, out, err = elevator(endpoint, "dump", "--format", fmt, db=db.db_name)
    assert rc == 0 and out == source.read_bytes()


def test_carriage_returns_in_csv_and_tsv_fields_round_trip(endpoint, db):
    db.Put(b"cr\rkey", b"a\rb")
    for fmt in ("csv", "tsv"):
        rc, out, err = elevator(endpoint, "dump", "--format", fmt, db=db.db_name)
        assert rc == 0
        assert list(read_pairs(io.BytesIO(out), fmt)) == [(b"cr\rkey", b"a\rb")]
        rc, _, err = elevator(endpoint, "load", "-", "--format", fmt, stdin=out, db=db.db_name)
        assert (rc, err) == (0, "")
        assert db.Range() == [[b"cr\rkey", b"a\rb"]]


def test_load_from_stdin_defaults_to_json_lines(endpoint, db):
    rc, _, err = elevator(endpoint, "load", "-", stdin=canonical("jsonl", DATA[:3]),
                          db=db.db_name)
    assert (rc, err) == (0, "")
    assert [tuple(p) for p in db.RangeIter()] == DATA[:3]


# ------------------------------------------------------------------- bad input

def test_malformed_line_gives_its_number_exit_1_and_keeps_the_lines_before(endpoint, db,
                                                                           tmp_path):
    good = canonical("jsonl", DATA[:4]).splitlines(keepends=True)
    source = tmp_path / "bad.jsonl"
    source.write_bytes(b"".join(good[:2] + [b'{"key": "x", "value": \n'] + good[2:]))
    rc, out, err = elevator(endpoint, "load", source, db=db.db_name)
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("elevator: error: ")
    assert "line 3" in err and "--skip 2" in err
    assert [tuple(p) for p in db.RangeIter()] == DATA[:2], "the lines before it, nothing after"

    rc, out, err = elevator(endpoint, "load", source, "--skip-bad", db=db.db_name)
    assert rc == 0 and "line 3" in err
    assert [tuple(p) for p in db.RangeIter()] == DATA[:4]


def test_csv_line_with_wrong_column_count_is_reported_by_number(endpoint, db, tmp_path):
    source = tmp_path / "bad.csv"
    source.write_bytes(b"a,1\nb,2\n\nc,3,extra\nd,4\n")
    rc, _, err = elevator(endpoint, "load", source, db=db.db_name)
    assert rc == 1 and "line 4" in err and "2 columns" in err
    assert db.Range() == [[b"a", b"1"], [b"b", b"2"]]


def test_unknown_extension_needs_format_and_missing_file_is_one_line(endpoint, tmp_path):
    (tmp_path / "x.bin").write_bytes(b"")
    rc, _, err = elevator(endpoint, "load", tmp_path / "x.bin")
    assert rc == 2 and "--format" in err and err.count("\n") == 1
    rc, _, err = elevator(endpoint, "load", tmp_path / "missing.csv")
    assert rc == 1 and "missing.csv" in err and err.count("\n") == 1


def test_read_pairs_reports_bad_lines_in_process():
    bad = []
    got = list(read_pairs(io.BytesIO(b'{"key": "a", "value": "1"}\n[1]\n{"key": 2, "value": "x"}\n'
                                     b'{"key": "b", "value": "2"}\n'), "jsonl",
                          "f", on_bad=bad.append))
    assert got == [(b"a", b"1"), (b"b", b"2")]
    assert [b.line for b in bad] == [2, 3] and all(isinstance(b, BadLine) for b in bad)
    with pytest.raises(BadLine, match="f line 2"):
        list(read_pairs(io.BytesIO(b'{"key": "a", "value": "1"}\nnope\n'), "jsonl", "f"))


def test_write_pairs_matches_the_canonical_files():
    for fmt in ("jsonl", "csv", "tsv"):
        pairs = [p for p in DATA if fmt == "jsonl" or b"\r" not in p[0] + p[1]]
        buf = io.StringIO(newline="")
        write = write_pairs(buf, fmt)
        for k, v in pairs:
            write(k, v)
        assert buf.getvalue().encode("utf-8", "surrogateescape") == canonical(fmt, pairs)


# ------------------------------------------------------------- other commands

def test_ping_put_get_delete_mget(endpoint, db):
    name = db.db_name
    rc, out, _ = elevator(endpoint, "ping")
    assert rc == 0 and out.startswith(b"PONG")
    assert elevator(endpoint, "put", "k1", "v\u00e9", db=name)[0] == 0
    assert elevator(endpoint, "put", "k2", "two", db=name)[0] == 0
    assert elevator(endpoint, "get", "k1", db=name)[:2] == (0, "v\u00e9\n".encode())
    rc, out, err = elevator(endpoint, "mget", "k1", "k2", db=name)
    assert (rc, out) == (0, "k1\tv\u00e9\nk2\ttwo\n".encode())
    rc, out, err = elevator(endpoint, "mget", "k1", "nope", db=name)
    assert rc == 1 and out == "k1\tv\u00e9\n".encode() and "'nope'" in err
    assert elevator(endpoint, "delete", "k1", db=name)[0] == 0
    rc, out, err = elevator(endpoint, "get", "k1", db=name)
    assert rc == 1 and out == b"" and err.count("\n") == 1 and "not found" in err


def test_range_with_prefix_limit_and_format(endpoint, db):
    for i in range(30):
        db.Put(b"r%02d" % i, b"%d" % i)
    db.Put(b"s", b"other")
    rc, out, _ = elevator(endpoint, "range", "--prefix", "r1", "--limit", "3", db=db.db_name)
    assert (rc, out) == (0, b"r10\t10\nr11\t11\nr12\t12\n")
    rc, out, _ = elevator(endpoint, "range", "--start", "r28", "--format", "jsonl",
                          db=db.db_name)
    assert [json.loads(line) for line in out.splitlines()] == [
        {"key": "r28", "value": "28"}, {"key": "r29", "value": "29"},
        {"key": "s", "value": "other"}]


def test_createdb_listdb_dropdb_and_stats(endpoint, admin):
    assert elevator(endpoint, "createdb", "cli_made", "-O", "bloom_filter_bits=10")[0] == 0
    try:
        rc, out, _ = elevator(endpoint, "listdb")
        assert rc == 0 and b"cli_made\n" in out and b"default\n" in out
        rc, _, err = elevator(endpoint, "createdb", "cli_made")
        assert rc == 1 and err.count("\n") == 1
        Elevator("cli_made", pool=admin.pool).Put(b"abc", b"12345")
        rc, out, _ = elevator(endpoint, "stats", "--json", "--exact", db="cli_made")
        stats = json.loads(out)
        assert rc == 0 and (stats["pairs"], stats["key_bytes"], stats["value_bytes"]) == (1, 3, 5)
        rc, out, _ = elevator(endpoint, "stats", "--json", db="cli_made")  # from INFO
        stats = json.loads(out)
        assert rc == 0 and stats["keys_estimate"] == 1 and stats["size_bytes"] > 0
        assert "pairs" not in stats
    finally:
        assert elevator(endpoint, "dropdb", "cli_made")[0] == 0
    assert "cli_made" not in admin.listdb()


def test_unknown_database_and_unreachable_server_are_one_line_errors(endpoint):
    rc, _, err = elevator(endpoint, "get", "k", db="no_such_db")
    assert rc == 1 and err.count("\n") == 1 and "no_such_db" in err
    # A port nothing listens on: bounded by --timeout.
    rc, _, err = elevator("127.0.0.1:1", "ping", "--timeout", "0.5")
    assert rc == 1 and err.count("\n") == 1 and "127.0.0.1:1" in err


def test_bad_command_line_exits_2():
    proc = subprocess.run([sys.executable, "-m", "pyelevator_pool.cli", "frobnicate"],
                          capture_output=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1
