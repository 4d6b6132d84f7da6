"""What the benchmarks share: progress lines, the machine's load, torch's CPU threads for a run, and
the last line of `name=value` pairs that scripts read."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator


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


def clock(name: str) -> Callable[[], float]:
    """``wall``: time.perf_counter. ``cpu``: this process's CPU time (every thread), which on a shared
    machine leaves out the time spent waiting for a core: with one torch thread it measures the work
    itself, and ratios stop depending on what else runs (GPU runs need the wall clock)."""
    if name not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {name!r}")
    return time.perf_counter if name == "wall" else time.process_time


def default_clock(device: str, threads: int | None) -> str:
    return "cpu" if device == "cpu" and threads == 1 else "wall"


def read_summary_line(output: str) -> dict[str, float]:
    """The `name=value` pairs of a benchmark's last line of output."""
    last = output.strip().splitlines()[-1]
    return {name: float(value) for name, value in (pair.split("=", 1) for pair in last.split())}
