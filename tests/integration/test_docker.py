"""The Dockerfile's server command line, run here exactly as the container would run it.

No docker engine is needed: the test parses the CMD/ENTRYPOINT of the Dockerfile's last
stage (the default build target), substitutes only the data dir (``--data-dir``), the
ports (``--port``, ``--metrics-port``) and the bind address (``--bind 0.0.0.0`` becomes
``127.0.0.1``, because the tests' traffic stays on loopback), runs that command, and checks
the server answers PING and a metrics scrape on the substituted ports.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from pyelevator_pool.testing import ping
from scrape import free_port, scrape, value

from paths import ROOT
DOCKERFILE = ROOT / "Dockerfile"
START_TIMEOUT = 20.0  # seconds for the server to answer PING


def _instructions(text: str) -> List[tuple]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _command(value: str) -> List[str]:
    value = value.strip()
    if value.startswith("["):
        return json.loads(value)  # exec form
    return ["/bin/sh", "-c", value]  # shell form


def parse_final_stage(text: str) -> Dict[str, object]:
    """The default target's settings: base image, user, volumes, ports, CMD, ENTRYPOINT
    (inherited along FROM <stage> chains)."""
    stages: Dict[str, Dict[str, object]] = {}
    order: List[Dict[str, object]] = []
    current: Optional[Dict[str, object]] = None
    for word, rest in _instructions(text):
        if word == "FROM":
            parts = rest.split()
            image = parts[0]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            parent = stages.get(image)
            current = dict(parent) if parent else {"base": image, "user": None, "volumes": [],
                                                   "expose": [], "cmd": None, "entrypoint": None}
            current["volumes"] = list(current["volumes"])  # type: ignore[arg-type]
            current["expose"] = list(current["expose"])  # type: ignore[arg-type]
            if name:
                stages[name] = current
            order.append(current)
        elif current is None:
            continue  # ARG before FROM
        elif word == "CMD":
            current["cmd"] = _command(rest)
        elif word == "ENTRYPOINT":
            current["entrypoint"] = _command(rest)
            current["cmd"] = None  # an ENTRYPOINT resets an inherited CMD
        elif word == "USER":
            current["user"] = rest.split(":")[0]
        elif word == "VOLUME":
            vols = json.loads(rest) if rest.startswith("[") else rest.split()
            current["volumes"].extend(vols)  # type: ignore[union-attr]
        elif word == "EXPOSE":
            current["expose"].extend(rest.split())  # type: ignore[union-attr]
    assert order, "the Dockerfile has no FROM"
    return order[-1]


@pytest.fixture(scope="module")
def final_stage() -> Dict[str, object]:
    return parse_final_stage(DOCKERFILE.read_text())


def server_command(stage: Dict[str, object]) -> List[str]:
    return list(stage["entrypoint"] or []) + list(stage["cmd"] or [])  # type: ignore[arg-type]


def test_dockerfile_builds_the_slim_python_image_as_a_non_root_user(final_stage):
    assert final_stage["base"] == "python:3.11-slim"
    assert final_stage["user"] not in (None, "root", "0")
    assert "/data" in final_stage["volumes"]
    assert "4141" in final_stage["expose"]
    assert "9141" in final_stage["expose"]
    text = DOCKERFILE.read_text()
    # the CMD serves metrics: the image must hold prometheus_client
    assert '[server,metrics]' in text and "pip install" in text


def test_dockerfile_server_binds_every_interface_on_4141_with_data_in_the_volume(final_stage):
    cmd = server_command(final_stage)
    assert cmd[cmd.index("--bind") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--port") + 1] == "4141"
    assert cmd[cmd.index("--data-dir") + 1] in final_stage["volumes"]
    assert cmd[cmd.index("--metrics-port") + 1] == "9141"


def _resolve(executable: str) -> List[str]:
    """The console script as installed next to this interpreter (a venv) or on PATH."""
    if os.sep in executable:
        return [executable]
    beside = Path(sys.executable).parent / executable
    if beside.exists():
        return [str(beside)]
    found = shutil.which(executable)
    if found:
        return [found]
    pytest.fail(f"{executable!r} (the Dockerfile's command) is not installed: "
                "pip install -e '.[server]'")


def test_dockerfile_cmd_runs_the_server_and_it_answers_ping(final_stage, tmp_path):
    cmd = server_command(final_stage)
    port, metrics_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    argv = list(cmd)
    argv[argv.index("--data-dir") + 1] = str(data_dir)
    argv[argv.index("--port") + 1] = str(port)
    argv[argv.index("--metrics-port") + 1] = str(metrics_port)
    # Documented substitution: the tests keep their traffic on loopback.
    argv[argv.index("--bind") + 1] = "127.0.0.1"
    argv = _resolve(argv[0]) + argv[1:]
    # Exactly the Dockerfile's command line but for those three values.
    assert [a for a in argv[1:]
            if a not in (str(data_dir), str(port), str(metrics_port), "127.0.0.1")] == \
        [a for a in cmd[1:] if a not in ("/data", "4141", "9141", "0.0.0.0")]
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=str(tmp_path))
    endpoint = f"tcp://127.0.0.1:{port}"
    try:
        answered = False
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            if ping(endpoint, timeout=0.5):
                answered = True
                break
        log.flush()
        assert answered, (f"{shlex.join(argv)} did not answer PING in {START_TIMEOUT}s:\n"
                          + (tmp_path / "server.log").read_text(errors="replace"))
        assert (data_dir / "store.json").exists()  # the data went where --data-dir said
        samples, _ = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert value(samples, "elevator_db_mounted", db="default") == 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()
    assert proc.returncode == 0  # SIGTERM is a clean stop
