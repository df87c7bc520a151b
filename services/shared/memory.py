"""Giving the C heap's free memory back to the system (glibc's ``malloc_trim``).

A batch allocates and frees a few hundred MB through the C allocator (fetched records,
decoded rows, the change set, the sinks' rows, aiokafka's buffers); glibc keeps what
was freed in its heap, in pieces between live allocations, and the process's RSS grew
with every batch's pattern though the memory in use did not (issue 11: receivables'
worker, 68-122 MB in use, its heap 79 -> 169 MB in 300,000 changes, 527 MB RSS at a
million). :func:`release_free_memory` after each batch returns the free pages (glibc
madvises them away, also in the middle of the heap). Elsewhere (musl, macOS) it does
nothing.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable


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


__all__ = ["release_free_memory"]
