"""Giving freed heap memory back to the operating system.

glibc's malloc keeps what a process frees for its next allocations: after a burst of large
batches (activations of 32 x 4096 floats, request bodies) a web process holds tens of MB
it no longer uses until the next burst. ``release_free_memory`` asks glibc to return the free
pages of every malloc arena (``malloc_trim(0)``); a batcher calls it once it has been idle
for ``IDLE_RELEASE_AFTER_S`` after computing (``inference.runtime.batcher``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

# A batcher idle this long after its last forward pass releases the process's free heap memory.
IDLE_RELEASE_AFTER_S = 2.0

_malloc_trim = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _malloc_trim = _libc.malloc_trim  # glibc only (musl has none)
        _malloc_trim.argtypes = [ctypes.c_size_t]
        _malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        _malloc_trim = None


def release_free_memory() -> bool:
    """Return the free pages of the process's malloc heaps to the OS; False where the C library
    cannot (not glibc), or when there was nothing to return."""
    if _malloc_trim is None:
        return False
    try:
        return bool(_malloc_trim(0))
    except Exception:  # noqa: BLE001 - an optimisation; never fails a batcher
        logger.debug("malloc_trim failed", exc_info=True)
        return False
