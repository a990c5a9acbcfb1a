"""gcpause.gc_paused: one process-wide pause of the cyclic GC, re-entrant across threads,
that puts back the state from before the first pauser, and is never inherited by a forked
child. No sockets, no sleeps: threads meet on events."""
from __future__ import annotations

import gc
import json
import os
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import pytest

from pyelevator_pool import gcpause
from pyelevator_pool.gcpause import gc_paused

JOIN = 10.0


@pytest.fixture(autouse=True)
def gc_state() -> Iterator[None]:
    """Each test starts with the GC enabled and no pauser, and leaves it as it was."""
    was = gc.isenabled()
    gc.enable()
    assert gcpause.pausers() == 0
    try:
        yield
    finally:
        assert gcpause.pausers() == 0
        (gc.enable if was else gc.disable)()


def test_a_pause_disables_the_gc_and_enables_it_after():
    with gc_paused():
        assert not gc.isenabled()
        assert gcpause.pausers() == 1
    assert gc.isenabled()


def test_pauses_nest():
    with gc_paused():
        with gc_paused():
            assert gcpause.pausers() == 2
        assert not gc.isenabled(), "the outer pause is still on"
    assert gc.isenabled()


def test_an_exception_ends_the_pause():
    with pytest.raises(KeyError):
        with gc_paused():
            raise KeyError("x")
    assert gc.isenabled() and gcpause.pausers() == 0


def test_a_gc_the_application_disabled_stays_disabled():
    gc.disable()
    with gc_paused():
        with gc_paused():
            pass
        assert not gc.isenabled()
    assert not gc.isenabled()
    gc.enable()
    with gc_paused():  # and the next pause sees the new state
        pass
    assert gc.isenabled()


def test_the_last_thread_to_leave_enables_it_whoever_came_first():
    first_in, second_in = threading.Event(), threading.Event()
    first_may_leave, first_left = threading.Event(), threading.Event()
    second_may_leave = threading.Event()
    seen = {}

    def first() -> None:
        with gc_paused():
            first_in.set()
            assert first_may_leave.wait(JOIN)
        seen["after first"] = gc.isenabled()
        first_left.set()

    def second() -> None:
        assert first_in.wait(JOIN)
        with gc_paused():
            second_in.set()
            assert second_may_leave.wait(JOIN)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    try:
        assert second_in.wait(JOIN)
        assert gcpause.pausers() == 2 and not gc.isenabled()
        first_may_leave.set()  # the first to pause leaves first: the second still pauses
        assert first_left.wait(JOIN)
        assert seen["after first"] is False and not gc.isenabled()
    finally:
        first_may_leave.set()
        second_may_leave.set()
        for t in threads:
            t.join(JOIN)
    assert gc.isenabled()


def test_many_threads_pausing_at_once_leave_it_enabled():
    start = threading.Barrier(8)

    def pause_often() -> None:
        start.wait(JOIN)
        for _ in range(2000):
            with gc_paused():
                with gc_paused():
                    pass

    threads = [threading.Thread(target=pause_often) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN)
    assert gc.isenabled() and gcpause.pausers() == 0


# ---------------------------------------------------------------------------- fork

def _in_a_child(report: Callable[[], dict]) -> dict:
    """Run ``report`` in a forked child; its dict comes back through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            os.close(r)
            data = json.dumps(report()).encode()
        except BaseException as exc:  # noqa: BLE001 - say it to the parent
            data, code = json.dumps({"error": repr(exc)}).encode(), 1
        os.write(w, data)
        os.close(w)
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, data
    return json.loads(data)


def _child_report() -> dict:
    enabled, pausers = gc.isenabled(), gcpause.pausers()
    with gc_paused():
        paused = not gc.isenabled()
    return {"enabled": enabled, "pausers": pausers, "paused": paused,
            "after": gc.isenabled()}


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@contextmanager
def _held_by_another_thread() -> Iterator[None]:
    """A pause held by a thread a forked child will not have."""
    inside, leave = threading.Event(), threading.Event()

    def pauser() -> None:
        with gc_paused():
            inside.set()
            leave.wait(JOIN)

    t = threading.Thread(target=pauser)
    t.start()
    try:
        assert inside.wait(JOIN)
        yield
    finally:
        leave.set()
        t.join(JOIN)


PAUSES = {"another thread's": _held_by_another_thread, "the forking thread's": gc_paused}


@needs_fork
@pytest.mark.parametrize("enabled", [True, False], ids=["gc on", "gc disabled by the app"])
@pytest.mark.parametrize("pause", sorted(PAUSES))
def test_a_child_forked_during_a_pause_has_the_state_from_before_it(pause, enabled):
    (gc.enable if enabled else gc.disable)()
    with PAUSES[pause]():
        assert not gc.isenabled()
        report = _in_a_child(_child_report)
        assert not gc.isenabled(), "the parent is still paused"
    assert gc.isenabled() is enabled
    assert report == {"enabled": enabled, "pausers": 0, "paused": True, "after": enabled}


@needs_fork
def test_a_pause_begun_before_the_fork_and_ended_in_the_child_leaves_its_count_alone():
    before_fork = gc_paused()
    before_fork.__enter__()
    try:
        def child() -> dict:
            with gc_paused():  # the child's own pause...
                before_fork.__exit__(None, None, None)  # ...outlives the inherited one
                still_paused, count = not gc.isenabled(), gcpause.pausers()
            return {"still_paused": still_paused, "count": count,
                    "after": gc.isenabled(), "final": gcpause.pausers()}

        got = _in_a_child(child)
    finally:
        before_fork.__exit__(None, None, None)
    assert gc.isenabled()
    assert got == {"still_paused": True, "count": 1, "after": True, "final": 0}
