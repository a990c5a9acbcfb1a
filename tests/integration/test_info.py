"""INFO (extension): the server's statistics, through Elevator.info()."""


def test_info_counts_requests_and_failures_by_command(db):
    client = db
    client.Put(b"k", b"v")
    for _ in range(5):
        client.Get(b"k")
    before = client.info()
    assert before["pid"] > 0 and before["uptime"] >= 0
    assert before["data_dir"]
    get = before["commands"]["GET"]
    assert get["requests"] >= 5
    assert 0 < get["p50"] <= get["p99"] <= get["max"]
    try:
        client.Get(b"absent")
    except Exception:
        pass
    after = client.info()
    assert after["commands"]["GET"]["requests"] == get["requests"] + 1
    assert sum(after["commands"]["GET"]["failures"].values()) == sum(get["failures"].values()) + 1
    assert after["requests"] > before["requests"]


def test_info_reports_connections_queues_and_each_database(db):
    for i in range(1500):  # past the key sample: the count is then an estimate
        db.Put(b"k%04d" % i, b"v" * 20)
    info = db.info()
    assert info["connections_total"] >= 1 and info["connections"] >= 0
    assert set(info["queues"]) == {"heavy_waiting", "heavy_running", "streams",
                                   "backlogged_clients"}
    assert all(isinstance(n, int) and n >= 0 for n in info["queues"].values())
    mine = info["databases"][db.db_name]
    assert mine["mounted"] is True and mine["path"].endswith(db.db_name)
    assert mine["size_bytes"] > 0 and 0 <= mine["idle"] < 60
    assert "Compactions" in mine["leveldb_stats"]
    assert mine["keys_estimate"] >= 1000  # at least the sample it read


def test_a_small_database_has_an_exact_key_count_and_an_unmounted_one_none(db):
    db.Put(b"a", b"1")
    db.Put(b"b", b"2")
    assert db.info()["databases"][db.db_name]["keys_estimate"] == 2
    db.unmount()
    unmounted = db.info()["databases"][db.db_name]
    assert unmounted["mounted"] is False
    assert unmounted["keys_estimate"] is None and unmounted["leveldb_stats"] is None
    assert db.Get(b"a") == b"1"  # INFO did not mount it; a call does
