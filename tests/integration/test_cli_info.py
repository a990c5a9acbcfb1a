"""`elevator info`: the server's INFO, as lines or one JSON object."""
import json
import os
import subprocess
import sys

from pyelevator_pool import Elevator


def elevator(endpoint, *args):
    cmd = [sys.executable, "-m", "pyelevator_pool.cli", "--endpoint", endpoint, "--timeout", "10"]
    env = dict(os.environ)
    env.pop("ELEVATOR_ENDPOINT", None)
    proc = subprocess.run(cmd + list(args), capture_output=True, timeout=60, env=env)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode("utf-8", "replace")


def test_info_json_and_text(endpoint):
    assert elevator(endpoint, "ping")[0] == 0
    rc, out, err = elevator(endpoint, "info", "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert info["pid"] > 0
    assert info["commands"]["PING"]["requests"] >= 1
    rc, out, err = elevator(endpoint, "info")
    assert rc == 0, err
    assert f"pid: {info['pid']}" in out
    assert any(line.startswith("PING: requests=") for line in out.splitlines())


def test_info_db_shows_one_database_with_leveldb_stats(endpoint, admin):
    admin.createdb("info_one")
    try:
        Elevator("info_one", pool=admin.pool).Put(b"k", b"v")
        rc, out, err = elevator(endpoint, "--db", "info_one", "info", "--json")
        assert rc == 0, err
        assert list(json.loads(out)["databases"]) == ["info_one"]
        rc, out, err = elevator(endpoint, "--db", "info_one", "info")
        assert rc == 0, err
        assert any(line.startswith("db info_one: ") and "keys_estimate=1" in line
                   for line in out.splitlines())
        assert "Compactions" in out
        rc, out, err = elevator(endpoint, "--db", "no_such_db", "info")
        assert rc == 1 and err.count("\n") == 1 and "createdb no_such_db" in err
    finally:
        admin.dropdb("info_one")
