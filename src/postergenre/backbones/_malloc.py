"""Keep freed memory in the process heap while PyTorch runs on CPU.

glibc hands every freed block above its mmap threshold back to the kernel (``munmap``) and maps
a fresh one for the next allocation. A PyTorch forward allocates and frees activations of tens
to hundreds of MB per batch, so each batch faulted them in again page by page: measured on 2
cores, half the CPU time of ``evaluate --engine torch`` was kernel time (docs/performance.md).
Raising the mmap and trim thresholds keeps those blocks for reuse: `evaluate --engine torch` on
300 posters went from 32.8 s wall (25.3 s of it kernel time) to 17.7 s (1.7 s), at a higher
peak RSS (1.7 -> 2.4 GB), since freed blocks stay mapped. ``POSTERGENRE_KEEP_FREED_MEMORY=0``
turns it off. The ONNX Runtime path never builds a PyTorch model, so it is not affected.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_done = False


def keep_freed_memory(threshold: int = (1 << 31) - 1) -> bool:
    """Raise glibc's thresholds to ``threshold`` bytes (a C int: 2 GiB at most; a fine-tuning
    step's buffers need that much), once per process; ``False`` where the C library is not
    glibc (nothing to tune there)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("POSTERGENRE_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    _done = bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, threshold))
    return _done
