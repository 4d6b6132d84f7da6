"""What the benchmarks share: progress lines, the machine's load, torch's CPU threads for a run, and
the last line of `name=value` pairs that scripts read."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_average() -> float:
    """The machine's 1-minute load (NaN where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to `threads` for the block (None: left as they are), then restored.

    On a shared CPU, OpenMP's thread barriers stall whenever one of its threads is descheduled (runs
    10-100x slower, seen here); one thread per process measures the work, not the waiting.
    """
    if not threads:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def read_summary_line(output: str) -> dict[str, float]:
    """The `name=value` pairs of a benchmark's last line of output."""
    last = output.strip().splitlines()[-1]
    return {name: float(value) for name, value in (pair.split("=", 1) for pair in last.split())}
