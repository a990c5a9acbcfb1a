"""The pytest plugin (pyelevator_pool.pytest_plugin), as a user's test suite meets it: a
test file run by pytest in a directory of its own, the plugin loaded by its entry point."""
from __future__ import annotations

pytest_plugins = ["pytester"]

RUN_TIMEOUT = 240.0

USER_TESTS = '''
import pytest

from pyelevator_pool import Elevator

NAMES = []


def test_put_then_get(elevator):
    NAMES.append(elevator.db_name)
    elevator.Put("hits", "1")
    assert elevator.Get("hits") == b"1"


def test_each_test_has_a_fresh_database(elevator):
    NAMES.append(elevator.db_name)
    assert not elevator.Exists("hits")  # the first test's key is not here
    with pytest.raises(KeyError):
        elevator.Get("hits")
    assert NAMES[0] != NAMES[1]


def test_the_databases_are_dropped_afterwards(elevator_server):
    client = Elevator(endpoint=elevator_server.endpoint)
    try:
        assert not set(NAMES) & set(client.listdb())
    finally:
        client.close()


def test_the_factory_starts_another_server(elevator_server, elevator_server_factory):
    other = elevator_server_factory(args=["--max-items", "1000"])
    assert other.endpoint.startswith("tcp://127.0.0.1:")
    assert other.endpoint != elevator_server.endpoint
    assert other.is_running()
'''

UNUSED = '''
import sys

import psutil


def test_nothing_started_or_imported():
    assert "plyvel" not in sys.modules
    assert "pyelevator_pool.testing" not in sys.modules
    assert psutil.Process().children(recursive=True) == []
'''


def test_a_users_tests_get_a_server_and_fresh_databases(pytester):
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=RUN_TIMEOUT)
    result.assert_outcomes(passed=4)


def test_the_plugin_starts_nothing_unless_its_fixtures_are_used(pytester):
    pytester.makepyfile(test_unused=UNUSED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=RUN_TIMEOUT)
    result.assert_outcomes(passed=1)


def test_the_plugin_is_registered(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("elevator")


def test_the_factory_refuses_a_data_dir(pytester):
    pytester.makepyfile(test_dir='''
import pytest

def test_refused(elevator_server_factory, tmp_path):
    with pytest.raises(TypeError, match="picks the data directory"):
        elevator_server_factory(data_dir=str(tmp_path))
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=RUN_TIMEOUT)
    result.assert_outcomes(passed=1)
