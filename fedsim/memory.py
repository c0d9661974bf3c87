"""Fresh population-sized tensors without paying a page fault per 4 KiB.

A new ``[N, P]`` tensor of a large population is a fresh ``mmap`` from the C allocator: the first write to
each 4 KiB page faults into the kernel, which zeroes the page. For the 92 MiB population of N = 10,000
digits MLPs that costs about 35 ms per tensor on a typical x86 server (a copy into memory already
mapped takes about 5 ms), several times per gossip round. ``empty`` asks the kernel for transparent huge
pages on such tensors (``madvise(MADV_HUGEPAGE)`` before the first touch: one fault per 2 MiB), which brings
the first write down to about the cost of an ordinary pass. The hint changes no value; where it is not
available (not Linux, THP set to ``never``, a GPU tensor, a small tensor) it is skipped.
"""

from __future__ import annotations

import ctypes
import sys

import torch

_HUGE = 1 << 21            # 2 MiB, the x86-64 / arm64 transparent huge page
_MIN_BYTES = 8 << 20       # below this the allocator reuses heap memory (no repeated faults) anyway
_MADV_HUGEPAGE = 14


def _load_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_madvise = _load_madvise()


def empty(shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
          device: str | torch.device = "cpu") -> torch.Tensor:
    """``torch.empty(shape)``, backed by transparent huge pages where that is possible and worth it."""
    out = torch.empty(shape, dtype=dtype, device=device)
    nbytes = out.numel() * out.element_size()
    if _madvise is not None and out.device.type == "cpu" and nbytes >= _MIN_BYTES:
        start = (out.data_ptr() + _HUGE - 1) & ~(_HUGE - 1)   # the 2 MiB-aligned inside of the block
        end = (out.data_ptr() + nbytes) & ~(_HUGE - 1)
        if end > start:
            _madvise(start, end - start, _MADV_HUGEPAGE)      # a hint: failure (EINVAL, ENOMEM) changes nothing
    return out


def empty_like(t: torch.Tensor) -> torch.Tensor:
    """A contiguous ``empty`` of ``t``'s shape, dtype and device."""
    return empty(tuple(t.shape), t.dtype, t.device)
