"""A client or pool the program never closed must not hang it when the garbage collector
frees it: a pool is a reference cycle, and collecting the cycle used to leave pyzmq's
Context.__del__ terminating a context whose sockets were not closed yet (forever)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

RUN_TIMEOUT = 60  # seconds: each script takes well under one; a hang is what fails


def _run(endpoint: str, body: str) -> subprocess.CompletedProcess:
    script = textwrap.dedent("""\
        import gc, os, sys
        from pyelevator_pool import Elevator, ElevatorPool
        endpoint = sys.argv[1]
        """) + textwrap.dedent(body) + "\nprint('collected', flush=True)\n"
    try:
        return subprocess.run([sys.executable, "-c", script, endpoint], capture_output=True,
                              text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the process hung freeing an unclosed client: {exc.stdout!r} {exc.stderr!r}")


@pytest.mark.parametrize("body", [
    # an Elevator with a pool of its own, dropped, then a collection
    """
    E = Elevator(endpoint=endpoint)
    E.Put("unclosed", "1")
    E = None
    gc.collect()
    """,
    # a shared pool and its clients, coalescing on and off, sockets opened by threads
    """
    import threading
    pool = ElevatorPool(endpoint, max_size=4)
    clients = [Elevator(pool=pool), Elevator(pool=pool, coalesce=False)]
    threads = [threading.Thread(target=lambda c=c: [c.Get("unclosed") for _ in range(20)])
               for c in clients * 3]
    for t in threads: t.start()
    for t in threads: t.join(30)
    assert pool.stats()["size"] >= 1
    del pool, clients, threads, t
    gc.collect()
    """,
    # the pool given a context it does not own: its sockets close, the context stays usable
    """
    import zmq
    ctx = zmq.Context()
    E = Elevator(endpoint=endpoint, context=ctx)
    E.Get("unclosed")
    E = None
    gc.collect()
    ctx.term()
    """,
], ids=["own-pool", "shared-pool-threads", "given-context"])
def test_an_unclosed_client_is_freed_without_hanging_the_process(admin, endpoint, body):
    admin.Put("unclosed", "1")
    proc = _run(endpoint, body)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("collected")
