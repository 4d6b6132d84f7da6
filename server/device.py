"""The device's memory: giving it back, and telling an out-of-memory failure from other ones.

Each backend says "out of memory" its own way (CUDA raises its own error, MPS and some CUDA paths
a plain RuntimeError); the worker asks here rather than knowing them all.
"""

from __future__ import annotations

import gc

import torch


def free_device_memory() -> None:
    """Return cached blocks to the device, so the next job (or model) can have them."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    # MPS and some CUDA paths raise a plain RuntimeError.
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
