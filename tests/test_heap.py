"""The delivery worker's C heap (bridge/heap.py): few arenas, free pages given back."""

import platform

import pytest

from bridge import heap


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="malloc_trim is glibc's",
)
def test_the_worker_can_give_free_memory_back_on_glibc():
    assert heap.give_back() is True


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="M_ARENA_MAX is glibc's",
)
def test_the_worker_can_limit_its_arenas_on_glibc():
    assert heap.few_arenas() is True
