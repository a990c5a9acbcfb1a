"""Integration: what the calls really return is what their static types say
(docs/typing.rst; tests/typecheck/reveal.py holds the static side), for an
``Elevator[bytes]`` and an ``Elevator[str]`` made through the generic alias."""
from __future__ import annotations

import pytest

from pyelevator_pool import Elevator
from pyelevator_pool.bulk import dump


def _all(values, kind) -> bool:
    return all(type(v) is kind for v in values)


@pytest.mark.parametrize("kind", [bytes, str])
def test_calls_return_what_their_types_declare(db, kind):
    # Elevator[kind](...) is how a program may spell the type at run time: it must work.
    with Elevator[kind](db.db_name, pool=db.pool, decode_responses=kind is str,
                        coalesce=db.coalesce) as e:
        assert isinstance(e, Elevator)
        for key in ("a", "b", "c"):
            e.Put(key, key * 2)
        assert type(e.Get("a")) is kind
        found, missing = e.MGet(["a", "zz"])
        assert type(found) is kind and missing is None
        for items in (e.Range("a", "c"), e.Range("a", 3), e.Slice("a", 3), list(e.RangeIter())):
            assert [len(i) for i in items] == [2, 2, 2], items
            assert _all(items, list) and all(_all(i, kind) for i in items), items
        for bare in (e.Range("a", "c", include_value=False), e.Range(include_key=False),
                     e.Slice("a", 3, include_value=False), list(e.RangeIter(include_key=False))):
            assert len(bare) == 3 and _all(bare, kind), bare
        pairs = list(dump(e))
        assert len(pairs) == 3 and _all(pairs, tuple) and all(_all(p, kind) for p in pairs)
        assert e.Exists("a") is True and e.Exists("zz") is False


def test_a_pools_dump_is_bytes(db):
    db.Put("k", "v")
    assert list(dump(db.pool, db_name=db.db_name)) == [(b"k", b"v")]
