"""This process's id, kept by a fork hook instead of a system call on each checkout.

Every socket is owned by the process that opened it, and a forked child must never touch
its parent's (pyzmq refuses to close them from another pid): the pool, its sockets and
its streams compare their owner's pid with :func:`current` on the hot path. ``os.fork``
(and so ``multiprocessing``'s fork start method) runs the hook; a fork made behind
Python's back (a C library calling ``fork()`` itself) does not, and such a child must not
use a client it inherited.
"""
from __future__ import annotations

import os

__all__ = ["current"]

_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def current() -> int:
    """The id of the calling process (as ``os.getpid()``)."""
    return _pid
