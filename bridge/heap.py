"""The process's free C heap, given back to the system after a drain.

A drain of a backlog works on thousands of rows at once, on up to ``BRIDGE_IN_FLIGHT``
threads: Python's objects for the rows, SQLite's page caches, request bodies. Once it
is over that memory is free inside the process, but glibc's allocator keeps most of it,
so a long-running worker's resident set would be the high-water mark of the deepest
backlog it ever drained. :func:`give_back` asks glibc to return its free pages
(``malloc_trim(0)``, about a millisecond); the worker calls it after each drain that
moved a row. ``bench/bench_backlog_memory.py`` measures what it gives back (RELIABILITY.md,
figure 8). Where the C library is not glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util


def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()


def give_back() -> bool:
    """Return the C heap's free pages to the system; False where that cannot be done."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
