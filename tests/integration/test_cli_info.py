"""`elevator info`: the server's INFO, as lines or one JSON object."""
import json
import os
import subprocess
import sys


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
