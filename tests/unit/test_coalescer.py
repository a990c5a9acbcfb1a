"""The Coalescer's leader/follower logic with fake requests: no socket, no sleep. Threads
block on events the test controls, and the test waits for the queue to fill."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, List

import pytest

from pyelevator_pool import errors
from pyelevator_pool.coalesce import Coalescer

FAR = 60.0  # a deadline no test reaches


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        threading.Event().wait(0.001)  # yields to the other threads


class Harness:
    """A coalescer whose lone requests block until released, and whose merged requests
    are recorded and answered by ``answer``."""

    def __init__(self, coalescer: Coalescer, answer: Callable[[List[Any]], Any] = list) -> None:
        self.c = coalescer
        self.answer = answer
        self.release = threading.Event()
        self.merged: List[List[Any]] = []
        self.merged_deadlines: List[float] = []
        self.results: dict = {}
        self.threads: List[threading.Thread] = []

    def alone(self, item: Any) -> Callable[[], Any]:
        def send() -> Any:
            assert self.release.wait(FAR)
            return ["alone", item]
        return send

    def merged_request(self, items: List[Any], deadline: float) -> Any:
        self.merged.append(list(items))
        self.merged_deadlines.append(deadline)
        return self.answer(items)

    def start(self, name: str, items: List[Any], timeout: float = FAR, group: Any = "g") -> None:
        deadline = time.monotonic() + timeout

        def run() -> None:
            try:
                self.results[name] = self.c.call(group, items, 1, deadline, self.alone(items),
                                                 self.merged_request, f"call {name}")
            except BaseException as exc:  # the test inspects it
                self.results[name] = exc

        t = threading.Thread(target=run, name=name)
        self.threads.append(t)
        t.start()

    def join(self) -> None:
        for t in self.threads:
            t.join(FAR)
            assert not t.is_alive()


def test_a_lone_caller_sends_its_own_request_and_nothing_is_merged():
    c = Coalescer(max_alone=1)
    answer = c.call("g", ["k"], 1, time.monotonic() + FAR, lambda: "own",
                    lambda items, d: pytest.fail("merged"), "GET")
    assert answer == "own"
    assert (c.merged_calls, c.merged_requests, c.queued()) == (0, 0, 0)


def test_callers_that_find_one_in_flight_queue_and_go_as_one_request_in_queue_order():
    h = Harness(Coalescer(max_alone=1, max_in_flight=1))
    h.start("first", ["a"])
    wait_for(lambda: h.c._groups["g"].in_flight == 1)
    for i in range(5):
        h.start(f"q{i}", [f"k{i}"])
        wait_for(lambda: h.c.queued() == i + 1)  # each queued before the next starts
    h.release.set()
    h.join()
    assert h.results["first"] == ["alone", ["a"]]
    assert h.merged == [["k0", "k1", "k2", "k3", "k4"]]
    assert [h.results[f"q{i}"] for i in range(5)] == [[f"k{i}"] for i in range(5)]
    assert (h.c.merged_calls, h.c.merged_requests, h.c.queued()) == (5, 1, 0)


def test_each_member_gets_its_own_slice_of_a_merged_answer():
    h = Harness(Coalescer(), answer=lambda items: [x.upper() for x in items])
    h.start("first", ["x"])
    wait_for(lambda: h.c._groups["g"].in_flight == 1)
    h.start("one", ["a"])
    wait_for(lambda: h.c.queued() == 1)
    h.start("three", ["b", "c", "d"])
    wait_for(lambda: h.c.queued() == 2)
    h.release.set()
    h.join()
    assert h.results["one"] == ["A"] and h.results["three"] == ["B", "C", "D"]


def test_the_leader_is_the_member_with_the_latest_deadline():
    h = Harness(Coalescer())
    h.start("first", ["x"])
    wait_for(lambda: h.c._groups["g"].in_flight == 1)
    h.start("short", ["a"], timeout=30.0)
    wait_for(lambda: h.c.queued() == 1)
    before = time.monotonic()
    h.start("long", ["b"], timeout=50.0)
    wait_for(lambda: h.c.queued() == 2)
    h.release.set()
    h.join()
    assert h.merged_deadlines[0] >= before + 50.0  # the long caller's own deadline


def test_a_queued_caller_past_its_deadline_leaves_the_queue_unsent():
    h = Harness(Coalescer())
    h.start("first", ["x"])
    wait_for(lambda: h.c._groups["g"].in_flight == 1)
    h.start("late", ["a"], timeout=-1.0)  # its deadline has already passed
    h.threads[-1].join(FAR)
    exc = h.results["late"]
    assert isinstance(exc, errors.ElevatorTimeout) and exc.request_sent is False
    assert "never sent" in str(exc) and "call late" in str(exc)
    assert h.c.queued() == 0 and h.c.timeouts == 1
    h.start("next", ["b"])
    wait_for(lambda: h.c.queued() == 1)
    h.release.set()
    h.join()
    assert h.merged == [] and h.results["next"] == ["alone", ["b"]]  # a batch of one


def test_a_merged_member_past_its_deadline_stops_waiting_as_sent():
    in_merged = threading.Event()
    finish = threading.Event()

    def slow(items: List[Any]) -> List[Any]:
        in_merged.set()
        assert finish.wait(FAR)
        return list(items)

    h = Harness(Coalescer(), answer=slow)
    h.start("first", ["x"])
    wait_for(lambda: h.c._groups["g"].in_flight == 1)
    h.start("impatient", ["a"], timeout=3.0)
    wait_for(lambda: h.c.queued() == 1)
    h.start("patient", ["b"])
    wait_for(lambda: h.c.queued() == 2)
    h.release.set()
    assert in_merged.wait(FAR)
    h.threads[1].join(FAR)  # the impatient one gives up while the request is out
    exc = h.results["impatient"]
    assert isinstance(exc, errors.ElevatorTimeout) and exc.request_sent is True
    finish.set()
    h.join()
    assert h.results["patient"] == ["b"]


def test_a_merged_request_that_fails_fails_every_member_with_its_own_copy():
    def broken(items: List[Any]) -> List[Any]:
        raise errors.ConnectionError("server gone", request_sent=True)

    h = Harness(Coalescer(), answer=broken)
    h.start("first", ["x"])
    wait_for(lambda: h.c._groups["g"].in_flight == 1)
    for name in ("a", "b", "c"):
        h.start(name, [name])
        wait_for(lambda: h.c.queued() == "abc".index(name) + 1)
    h.release.set()
    h.join()
    failures = [h.results[n] for n in "abc"]
    assert all(isinstance(e, errors.ConnectionError) and e.request_sent for e in failures)
    assert len({id(e) for e in failures}) == 3  # no traceback shared across threads
    # the group is free again: the next caller goes on its own at once
    assert h.c.call("g", ["z"], 1, time.monotonic() + FAR, lambda: "own",
                    lambda items, d: pytest.fail("merged"), "GET") == "own"


def test_a_write_batch_answers_none_to_every_member():
    h = Harness(Coalescer(), answer=lambda items: None)
    h.start("first", ["x"])
    wait_for(lambda: h.c._groups["g"].in_flight == 1)
    h.start("p1", [("put", "k", "1")])
    wait_for(lambda: h.c.queued() == 1)
    h.start("p2", [("put", "k", "2")])
    wait_for(lambda: h.c.queued() == 2)
    h.release.set()
    h.join()
    assert h.merged == [[("put", "k", "1"), ("put", "k", "2")]]  # queue order
    assert h.results["p1"] is None and h.results["p2"] is None


def test_a_batch_never_exceeds_its_item_bound_and_the_rest_goes_next():
    h = Harness(Coalescer(max_items=3))
    h.start("first", ["x"])
    wait_for(lambda: h.c._groups["g"].in_flight == 1)
    for i in range(5):
        h.start(f"q{i}", [i])
        wait_for(lambda: h.c.queued() == i + 1)
    h.release.set()
    h.join()
    assert h.merged == [[0, 1, 2], [3, 4]]
    assert [h.results[f"q{i}"] for i in range(5)] == [[i] for i in range(5)]


def test_groups_do_not_mix():
    h = Harness(Coalescer())
    h.start("first", ["x"], group="db1")
    wait_for(lambda: h.c._groups["db1"].in_flight == 1)
    assert h.c.call("db2", ["y"], 1, time.monotonic() + FAR, lambda: "own",
                    lambda items, d: pytest.fail("merged"), "GET") == "own"
    h.release.set()
    h.join()


def test_a_child_after_fork_starts_with_empty_queues():
    h = Harness(Coalescer())
    h.start("first", ["x"])
    wait_for(lambda: h.c._groups["g"].in_flight == 1)
    h.c._reset()  # what os.register_at_fork runs in a child (tested for real in faults)
    assert h.c.call("g", ["y"], 1, time.monotonic() + FAR, lambda: "own",
                    lambda items, d: pytest.fail("merged"), "GET") == "own"
    h.release.set()
    h.join()
