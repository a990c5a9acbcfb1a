"""pids.current() follows os.fork without a system call per question."""
import os

import pytest

from pyelevator_pool import pids


def test_current_is_this_process():
    assert pids.current() == os.getpid()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_sees_its_own_pid():
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report what it sees, then leave at once
        try:
            os.write(write, f"{pids.current()} {os.getpid()}".encode())
        finally:
            os._exit(0)
    os.close(write)
    seen = os.read(read, 100).decode().split()
    os.close(read)
    os.waitpid(child, 0)
    assert seen[0] == seen[1] == str(child)
    assert pids.current() == os.getpid() != child
