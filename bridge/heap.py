"""The delivery worker process's C heap: few malloc arenas, and free pages given back
after each drain.

A drain of a backlog works on thousands of rows at once, on up to ``BRIDGE_IN_FLIGHT``
threads: Python's objects for the rows, SQLite's page caches, request bodies. glibc's
allocator gives each thread that allocates at the same time as another an arena of its
own (up to eight a core), and keeps what is freed in them: a long-running worker's
resident set would be the high-water mark of the deepest backlog it ever drained, plus
a megabyte or so left in each arena its busiest moment made. So ``reteno-bridge
deliver`` calls :func:`delivery_process` before it starts a thread: at most
:data:`ARENAS` arenas (with the GIL, its threads seldom allocate at once), and from
then on :func:`give_back`, which the worker calls after each drain that moved a row,
returns the free pages (``malloc_trim(0)``, about a millisecond). A served process
(gunicorn's workers, with or without the delivery thread) is left as it is: its
requests' threads are not made to wait for the trim. ``bench/soak.py`` and
``bench/bench_backlog_memory.py`` measure it (RELIABILITY.md, figure 8). Where the C
library is not glibc (musl, macOS) nothing changes.
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
_delivery_process = False


def delivery_process(arenas: int = ARENAS) -> bool:
    """This process is a delivery worker: at most ``arenas`` malloc arenas for its
    threads (glibc's ``M_ARENA_MAX``; call it before they start), and :func:`give_back`
    from now on. False where that cannot be done."""
    global _delivery_process
    if _MALLOPT is None or _TRIM is None:
        return False
    _delivery_process = True
    return bool(_MALLOPT(_M_ARENA_MAX, arenas))


def give_back() -> bool:
    """In a delivery worker process, return the C heap's free pages to the system;
    whether it did."""
    if not _delivery_process:
        return False
    _TRIM(0)
    return True
