"""The free C heap given back after a drain (bridge/heap.py)."""

import platform

import pytest

from bridge import heap


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="malloc_trim is glibc's",
)
def test_the_worker_can_give_free_memory_back_on_glibc():
    assert heap.give_back() is True
