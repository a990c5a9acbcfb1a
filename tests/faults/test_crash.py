"""Crash consistency: a WriteBatch in flight when the server is SIGKILLed is either fully
present or fully absent after the restart, never partly; an acknowledged one is present.

Each round writes a marker key, sends one BATCH (thousands of puts plus the marker's
delete) on a raw socket, waits a varying delay (spread over 1.2x the time a batch takes,
so kills land before, during and after the write), SIGKILLs the server, restarts it, and
looks at what survived. 50 rounds take ~10 s, so they are part of the default run.
"""
from __future__ import annotations

import time
from collections import Counter

import pytest
from rawclient import RawClient

from pyelevator_pool import protocol
from pyelevator_pool.protocol import Status
from pyelevator_pool.testing import ServerProcess

OPS = 10_000                   # puts per batch, plus one delete
VALUE = b"c" * 200             # ~2 MB of batch: long enough to be killed in the middle


def batch_ops(round_no: int):
    prefix = b"crash:%03d:" % round_no
    return ([[1, prefix + b"%05d" % j, VALUE] for j in range(OPS)]
            + [[0, prefix + b"marker"]])


def survivors(client: RawClient, uid: str, round_no: int):
    prefix = b"crash:%03d:" % round_no
    values = client.call(protocol.MGET, [[prefix + b"%05d" % j for j in range(OPS)]], uid).datas
    present = sum(v is not None for v in values)
    marker = client.call(protocol.EXISTS, [prefix + b"marker"], uid).datas == [True]
    return present, marker


def run_rounds(tmp_path, rounds: int) -> Counter:
    outcomes: Counter = Counter()
    with ServerProcess(str(tmp_path)) as srv:
        with RawClient(srv.endpoint) as c:  # how long one batch takes on this machine, now
            uid = c.uid()
            times = []
            for _ in range(3):
                start = time.monotonic()
                assert c.call(protocol.BATCH, [batch_ops(999)], uid).status == Status.SUCCESS
                times.append(time.monotonic() - start)
            batch_time = sorted(times)[1]
        for n in range(rounds):
            delay = 1.2 * batch_time * n / max(rounds - 1, 1)
            with RawClient(srv.endpoint) as c:
                uid = c.uid()
                marker = b"crash:%03d:marker" % n
                assert c.call(protocol.PUT, [marker, b"m"], uid).status == Status.SUCCESS
                c.sock.send(protocol.encode_request(protocol.BATCH, [batch_ops(n)], uid))
                # Wait out the delay, noting whether the batch was acknowledged meanwhile.
                acknowledged = bool(c.sock.poll(int(delay * 1000)))
                srv.kill()
            srv.start()
            with RawClient(srv.endpoint) as c:
                present, marker_left = survivors(c, c.uid(), n)
            if present == OPS and not marker_left:
                outcomes["present"] += 1
            elif present == 0 and marker_left:
                outcomes["absent"] += 1
            else:
                outcomes["partial"] += 1
            if acknowledged:
                outcomes["acknowledged"] += 1
                assert present == OPS and not marker_left, f"round {n}: acknowledged batch lost"
    print(f"\ncrash consistency: {rounds} rounds of a {OPS + 1}-op batch killed 0..{1.2 * batch_time:.3f}s "
          f"after the send: present={outcomes['present']} absent={outcomes['absent']} "
          f"partial={outcomes['partial']} (acknowledged before the kill: {outcomes['acknowledged']})")
    return outcomes


def check(outcomes: Counter, rounds: int) -> None:
    assert outcomes["partial"] == 0, outcomes
    assert outcomes["present"] + outcomes["absent"] == rounds


@pytest.mark.timeout(240)
def test_batch_killed_in_flight_is_all_or_nothing_50_rounds(tmp_path):
    check(run_rounds(tmp_path, 50), 50)
