"""Keep freed memory in igcli's own processes for the next call instead of handing it back.

A run allocates the same large arrays over and over: each call's path points, their float32
copy, the gradients, the products with the path's velocity (1 to 20 MB each). glibc serves
blocks over its mmap threshold (128 KiB at first, raised as blocks are freed) with fresh
pages from the kernel and returns the top of its heap past a trim threshold, so every call
faulted its arrays' pages in again: a broadcast sum of two 300 KB arrays took 380 us instead
of 45, and a 1,000-digit run spent 10% of its CPU in the kernel. With both thresholds fixed
high, a freed block is reused as it is. Only the command line's processes and its workers do
this: a program that imports igcli keeps its own allocator settings.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit: blocks above it still come from mmap
TRIM_THRESHOLD = 128 << 20  # free memory kept at the heap's top, at most


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds in this process (see the module doc). False
    where the C library is not glibc or refuses: nothing changes then."""
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)  # this process's own symbols: its C library's among them
        if not hasattr(libc, "gnu_get_libc_version"):  # musl's mallopt does nothing
            return False
        return bool(
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    return False
