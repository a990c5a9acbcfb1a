"""Soak (slow, not in the default run: ``pytest -m slow tests/faults/test_soak.py -s``):
1,000,000 mixed operations from 32 threads through one pool, one server SIGKILL+restart
midway; fds, TCP connections and RSS of client and server must stay flat (tolerances in
tests/faults/soak.py: check_flat, also runnable as ``python tests/faults/soak.py``).
``SOAK_OPS`` sets another size."""
from __future__ import annotations

import os

import pytest

from soak import check_flat, run  # tests/faults/soak.py, beside this file


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_soak_one_million_ops_32_threads_one_restart_nothing_leaks(tmp_path):
    ops = int(os.environ.get("SOAK_OPS", "1000000"))
    result = run(ops, 32, restart=True, data_dir=str(tmp_path))
    assert result["ops"] == ops // 32 * 32
    assert result["wrong_count"] == 0, result["wrong"]
    assert result["errors"] == {}, result["errors"]  # the restart is ridden out by retries
    assert result["pool"]["retries"] > 0  # the restart really hit requests in flight
    assert check_flat(result) == [], result["snapshots"]
