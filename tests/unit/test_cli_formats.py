"""CSV/TSV files with NUL bytes: the same bytes on every Python (csv before 3.11 refused NUL)."""
from __future__ import annotations

import io

import pytest

from pyelevator_pool.cli import read_pairs, write_pairs

PAIRS = [(b"a\x00b", b"\x00"), (b"quoted\x00", b"x,\x00\"y\"")]
EXPECTED = {
    "csv": b'a\x00b,\x00\nquoted\x00,"x,\x00""y"""\n',
    "tsv": b'a\x00b\t\x00\nquoted\x00\t"x,\x00""y"""\n',
}


def _dump(fmt: str, pairs) -> bytes:
    buf = io.BytesIO()
    text = io.TextIOWrapper(buf, encoding="utf-8", errors="surrogateescape", newline="")
    write = write_pairs(text, fmt)
    for key, value in pairs:
        write(key, value)
    text.flush()
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_nul_bytes_are_written_as_themselves(fmt):
    assert _dump(fmt, PAIRS) == EXPECTED[fmt]


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_nul_bytes_are_read_back_byte_for_byte(fmt):
    assert list(read_pairs(io.BytesIO(EXPECTED[fmt]), fmt)) == PAIRS


def test_a_quoted_nul_is_read_too():
    assert list(read_pairs(io.BytesIO(b'"\x00k","v\x00"\n'), "csv")) == [(b"\x00k", b"v\x00")]
