"""What mypy infers for the documented calls (tests/unit/test_typing.py compares each
``reveal_type`` line's note with the type after ``# revealed:``, ``builtins.`` left out as
newer mypy versions print it). Never run."""
from __future__ import annotations

from typing_extensions import reveal_type  # only checked: mypy bundles its stubs

from pyelevator_pool import Elevator, ElevatorPool
from pyelevator_pool.bulk import dump


def flag() -> bool:
    return True


E = Elevator()
T = Elevator(decode_responses=True)
reveal_type(E)  # revealed: pyelevator_pool.client.Elevator[bytes]
reveal_type(T)  # revealed: pyelevator_pool.client.Elevator[str]
reveal_type(Elevator(decode_responses=False))  # revealed: pyelevator_pool.client.Elevator[bytes]
reveal_type(Elevator(decode_responses=flag()))  # revealed: pyelevator_pool.client.Elevator[Any]
reveal_type(E.Get("k"))  # revealed: bytes
reveal_type(T.Get("k"))  # revealed: str
reveal_type(E.MGet(["k"]))  # revealed: list[bytes | None]
reveal_type(T.MGet(["k"]))  # revealed: list[str | None]
reveal_type(E.Range("a", "z"))  # revealed: list[list[bytes]]
reveal_type(T.Range("a", "z"))  # revealed: list[list[str]]
reveal_type(E.Range("a", 10, include_value=False))  # revealed: list[bytes]
reveal_type(T.Range(include_key=False))  # revealed: list[str]
reveal_type(E.Range(include_value=flag()))  # revealed: list[Any]
reveal_type(E.Slice("a", 2))  # revealed: list[list[bytes]]
reveal_type(T.Slice("a", 2, include_value=False))  # revealed: list[str]
reveal_type(E.RangeIter())  # revealed: typing.Iterator[list[bytes]]
reveal_type(T.RangeIter(include_key=False))  # revealed: typing.Iterator[str]
reveal_type(E.Exists("k"))  # revealed: bool
reveal_type(E.Ping())  # revealed: bool
reveal_type(E.listdb())  # revealed: list[str]
reveal_type(Elevator.from_url("elevator://127.0.0.1:4141/db"))  # revealed: pyelevator_pool.client.Elevator[Any]
reveal_type(Elevator.from_url("elevator://127.0.0.1", decode_responses=True))  # revealed: pyelevator_pool.client.Elevator[str]
reveal_type(Elevator.from_url("elevator://127.0.0.1", decode_responses=False))  # revealed: pyelevator_pool.client.Elevator[bytes]
reveal_type(E.__enter__())  # revealed: pyelevator_pool.client.Elevator[bytes]
reveal_type(dump(E))  # revealed: typing.Iterator[tuple[bytes, bytes]]
reveal_type(dump(T))  # revealed: typing.Iterator[tuple[str, str]]
reveal_type(dump(ElevatorPool()))  # revealed: typing.Iterator[tuple[bytes, bytes]]
reveal_type(ElevatorPool().stats()["merged_calls"])  # revealed: int
reveal_type(ElevatorPool().stats()["closed"])  # revealed: bool
