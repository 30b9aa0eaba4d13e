"""glibc allocator settings for CPU training.

By default glibc unmaps freed activation-sized blocks and the next step faults them back in:
10,000-35,000 minor page faults per step for a tiny ViT at batch 64, 15-40 ms of system time
per step (``benchmarks/bench_engine.py``). Keeping freed memory in the allocator removes that;
peak resident memory does not change (``benchmarks/bench_memory.py``).
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["tune_malloc"]

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Serve blocks up to ``mmap_threshold`` bytes from the heap and keep up to
    ``trim_threshold`` bytes of free memory instead of returning it to the OS.

    Process-wide; glibc (Linux) only: returns False (and changes nothing) elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    return bool(mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok)
