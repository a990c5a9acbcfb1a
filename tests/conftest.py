"""Fixtures: a real elevator-server process on a free loopback port in a temporary directory."""
from __future__ import annotations

import re

import pytest

from pyelevator_pool import Elevator
from pyelevator_pool.testing import ServerProcess
from rawclient import RawClient


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real server shared by the tests of a module (they must use distinct keys or dbs)."""
    srv = ServerProcess(str(tmp_path_factory.mktemp("elevator")))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def fresh_server(tmp_path):
    """A server of the test's own, for tests that kill, restart or drop things."""
    srv = ServerProcess(str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    """A raw DEALER client (tests/rawclient.py) on the module's server."""
    with RawClient(server.endpoint) as c:
        yield c


@pytest.fixture(scope="module")
def uid(client):
    """The uid of the 'default' database."""
    return client.uid("default")


@pytest.fixture(scope="module")
def endpoint(server):
    return server.endpoint


@pytest.fixture(scope="module")
def admin(server):
    """A client of the module's server, bound to 'default', for database management."""
    client = Elevator(endpoint=server.endpoint)
    yield client
    client.close()


@pytest.fixture(params=[True, False], ids=["coalesce", "plain"])
def db(admin, request):
    """A client bound to a fresh database of the test's own on the module's server,
    sharing the admin client's pool; the database is dropped afterwards. Every test
    runs with coalescing on (the default) and off."""
    name = "t_" + re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:80]
    if name in admin.listdb():
        admin.dropdb(name)
    admin.createdb(name)
    client = Elevator(name, pool=admin.pool, coalesce=request.param)
    yield client
    admin.dropdb(name)
