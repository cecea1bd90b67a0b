"""The allocator policy of a serving process, in one place: few malloc arenas, freed pages returned.

* ``limit_arenas()``: glibc gives each thread that allocates concurrently its own malloc arena
  (up to 8 per core); a web process's threads (event loop, batchers, pools, the server's own)
  would spread its heap over many half-empty arenas. ``ARENA_MAX`` arenas keep it compact
  (docs/benchmarks.md). This is ``MALLOC_ARENA_MAX``, set from inside the process: web
  processes are forked from a server process whose allocator has long started, where the
  environment variable no longer acts. Called first thing by the web entry points
  (``inference_platform.asgi``, ``inference_platform.wsgi``); an operator's own
  MALLOC_ARENA_MAX, set before the server starts, is left alone.
* ``release_free_memory()``: glibc keeps what a process frees for its next allocations: after a
  burst of large batches (activations, request bodies) a web process holds memory it no longer
  uses until the next burst. ``malloc_trim(0)`` returns the free pages of every arena; a batcher
  calls it once it has been idle for ``IDLE_RELEASE_AFTER_S`` after computing
  (``inference.runtime.batcher``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

logger = logging.getLogger(__name__)

# A batcher idle this long after its last forward pass releases the process's free heap memory.
IDLE_RELEASE_AFTER_S = 2.0
ARENA_MAX = 2
M_ARENA_MAX = -8  # mallopt's parameter number (glibc's malloc.h)

_malloc_trim = _mallopt = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _malloc_trim = _libc.malloc_trim  # glibc only (musl has neither)
        _malloc_trim.argtypes = [ctypes.c_size_t]
        _malloc_trim.restype = ctypes.c_int
        _mallopt = _libc.mallopt
        _mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        _mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        _malloc_trim = _mallopt = None


def limit_arenas(arenas: int = ARENA_MAX) -> bool:
    """Cap this process's malloc arenas at `arenas` (from here on); False where the C library cannot
    (not glibc) or the operator chose with MALLOC_ARENA_MAX."""
    if _mallopt is None or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        return bool(_mallopt(M_ARENA_MAX, arenas))
    except Exception:  # noqa: BLE001 - an optimisation; never stops a process
        logger.debug("mallopt failed", exc_info=True)
        return False


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
