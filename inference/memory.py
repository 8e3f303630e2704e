"""Give freed image buffers back to the operating system, so a server's memory comes back after a burst.

glibc's malloc serves a large request with mmap (returned to the system on free) only above a threshold that it
raises, by default, to the size of every mmapped block freed, up to 32 MB. After the first big upload, the
decode buffers of the next ones (a 12 MP PNG is 37 MB, Pillow allocates it in 16 MB blocks) come from the heap
arenas of the server's worker threads instead, and stay there when freed: bench/memory.py measured 525 MB five
seconds after three bursts of eight 12 MP PNGs, against 283 MB at rest. A fixed threshold of 1 MB (which also
turns the raising off) keeps every large buffer on mmap: 290 MB after the same bursts, peak 384 MB
(docs/space.md, uploads).
Buffers under 1 MB (the model's 160 px input is 0.3 MB) stay on the heap, where they are cheaper.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20


def return_large_buffers(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Set glibc's mmap threshold to `threshold` bytes for this process; False where the C library is not
    glibc (musl, macOS: nothing to do there). Safe to call more than once. `MALLOC_MMAP_THRESHOLD_` in the
    environment does the same before start-up."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1
