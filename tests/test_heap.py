"""The delivery worker process's C heap (bridge/heap.py)."""

import platform

import pytest

from bridge import heap

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="M_ARENA_MAX and malloc_trim are glibc's",
)


def test_a_served_process_keeps_its_heap_as_it_is(monkeypatch):
    monkeypatch.setattr(heap, "_delivery_process", False)
    assert heap.give_back() is False


@glibc
def test_a_delivery_worker_process_limits_its_arenas_and_gives_free_memory_back(monkeypatch):
    monkeypatch.setattr(heap, "_delivery_process", False)
    assert heap.delivery_process() is True
    assert heap.give_back() is True
