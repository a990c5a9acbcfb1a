"""args.py: one rule for every public argument (a wrong type is a TypeError; out of
range, NaN or infinity a ValueError; the message names the argument and the value), and
the command lines' types made from it (argparsing.arg_type). No sockets."""
from __future__ import annotations

import argparse
import math

import pytest

from pyelevator_pool import args
from pyelevator_pool.argparsing import Parser, arg_type

NAN, INF = math.nan, math.inf


# --------------------------------------------------------------------- number

@pytest.mark.parametrize("value", [1, 0.5, 1e300, 7])
def test_number_returns_a_finite_number_above_the_minimum(value):
    assert args.number("size", value) == value


@pytest.mark.parametrize("value", [True, False, "1", None, b"1", [1], 1j])
def test_number_of_another_type_is_a_type_error_naming_it(value):
    with pytest.raises(TypeError, match=f"^size must be a number, not {type(value).__name__}$"):
        args.number("size", value)


@pytest.mark.parametrize("value", [0, -1, -0.5, NAN, INF, -INF])
def test_number_out_of_range_nan_or_infinite_is_a_value_error_naming_it(value):
    with pytest.raises(ValueError) as info:
        args.number("size", value)
    assert str(info.value).startswith("size must be > 0")
    assert repr(value) in str(info.value)


def test_number_minimum_and_inclusive():
    assert args.number("n", 0, inclusive=True) == 0
    assert args.number("n", 2.5, minimum=2) == 2.5
    with pytest.raises(ValueError, match=r"^n must be >= 2 \(and finite\), not 1$"):
        args.number("n", 1, minimum=2, inclusive=True)
    with pytest.raises(ValueError, match="not nan"):
        args.number("n", NAN, inclusive=True)
    with pytest.raises(ValueError, match="not inf"):
        args.number("n", INF, inclusive=True)


# -------------------------------------------------------------------- integer

def test_integer_bounds():
    assert args.integer("count", 0) == 0
    assert args.integer("count", 5, minimum=5, maximum=5) == 5
    with pytest.raises(ValueError, match=r"^count must be >= 0, not -1$"):
        args.integer("count", -1)
    with pytest.raises(ValueError, match=r"^count must be >= 3, not 2$"):
        args.integer("count", 2, minimum=3)
    with pytest.raises(ValueError, match=r"^count must be <= 9, not 10$"):
        args.integer("count", 10, maximum=9)


@pytest.mark.parametrize("value", [True, False, 1.0, NAN, INF, "3", None])
def test_integer_of_another_type_is_a_type_error_even_bool_and_whole_floats(value):
    with pytest.raises(TypeError, match=f"^count must be an int, not {type(value).__name__}$"):
        args.integer("count", value)


# -------------------------------------------------------------------- timeout

def test_timeout_is_none_or_a_positive_finite_float():
    assert args.timeout(None) is None
    assert args.timeout(2) == 2.0 and isinstance(args.timeout(2), float)
    assert args.timeout(0.25) == 0.25


@pytest.mark.parametrize("value", [0, -1, NAN, INF])
def test_timeout_out_of_range_is_a_value_error_naming_it(value):
    with pytest.raises(ValueError, match="^timeout must be > 0"):
        args.timeout(value)
    with pytest.raises(ValueError, match="^checkout_timeout must be > 0"):
        args.timeout(value, "checkout_timeout")


@pytest.mark.parametrize("value", [True, "1", [1]])
def test_timeout_of_another_type_is_a_type_error(value):
    with pytest.raises(TypeError, match="^timeout must be a number"):
        args.timeout(value)


# ---------------------------------------------------------------- the others

def test_boolean():
    assert args.boolean("fill_cache", True) is True
    assert args.boolean("fill_cache", False) is False
    for value in (0, 1, "yes", None):
        with pytest.raises(TypeError, match="^fill_cache must be a bool, not "):
            args.boolean("fill_cache", value)


def test_db_name():
    assert args.db_name("default") == "default"
    with pytest.raises(TypeError, match="^database name must be a str, not bytes$"):
        args.db_name(b"default")
    with pytest.raises(ValueError, match="^database name must not be empty$"):
        args.db_name("")


def test_to_bytes_and_optional_bytes():
    assert args.to_bytes(b"k") == b"k"
    assert args.to_bytes("é") == "é".encode("utf-8")
    assert args.to_bytes(bytearray(b"k")) == b"k" and args.to_bytes(memoryview(b"k")) == b"k"
    assert type(args.to_bytes(bytearray(b"k"))) is bytes
    with pytest.raises(TypeError, match="^key must be str or bytes, not int$"):
        args.to_bytes(1)
    with pytest.raises(TypeError, match="^value must be str or bytes, not NoneType$"):
        args.to_bytes(None, "value")
    assert args.optional_bytes(None, "start") is None
    assert args.optional_bytes("a", "start") == b"a"
    with pytest.raises(TypeError, match="^start must be str or bytes"):
        args.optional_bytes(1.5, "start")


# ------------------------------------------------------ command-line types

def test_arg_type_converts_then_checks_with_the_same_message():
    port = arg_type("port", args.integer, maximum=65535)
    assert port("4141") == 4141 and port(" 0 ") == 0
    with pytest.raises(argparse.ArgumentTypeError, match=r"^port must be <= 65535, not 70000$"):
        port("70000")
    with pytest.raises(argparse.ArgumentTypeError, match=r"^port must be >= 0, not -1$"):
        port("-1")
    with pytest.raises(argparse.ArgumentTypeError,
                       match=r"^port must be an integer, not 'http'$"):
        port("http")


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "0", "1e999"])
def test_arg_type_of_seconds_refuses_nan_infinity_and_zero(text):
    seconds = arg_type("timeout", args.number, convert=float, expected="a number")
    with pytest.raises(argparse.ArgumentTypeError, match="^timeout must be > 0"):
        seconds(text)


def test_a_parser_error_is_one_line_exit_2(capsys):
    p = Parser(prog="prog")
    p.add_argument("--n", type=arg_type("n", args.integer, minimum=1))
    with pytest.raises(SystemExit) as info:
        p.parse_args(["--n", "0"])
    assert info.value.code == 2
    assert capsys.readouterr().err == \
        "prog: error: argument --n: n must be >= 1, not 0 (see --help)\n"
    sub = p.add_subparsers(parser_class=Parser).add_parser("cmd", error_prog="prog")
    sub.add_argument("x")
    with pytest.raises(SystemExit):
        p.parse_args(["cmd"])
    assert capsys.readouterr().err.startswith("prog: error: ")


def test_the_command_lines_use_the_rule():
    from pyelevator_pool.cli import build_parser as client_parser
    from pyelevator_pool.server.__main__ import build_parser as server_parser
    with pytest.raises(SystemExit):
        client_parser().parse_args(["load", "f", "--max-line-size", "0"])
    got = server_parser().parse_args(["--max-keys", "1_000_000", "--max-message-size",
                                      "1,000,000", "--unmount-after", "0", "--port", "0"])
    assert (got.max_keys, got.max_message_size, got.unmount_after, got.port) == \
        (1_000_000, 1_000_000, 0.0, 0)
    got = client_parser().parse_args(["load", "f", "--max-line-size", "16M",
                                      "--batch-bytes", "1GiB", "--timeout", "2.5"])
    assert (got.max_line_size, got.batch_bytes, got.timeout) == (16 << 20, 1 << 30, 2.5)


def test_a_key_name_of_another_type_is_a_type_error(tmp_path):
    from pyelevator_pool.security import generate_certificates
    with pytest.raises(TypeError, match="^key name must be a str, not bytes$"):
        generate_certificates(tmp_path, b"server")
    with pytest.raises(ValueError, match="^key name must be a plain file name"):
        generate_certificates(tmp_path, ".hidden")
    assert list(tmp_path.iterdir()) == []


def test_an_endpoint_of_another_type_is_a_type_error_and_an_empty_one_a_value_error():
    from pyelevator_pool.connection import normalize_endpoint
    assert normalize_endpoint("h:1") == "tcp://h:1"
    for value in (None, 4141, b"h:1"):
        with pytest.raises(TypeError, match="^endpoint must be a str, not "):
            normalize_endpoint(value)  # type: ignore[arg-type]
    for text in ("", "h", "udp://h:1"):
        with pytest.raises(ValueError, match="endpoint"):
            normalize_endpoint(text)
