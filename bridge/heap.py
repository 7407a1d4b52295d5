"""The delivery worker's C heap: few malloc arenas, and free pages given back after a
drain.

A drain of a backlog works on thousands of rows at once, on up to ``BRIDGE_IN_FLIGHT``
threads: Python's objects for the rows, SQLite's page caches, request bodies. glibc's
allocator gives each thread that allocates at the same time as another an arena of its
own (up to eight a core), and keeps what is freed in them: a long-running worker's
resident set would be the high-water mark of the deepest backlog it ever drained,
plus a megabyte or so left in each arena its busiest moment made. So the ``deliver``
command limits the process to :data:`ARENAS` arenas before it starts a thread
(:func:`few_arenas`; with the GIL, its threads seldom allocate at once), and the
worker calls :func:`give_back` after each drain that moved a row (``malloc_trim(0)``,
about a millisecond). ``bench/bench_backlog_memory.py`` and ``bench/soak.py`` measure
them (RELIABILITY.md, figure 8). Where the C library is not glibc (musl, macOS) both do
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

ARENAS = 2  # malloc arenas of a delivery worker process
_M_ARENA_MAX = -8  # mallopt(3)


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim, libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return None, None


_TRIM, _MALLOPT = _glibc()


def give_back() -> bool:
    """Return the C heap's free pages to the system; False where that cannot be done."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


def few_arenas(count: int = ARENAS) -> bool:
    """Let at most ``count`` arenas serve this process's threads (glibc's
    ``M_ARENA_MAX``): called before the process starts its threads; False where that
    cannot be done."""
    if _MALLOPT is None:
        return False
    return bool(_MALLOPT(_M_ARENA_MAX, count))
