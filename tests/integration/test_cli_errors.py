"""The CLI's errors name what to do in CLI terms: createdb for a missing database, "no
such file" for a missing input or key file, the target (never its temporary file) when
``dump -o`` cannot write it, and CLI flags (not Python) when CURVE fails. Each against a
real elevator-server, run as a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pyelevator_pool.security import generate_certificates
from pyelevator_pool.testing import ServerProcess

pytestmark = pytest.mark.timeout(180)


def elevator(endpoint, *args):
    """Run the CLI; returns (exit code, stderr text)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELEVATOR_")}
    proc = subprocess.run([sys.executable, "-m", "pyelevator_pool.cli", "--endpoint", endpoint,
                           "--timeout", "20", *[str(a) for a in args]],
                          capture_output=True, timeout=90, env=env, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stderr.decode("utf-8", "replace")


def one_line(err: str) -> str:
    assert err.count("\n") == 1, err
    assert "Traceback" not in err and "Error: " not in err.split("error: ", 1)[1], err
    return err


def test_a_missing_database_suggests_createdb(endpoint):
    for command in (["get", "k"], ["put", "k", "v"], ["dump"]):
        rc, err = elevator(endpoint, "--db", "no_such_cli_db", *command)
        assert rc == 1
        assert "'no_such_cli_db' does not exist" in one_line(err)
        assert "elevator createdb no_such_cli_db" in err


def test_a_missing_input_says_no_such_file(endpoint, tmp_path):
    rc, err = elevator(endpoint, "load", tmp_path / "absent.jsonl")
    assert rc == 1
    assert f"cannot read {str(tmp_path / 'absent.jsonl')!r}: no such file" in one_line(err).lower()


def test_dump_into_a_missing_directory_names_the_target(endpoint, tmp_path):
    target = tmp_path / "no-such-dir" / "out.jsonl"
    rc, err = elevator(endpoint, "dump", "-o", target)
    assert rc == 1
    assert f"cannot write {str(target)!r}: no such file" in one_line(err).lower()
    assert ".elevator-dump-" not in err


def test_dump_onto_a_directory_names_the_target_and_leaves_no_temporary_file(endpoint, tmp_path):
    target = tmp_path / "a-directory"
    target.mkdir()
    rc, err = elevator(endpoint, "dump", "--format", "jsonl", "-o", target)
    assert rc == 1
    assert f"cannot write {str(target)!r}: is a directory" in one_line(err).lower()
    assert ".elevator-dump-" not in err
    assert sorted(os.listdir(tmp_path)) == ["a-directory"]


# ---------------------------------------------------------------------------- CURVE

@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-keys")
    for name in ("server", "client", "other"):
        generate_certificates(str(root), name)
    authorized = root / "authorized"
    authorized.mkdir()
    (authorized / "client.key").write_bytes((root / "client.key").read_bytes())
    return root


@pytest.fixture(scope="module")
def curve_server(tmp_path_factory, keys):
    from pyelevator_pool import CurveKeys
    srv = ServerProcess(str(tmp_path_factory.mktemp("cli-curve")),
                        args=["--curve-secret-key", str(keys / "server.key_secret"),
                              "--curve-authorized-keys", str(keys / "authorized")],
                        security=CurveKeys.from_files(keys / "server.key",
                                                      keys / "client.key_secret"))
    srv.start()
    yield srv
    srv.stop()


def no_python(err: str) -> str:
    for python in ("CurveKeys", "curve=", "curve_server_key", "ValueError", "OSError"):
        assert python not in err, err
    return one_line(err)


def test_no_keys_for_a_curve_server_names_the_flags(curve_server):
    rc, err = elevator(curve_server.endpoint, "ping")
    assert rc == 1
    assert "the server requires CURVE: give --curve-server-key" in no_python(err)
    assert "--curve-client-key" in err


def test_keys_for_a_plain_server_say_leave_the_flags_out(server, keys):
    # libzmq reports a mismatch, or (when the server hangs up first) no more than for a
    # wrong server key: both pieces of advice say to leave the flags out
    rc, err = elevator(server.endpoint, "--curve-server-key", keys / "server.key",
                       "--curve-client-key", keys / "client.key_secret", "ping")
    assert rc == 1
    assert "leave out --curve-server-key and --curve-client-key" in no_python(err)


def test_a_wrong_server_key_names_the_flag(curve_server, keys):
    rc, err = elevator(curve_server.endpoint, "--curve-server-key", keys / "other.key",
                       "--curve-client-key", keys / "client.key_secret", "ping")
    assert rc == 1
    assert "check --curve-server-key" in no_python(err)


def test_a_refused_client_key_names_the_flag(curve_server, keys):
    rc, err = elevator(curve_server.endpoint, "--curve-server-key", keys / "server.key",
                       "--curve-client-key", keys / "other.key_secret", "ping")
    assert rc == 1
    assert "refused this client's CURVE key (--curve-client-key)" in no_python(err)
    assert "--curve-authorized-keys" in err


def test_bad_key_files_name_the_flag(curve_server, keys, tmp_path):
    empty = tmp_path / "empty.key"
    empty.write_text("# not a certificate\n")
    rc, err = elevator(curve_server.endpoint, "--curve-server-key", empty,
                       "--curve-client-key", keys / "client.key_secret", "ping")
    assert rc == 1 and f"--curve-server-key {str(empty)!r}:" in no_python(err)
    rc, err = elevator(curve_server.endpoint, "--curve-server-key", keys / "server.key",
                       "--curve-client-key", tmp_path / "absent.key_secret", "ping")
    assert rc == 1 and f"--curve-client-key {str(tmp_path / 'absent.key_secret')!r}: no such " \
                       "file" in no_python(err).lower()
    rc, err = elevator(curve_server.endpoint, "--curve-server-key", keys / "server.key",
                       "--curve-client-key", keys / "client.key", "ping")
    assert rc == 1 and "--curve-client-key" in no_python(err) and "key_secret" in err
