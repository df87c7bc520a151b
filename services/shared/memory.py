"""Giving the C heap's free memory back to the system (glibc's ``malloc_trim``).

A batch allocates and frees a few hundred MB through the C allocator (fetched records,
decoded rows, the change set, the sinks' rows, aiokafka's buffers); glibc keeps what
was freed in its heap, in pieces between live allocations, and the process's RSS grew
with every batch's pattern though the memory in use did not (issue 11: receivables'
worker, 68-122 MB in use, its heap 79 -> 169 MB in 300,000 changes, 527 MB RSS at a
million). :func:`release_free_memory` after each batch returns the free pages (glibc
madvises them away, also in the middle of the heap). Elsewhere (musl, macOS) it does
nothing.

:func:`heap_usage` reads what the C heap holds (glibc's ``mallinfo2``): the bytes in
use and the free bytes it keeps. With RSS, Python's allocated blocks and the state
store's parts (:mod:`.memory_metrics`) it tells a leak (in use grows) from a heap that
keeps freed memory (free grows) and from caches filling to their caps.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from dataclasses import dataclass


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Return the C heap's free memory to the system (a few ms; once a batch)."""
    if _TRIM is not None:
        _TRIM(0)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        info = ctypes.CDLL(None).mallinfo2  # glibc 2.33+
    except (OSError, AttributeError):
        return None
    info.argtypes = []
    info.restype = _MallInfo2
    return info


_MALLINFO2 = _mallinfo2()


@dataclass(frozen=True)
class HeapUsage:
    """The C heap (every arena): ``in_use`` by live allocations (mmapped ones
    included), ``free`` kept by the allocator and not given back."""

    in_use: int
    free: int


def heap_usage() -> HeapUsage | None:
    """What the C heap holds now (None where glibc's ``mallinfo2`` is missing)."""
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return HeapUsage(in_use=info.uordblks + info.hblkhd, free=info.fordblks)


__all__ = ["HeapUsage", "heap_usage", "release_free_memory"]
