"""Give large freed buffers back to the system at once (glibc's ``mallopt``).

A scrape of 100,000 pod-level series makes a few 14 MiB buffers (the exposition text, its
encoding, the HTTP response) and frees them again. glibc serves a block that large with its own
``mmap`` and unmaps it on free, but after the first such free it raises its mmap threshold to
that size (up to 32 MiB) and its trim threshold to twice that, so the next scrapes' buffers come
from the heap and stay there when freed: measured with bench/podlevel_overhead.py, 24 MiB of
free heap kept in the agent's RSS for good (157 MiB instead of 134). Setting the threshold
fixes it (and turns the sliding off). 1 MiB keeps the harvest's batch buffers (768 KiB on two
CPUs) in the heap, where they are reused without page faults.

Other C libraries (musl has no tunable ``mallopt``) are left alone.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
LARGE_BUFFER = 1 << 20


def return_large_buffers(threshold: int = LARGE_BUFFER) -> bool:
    """Serve blocks of ``threshold`` bytes and more by mmap, always; False if not possible."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    log.debug("malloc: blocks from %d bytes are mmapped and returned on free: %s", threshold, done)
    return done
