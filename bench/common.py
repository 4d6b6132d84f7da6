"""What the benchmarks share: progress lines, the machine's load, torch's CPU threads for a run, the
clock, peak memory, and the last line of `name=value` pairs that scripts read."""

from __future__ import annotations

import contextlib
import gc
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any


def add_model_arguments(parser: Any, model_help: str) -> None:
    """The options both benchmarks take to pick a model and run it as the server would."""
    parser.add_argument("--model", default="tiny-sd", help=model_help)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    parser.add_argument("--channels-last", action="store_true", help="as the server's --channels-last")
    parser.add_argument("--compile", action="store_true", help="as the server's --compile (compiled while loading)")


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_average() -> float:
    """The machine's 1-minute load (NaN where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


# -- who used the CPUs: this process and its children vs everything else (Linux /proc) -------------
def _ticks() -> float:
    return float(os.sysconf("SC_CLK_TCK"))


def busy_cpu_seconds() -> float:
    """CPU seconds every core spent busy since boot (NaN without /proc); a hypervisor's steal is
    left out (nobody's work here)."""
    try:
        with open("/proc/stat") as stat:
            user, nice, system, _idle, _iowait, irq, softirq = map(int, stat.readline().split()[1:8])
    except OSError:
        return float("nan")
    return (user + nice + system + irq + softirq) / _ticks()


def family_cpu_seconds(root: int | None = None) -> float:
    """CPU seconds used so far by process ``root`` (default: this one) and its live descendants
    (a local Ray instance's raylet, GCS and workers are), NaN without /proc."""
    if not os.path.isdir("/proc"):
        return float("nan")
    used: dict[int, tuple[int, float]] = {}  # pid -> (parent, seconds)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        used[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _ticks())
    family, added = {root or os.getpid()}, True
    while added:
        added = False
        for pid, (parent, _) in used.items():
            if parent in family and pid not in family:
                family.add(pid)
                added = True
    return sum(seconds for pid, (_, seconds) in used.items() if pid in family)


class OthersCpu:
    """The share of the machine's CPUs that other processes (other people's) used meanwhile:
    ``with OthersCpu() as others: ...`` then ``others.share`` (0: the machine was ours)."""

    def __enter__(self) -> OthersCpu:
        self.started = time.perf_counter()
        self.busy, self.ours = busy_cpu_seconds(), family_cpu_seconds()
        return self

    def __exit__(self, *_: Any) -> None:
        wall = time.perf_counter() - self.started
        others = (busy_cpu_seconds() - self.busy) - (family_cpu_seconds() - self.ours)
        self.share = max(0.0, others) / ((os.cpu_count() or 1) * wall)


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


# -- peak memory: CUDA's allocator, or the resident set on Linux ----------------------------------
def _read_status_kb(field_name: str) -> int:
    with open("/proc/self/status") as status:
        match = re.search(rf"^{field_name}:\s+(\d+) kB", status.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field_name}")
    return int(match.group(1))


def cpu_peak_mb(run: Callable[[], Any]) -> float:
    """Peak resident memory above the start of `run`, in MB (Linux: VmHWM reset by clear_refs)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset the high-water mark to the current resident set
    before = _read_status_kb("VmRSS")
    run()
    return (_read_status_kb("VmHWM") - before) / 1024


def cuda_peak_mb(run: Callable[[], Any]) -> float:
    import torch

    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def measure_peaks(
    cases: dict[str, Callable[[], Any]], names: Sequence[str], repeats: int, device: str
) -> dict[str, float]:
    """Median peak extra MB of the named cases, interleaved like the timings."""
    peak = cuda_peak_mb if device.startswith("cuda") else cpu_peak_mb
    for name in names:
        cases[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            # The output is dropped inside: only memory the run itself needed counts.
            samples[name].append(peak(lambda name=name: cases[name]() and None))
    return {name: statistics.median(values) for name, values in samples.items()}


def read_summary_line(output: str) -> dict[str, float]:
    """The `name=value` pairs of a benchmark's last line of output."""
    last = output.strip().splitlines()[-1]
    return {name: float(value) for name, value in (pair.split("=", 1) for pair in last.split())}
