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
