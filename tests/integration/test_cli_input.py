"""The ``elevator`` CLI never loses an input line silently and never reads without bound;
closed or broken standard streams are one-line errors. Real CLI subprocesses, real server."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from pyelevator_pool import Elevator, bulk
from pyelevator_pool.cli import BadLine, read_pairs
from pyelevator_pool.testing import ServerProcess
from test_cli import RUN_TIMEOUT, elevator


def _cli(endpoint, *args):
    return [sys.executable, "-m", "pyelevator_pool.cli", "--endpoint", endpoint,
            "--timeout", "10", *[str(a) for a in args]]


def _env():
    env = dict(os.environ)
    env.pop("ELEVATOR_ENDPOINT", None)
    return env


def _pairs(db):
    return [tuple(p) for p in db.RangeIter()]


def _one_line_error(err: str) -> bool:
    return err.count("\n") == 1 and err.startswith("elevator: error: ") and "Traceback" not in err


# ------------------------------------------------------------ --skip-bad resynchronises

@pytest.mark.parametrize("fmt,sep", [("csv", ","), ("tsv", "\t")])
def test_skip_bad_skips_only_the_malformed_quote_lines(endpoint, db, tmp_path, fmt, sep):
    good = [f"k{i:02d}{sep}v{i}\n" for i in range(19)]
    lines = good[:2] + [f'"bad"x{sep}1\n'] + good[2:10] + [f'k99{sep}"v"oops\n'] + good[10:]
    source = tmp_path / f"in.{fmt}"
    source.write_text("".join(lines))
    expected = [(b"k%02d" % i, b"v%d" % i) for i in range(19)]

    rc, _, err = elevator(endpoint, "load", source, db=db.db_name)
    assert rc == 1 and _one_line_error(err) and "line 3" in err, err
    assert _pairs(db) == expected[:2], "the lines before the bad one, nothing after"

    rc, _, err = elevator(endpoint, "load", source, "--skip-bad", db=db.db_name)
    assert rc == 0, err
    assert _pairs(db) == expected, "every good line is loaded"
    assert "line 3:" in err and "line 12:" in err
    assert "2 bad lines skipped: 3, 12" in err, err


def test_multi_line_quoted_fields_and_bad_records_spanning_lines(endpoint, db, tmp_path):
    source = tmp_path / "in.csv"
    source.write_bytes(b'a,1\n'                   # 1
                       b'"b\nb",2\n'              # 2-3: a legal quoted newline
                       b'"c"x,3\n'                # 4: bad quote, detected on its line
                       b'd,4\n'                   # 5
                       b'"e,5\nf,6\ng"h,7\n'      # 6-8: a quote that runs to line 8, bad there
                       b'i,8\n'                   # 9
                       b'j,9,extra\n'             # 10: 3 columns
                       b'k,10\n'                  # 11
                       b'"l,11\nm,12\n')          # 12-13: never closed (end of data)
    rc, _, err = elevator(endpoint, "load", source, "--skip-bad", db=db.db_name)
    assert rc == 0, err
    assert _pairs(db) == [(b"a", b"1"), (b"b\nb", b"2"), (b"d", b"4"), (b"i", b"8"),
                          (b"k", b"10")]
    assert "line 4:" in err and "lines 6-8:" in err and "line 10:" in err
    assert "lines 12-13:" in err
    assert "7 bad lines skipped: 4, 6-8, 10, 12-13" in err, err


def test_blank_and_crlf_lines_are_still_read(endpoint, db, tmp_path):
    source = tmp_path / "in.csv"
    source.write_bytes(b'a,1\r\n\r\n\nb,"x\r\ny"\r\nc,3')
    rc, _, err = elevator(endpoint, "load", source, db=db.db_name)
    assert (rc, err) == (0, "")
    assert _pairs(db) == [(b"a", b"1"), (b"b", b"x\r\ny"), (b"c", b"3")]


def test_read_pairs_reports_record_spans_and_refuses_to_guess_in_process():
    bad = []
    data = b'a,1\n"b"x,2\n"c,3\nd"y,4\ne,5\n' + b"f," + b"z" * 100 + b"\ng,6\n"
    got = list(read_pairs(io.BytesIO(data), "csv", "f", bad.append, max_line_size=50))
    assert got == [(b"a", b"1"), (b"e", b"5"), (b"g", b"6")]
    assert [(b.line, b.last, b.fatal) for b in bad] == [(2, 2, False), (3, 4, False),
                                                          (6, 6, False)]
    assert str(bad[1]).startswith("f lines 3-4: malformed CSV")
    # A quoted field running past the bound is raised even with on_bad.
    with pytest.raises(BadLine, match="line 2") as info:
        list(read_pairs(io.BytesIO(b'a,1\n"b,' + b"x\n" * 40), "csv", "f", bad.append,
                        max_line_size=50))
    assert info.value.fatal
    got = list(read_pairs(io.BytesIO(b'{"key": "a", "value": "' + b"v" * 60 + b'"}\n'
                                     b'{"key": "b", "value": "2"}'), "jsonl", "f", bad.append,
                          max_line_size=50))
    assert got == [(b"b", b"2")] and bad[-1].line == 1


# ------------------------------------------------------------------- bounded lines

@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_over_long_line_is_a_bad_line_with_its_number(endpoint, db, tmp_path, fmt):
    def line(k, v):
        return (json.dumps({"key": k, "value": v}) + "\n" if fmt == "jsonl" else f"{k},{v}\n")
    source = tmp_path / f"in.{fmt}"
    source.write_text(line("a", "1") + line("b", "2") + line("big", "x" * 5000)
                      + line("c", "3") + line("d", "4"))
    rc, _, err = elevator(endpoint, "load", source, "--max-line-size", "1000", db=db.db_name)
    assert rc == 1 and _one_line_error(err) and "line 3" in err and "1000" in err, err
    assert _pairs(db) == [(b"a", b"1"), (b"b", b"2")]

    rc, _, err = elevator(endpoint, "load", source, "--max-line-size", "1000", "--skip-bad",
                          db=db.db_name)
    assert rc == 0 and "line 3:" in err and "1 bad lines skipped: 3" in err, err
    assert _pairs(db) == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3"), (b"d", b"4")]


def test_over_long_quoted_record_is_an_error_even_with_skip_bad(endpoint, db, tmp_path):
    # A quoted field that runs past the bound: where it ends is unknown, so nothing is guessed.
    source = tmp_path / "in.csv"
    source.write_text("a,1\n" + '"open,2\n' + "".join(f"x{i},{i}\n" for i in range(200)))
    rc, _, err = elevator(endpoint, "load", source, "--max-line-size", "500", "--skip-bad",
                          db=db.db_name)
    assert rc == 1 and "line 2" in err and "500" in err, err
    assert err.splitlines()[-1].startswith("elevator: error: ") and "Traceback" not in err
    assert _pairs(db) == [(b"a", b"1")]


def _peak_rss_of(cmd, timeout):
    """(exit code, stderr, seconds, peak RSS in MB) of ``cmd``, measured by a parent of its own."""
    probe = ("import resource, subprocess, sys, time\n"
             "t0 = time.monotonic()\n"
             "p = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,"
             " stderr=subprocess.PIPE)\n"
             "print(p.returncode, time.monotonic() - t0,"
             " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
             "sys.stdout.write(p.stderr.decode('utf-8', 'replace'))\n")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True,
                         timeout=timeout, env=_env()).stdout.decode()
    head, _, err = out.partition("\n")
    rc, seconds, mb = head.split()
    return int(rc), err, float(seconds), float(mb)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_load_of_dev_zero_is_a_prompt_error_in_bounded_memory(endpoint, fmt):
    rc, err, seconds, mb = _peak_rss_of(_cli(endpoint, "load", "/dev/zero", "--format", fmt),
                                        timeout=RUN_TIMEOUT)
    assert rc == 1 and _one_line_error(err), err
    assert "line 1" in err and str(16 * 1024 * 1024) in err, err
    assert seconds < 15, seconds
    assert mb < 200, f"peak RSS {mb:.0f} MB"


def test_batches_are_cut_by_bytes_under_the_servers_message_limit(tmp_path):
    value = "v" * 400_000
    source = tmp_path / "big.jsonl"
    source.write_text("".join(json.dumps({"key": f"k{i:02d}", "value": value}) + "\n"
                              for i in range(12)))
    (tmp_path / "data").mkdir()
    with ServerProcess(str(tmp_path / "data"), args=["--max-message-size", "2000000"]) as srv:
        rc, _, err = elevator(srv.endpoint, "load", source, "--batch-bytes", "1000000")
        assert (rc, err) == (0, "")
        with Elevator(endpoint=srv.endpoint) as e:
            assert [k for k, _ in e.RangeIter()] == [b"k%02d" % i for i in range(12)]
            # bulk.load itself: each batch ends at the pair that brings it to batch_bytes
            # (3 pairs of 400,003 bytes reach 900,000).
            report = bulk.load(e, ((b"b%02d" % i, value) for i in range(12)), batch_bytes=900_000)
            assert (report.pairs, report.batches) == (12, 4)


# ------------------------------------------------------- closed and broken std streams

def _shell(endpoint, args, redirect):
    cmd = " ".join(f"'{a}'" for a in _cli(endpoint, *args)) + " " + redirect
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=RUN_TIMEOUT,
                          env=_env())
    return proc.returncode, proc.stderr.decode("utf-8", "replace")


@pytest.mark.parametrize("args", [["dump"], ["get", "k0"], ["range"], ["listdb"], ["ping"],
                                  ["mget", "k0"], ["stats"]])
def test_closed_stdout_is_a_one_line_error(endpoint, db, args):
    db.Put(b"k0", b"v0")
    rc, err = _shell(endpoint, ["--db", db.db_name, *args], ">&-")
    assert rc == 1 and _one_line_error(err) and "stdout" in err, err


def test_closed_stdin_is_a_one_line_error(endpoint, db):
    rc, err = _shell(endpoint, ["--db", db.db_name, "load", "-"], "<&-")
    assert rc == 1 and _one_line_error(err) and "stdin" in err, err


def test_unreadable_stdin_is_a_one_line_error(endpoint, db, tmp_path):
    # stdin open for writing only: reading it fails with EBADF.
    rc, err = _shell(endpoint, ["--db", db.db_name, "load", "-"], f"0> '{tmp_path}/w'")
    assert rc == 1 and _one_line_error(err) and "stdin" in err, err


def test_dump_into_a_pipe_closed_early_is_a_one_line_error(endpoint, db):
    bulk.load(db, ((b"k%06d" % i, b"v" * 50) for i in range(20_000)))
    proc = subprocess.Popen(_cli(endpoint, "--db", db.db_name, "dump"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env())
    try:
        assert proc.stdout.readline().startswith(b'{"key": "k000000"')
        proc.stdout.close()  # elevator dump | head -1
        proc.wait(RUN_TIMEOUT)
        err = proc.stderr.read().decode("utf-8", "replace")
        assert proc.returncode == 1 and _one_line_error(err) and "stdout" in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stderr.close()
