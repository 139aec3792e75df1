"""Process-level settings that make CPU training faster without changing any result."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_done = False


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse instead of returning them to the system.

    By default every large tensor is a fresh mmap, and the kernel zero-fills its pages on first
    touch: about 25,000 page faults and a tenth of the time of a SimpleCNN step on the CPU.
    Raising the mmap and trim thresholds lets the next step reuse the same memory. Values are
    unaffected. Returns whether the setting took (glibc on Linux only; elsewhere a no-op).
    """
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # glibc caps the mmap threshold at 32 MiB on some versions; fall back to the cap.
    threshold_ok = mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1 or mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1
    _done = threshold_ok and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return _done
