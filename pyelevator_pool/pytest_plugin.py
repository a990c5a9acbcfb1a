"""pytest fixtures for testing your own code against a real Elevator server.

Installed with the package (a ``pytest11`` entry point), so any test can ask for them::

    def test_counter(elevator):
        elevator.Put("hits", "1")
        assert elevator.Get("hits") == b"1"

* ``elevator_server``: one real ``elevator-server`` for the whole session, in a
  temporary directory on a free loopback port (a :class:`~pyelevator_pool.testing.ServerProcess`;
  its ``endpoint`` is ``tcp://127.0.0.1:PORT``). Needs the ``server`` extra (plyvel).
* ``elevator_server_factory``: a function starting more servers, each in its own
  temporary directory, with the keywords of ``ServerProcess`` (``args=["--max-items",
  "1000"]``...); they are stopped at the end of the session.
* ``elevator``: an :class:`~pyelevator_pool.Elevator` bound to a fresh database of the
  test's own on ``elevator_server``, dropped after the test.

Nothing is imported or started until a test uses one of them.
"""
from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterator, List

import pytest

if TYPE_CHECKING:
    from .client import Elevator
    from .testing import ServerProcess

__all__ = ["elevator_server_factory", "elevator_server", "elevator"]


@pytest.fixture(scope="session")
def elevator_server_factory(tmp_path_factory: pytest.TempPathFactory
                            ) -> Iterator[Callable[..., "ServerProcess"]]:
    """A function ``factory(**kwargs)`` that starts a real server in a temporary directory
    on a free loopback port and returns its ``ServerProcess`` (``kwargs`` go to
    ``ServerProcess``, e.g. ``args=[...]`` for more flags); all are stopped at the end of
    the session."""
    from .testing import ServerProcess

    started: List[ServerProcess] = []

    def factory(**kwargs: Any) -> ServerProcess:
        if "data_dir" in kwargs:
            raise TypeError("elevator_server_factory picks the data directory itself; "
                            "start a ServerProcess directly for a directory of your own")
        server = ServerProcess(str(tmp_path_factory.mktemp("elevator")), **kwargs)
        server.start()
        started.append(server)
        return server

    yield factory
    for server in reversed(started):
        server.stop()


@pytest.fixture(scope="session")
def elevator_server(elevator_server_factory: Callable[..., "ServerProcess"]) -> "ServerProcess":
    """One real server for the session; ``elevator_server.endpoint`` is its address."""
    return elevator_server_factory()


@pytest.fixture
def elevator(elevator_server: "ServerProcess", request: pytest.FixtureRequest
             ) -> Iterator["Elevator"]:
    """A client bound to a fresh database of this test's own on ``elevator_server``
    (named after the test), dropped afterwards."""
    from .client import Elevator

    name = ("test_" + re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:60]
            + "_" + uuid.uuid4().hex[:8])
    admin = Elevator(endpoint=elevator_server.endpoint)
    try:
        admin.createdb(name)
        client = Elevator(name, pool=admin.pool)
        yield client
        admin.dropdb(name)
    finally:
        admin.close()
