"""A user's program written from the README's examples; must pass ``mypy --strict``
(tests/unit/test_typing.py). Never run: it type-checks the documented API only."""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple

import tenacity

from pyelevator_pool import (NO_RETRY, CurveKeys, DatabaseError, Elevator, ElevatorKeyError,
                             ElevatorPool, ElevatorTimeout, LimitExceeded, PoolStats, PoolTimeout,
                             RetryPolicy, WriteBatch)
from pyelevator_pool.bulk import BulkLoadError, LoadReport, dump, load


def usage() -> None:
    E = Elevator()
    E.createdb("testdb", {"bloom_filter_bits": 10})
    E.connect("testdb")
    try:
        E.connect("dbthatdoesntexist")
    except DatabaseError as exc:
        print(exc, E.db_name)
    E.repairdb()
    E.dropdb("testdb")
    names: List[str] = E.listdb()
    E.mount("default")
    E.unmount("default")
    E.Put("abc", "123")
    E.Put(b"abc", b"123", timeout=2.5)
    value: bytes = E.Get("abc")
    values: List[Optional[bytes]] = E.MGet(["abc", "you and me"], fill_cache=True)
    E.Delete("abc")
    for i in range(10):
        E.Put(str(i), str(i))
    items: List[List[bytes]] = E.Range("1", "3")
    counted: List[List[bytes]] = E.Range("1", 2, compression=False)
    sliced: List[List[bytes]] = E.Slice("1", 2)
    keys: List[bytes] = E.Range("1", "3", include_value=False)
    only_values: List[bytes] = E.Slice("1", 2, include_key=False)
    prefixed: List[List[bytes]] = E.Range(prefix="user:")
    for key, val in E.RangeIter("1", "2"):
        print(key.hex(), val.hex())
    lazy_keys: Iterator[bytes] = E.RangeIter(prefix=b"user:", include_value=False, page_size=100)
    found: bool = E.Exists("1")
    alive: bool = E.Ping()
    info: Dict[str, object] = E.info()
    print(names, value, values, items, counted, sliced, keys, only_values, prefixed,
          list(lazy_keys), found, alive, info["version"])

    batch = WriteBatch()
    batch.Put("c", "c")
    batch.Delete("c")
    batch.Write(timeout=5)
    with WriteBatch("testdb", endpoint="127.0.0.1:4141") as batch:
        batch.Put("abc", "123")
    with E.WriteBatch() as batch:
        batch.Put("abc", "123")
    try:
        with Elevator("default") as e:
            e.Get("c")
    except ElevatorKeyError as missing:
        print(missing)
    except (ElevatorTimeout, PoolTimeout, LimitExceeded) as other:
        print(other)
    E.close()


def text_client() -> str:
    T = Elevator("default", decode_responses=True, encoding_errors="replace")
    T.Put("greeting", "hello")
    word: str = T.Get("greeting")
    words: List[Optional[str]] = T.MGet(["greeting"])
    pairs: List[List[str]] = T.Range("a", "z")
    for key, value in T.RangeIter():
        print(key.upper(), value.upper())
    return word + str(words) + str(pairs)


def annotated(client: Elevator, text: Elevator[str]) -> Tuple[bytes, str]:
    # A bare Elevator annotation is an Elevator[bytes].
    return client.Get("k"), text.Get("k")


def the_pool() -> PoolStats:
    pool = ElevatorPool("127.0.0.1:4141", max_size=16, timeout=10.0, checkout_timeout=2.0,
                        health_check_interval=30.0,
                        retry=RetryPolicy(stop=tenacity.stop_after_delay(10),
                                          wait=tenacity.wait_exponential(multiplier=0.01, max=1)))
    users, events = Elevator("users", pool=pool), Elevator("events", pool=pool)
    users.Put("u", "1")
    events.Put("e", "1")
    stats = pool.stats()
    print(stats["size"], stats["merged_calls"] + stats["merged_requests"], stats["queued"],
          stats["wait_time_total"] * 1000, stats["closed"] or stats["stale_replies"] > 0)
    with pool.connection() as conn:
        print(conn)
    pool.close()
    private = Elevator(max_size=8, retry=NO_RETRY, coalesce=False)
    private.close()
    return stats


def by_url() -> bytes:
    E = Elevator.from_url("elevator://127.0.0.1:4141/mydb?timeout=5&max_size=16")
    typed: Elevator[bytes] = Elevator.from_url("elevator://127.0.0.1:4141/mydb")
    text = Elevator.from_url("elevator://127.0.0.1:4141/mydb", decode_responses=True)
    pool = ElevatorPool.from_url("elevator://127.0.0.1:4141?max_size=4")
    print(E.Get("k"), text.Get("k").upper(), pool)
    return typed.Get("k")


def secure() -> None:
    keys = CurveKeys.from_files("server.key", "keys/web1.key_secret")
    E = Elevator(endpoint="db.internal:4141", curve=keys)
    E.close()


def bulk(pairs: Iterator[Tuple[bytes, bytes]]) -> int:
    E = Elevator("mydb", endpoint="127.0.0.1:4141")
    try:
        report: LoadReport = load(E, pairs, progress=print, batch_size=1000, workers=2)
        print(report.pairs, report.rate, report.written)
    except BulkLoadError as exc:
        load(E, pairs, skip=exc.written)
    size = 0
    for key, value in dump(E, prefix=b"user:"):
        size += len(key) + len(value)
    for text_key, text_value in dump(Elevator(decode_responses=True), "a", "z"):
        size += len(text_key.upper() + text_value)
    for pool_key, _ in dump(ElevatorPool(), db_name="mydb", page_size=100):
        size += len(pool_key.hex())
    return size
