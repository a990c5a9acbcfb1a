"""Wrong uses mypy must refuse, each with the error code after ``# error:`` on its line
(tests/unit/test_typing.py): proof that the types are precise, not Any. Never run."""
from __future__ import annotations

from typing import List

from pyelevator_pool import Elevator, ElevatorPool

E = Elevator()
T = Elevator(decode_responses=True)
as_text: str = E.Get("k")  # error: assignment
as_bytes: bytes = T.Get("k")  # error: assignment
E.Get("k").upper().decode()  # a bytes method: fine
T.Get("k").decode()  # error: attr-defined
keys: List[List[bytes]] = E.Range(include_value=False)  # error: assignment
no_none: List[bytes] = E.MGet(["k"])  # error: assignment
pairs: List[bytes] = E.Range()  # error: assignment
count: int = E.Exists("k") + ElevatorPool().stats()["unknown"]  # error: typeddict-item
stats_size: str = ElevatorPool().stats()["size"]  # error: assignment
E.Get(1)  # error: arg-type
Elevator(decode_responses="yes")  # error: call-overload
