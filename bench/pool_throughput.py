"""Studio throughput: 12 independent jobs on a pool of Ray Serve replicas vs the in-process engine.

    python bench/pool_throughput.py                  # tiny-sd, 2 CPU replicas, 1 thread each
    python bench/pool_throughput.py --replicas 4 --model stabilityai/stable-diffusion-2-1-base --size 512

Both servers run in this process (the real websocket front, ``server.app``), one with the default
in-process engine, one with ``--engine ray`` on a local Ray instance of ``--replicas`` CPUs. Each
round, ``--jobs`` clients connect and submit one change-map job each at once (previews every 5
steps, as the docker asks); the time is from the first submit sent to the last ``done`` received.
Both servers are warmed first (every replica has the model loaded and has run a job). The rounds
alternate which engine goes first; the figure is the median of the per-round ratios (pool /
in-process), goal <= 0.65 with 2 replicas. OMP_NUM_THREADS=1 (set here before torch loads, and
inherited by the replicas; the torch threads each side really has are printed): one thread per
process, so the pool's gain is its parallelism, not thread contention.

The job's size (tiny-sd, 256 px, 20 steps: about 1 s of one core) keeps what the pool adds per job
(handing the job to a replica, streaming its ~25 messages back, starting the next) a few percent
of it, as a real model's seconds on a GPU would; the printout measures that share ("a slot's
time outside the pipeline"). It also prints each job's pipeline seconds on both sides (a replica
slower than the in-process worker is short of CPU), and the share of the CPUs that other
processes used during each engine's rounds (from /proc): the pool needs every core free, the
in-process engine one, so on a shared machine other people's work raises the ratio, and the
figure counts only when that share is near 0.
The last line holds ``name=value`` pairs for scripts.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # as the server sets it (server.ray_engine)

import argparse
import asyncio
import io
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/pool_throughput.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench.common import OthersCpu, load_average, progress  # noqa: E402


def make_inputs(size: int) -> tuple[bytes, bytes]:
    from PIL import Image

    from eval.images import synthetic_image
    from eval.maps import gradient_map

    buffer = io.BytesIO()
    Image.fromarray(synthetic_image(size, size, seed=0)).save(buffer, "PNG")
    return buffer.getvalue(), np.round(gradient_map(size, size) * 255).astype(np.uint8).tobytes()


async def one_job(url: str, png: bytes, gray8: bytes, args: argparse.Namespace,
                  seed: int) -> float:
    """One client, one job; returns the seconds its pipeline ran, where it ran (``done``'s
    ``run_s``: the replica's, or the in-process worker's)."""
    from websockets.asyncio.client import connect

    from shared import protocol as p

    async with connect(url, max_size=None, compression=None) as ws:
        session = p.ClientSession(client="bench")
        await ws.send(session.hello())
        session.receive(await ws.recv())
        request = p.SubmitRequest(ref=1, width=args.size, height=args.size,
                                  prompt="a harbour at dusk", steps=args.steps, guidance=7.0,
                                  seed=seed, preview_every=args.preview_every)
        for frame in session.submit(request, png, gray8):
            await ws.send(frame)
        while True:
            for event in session.receive(await ws.recv()):
                if isinstance(event, p.Done):
                    return float(event.timings["run_s"])
                if isinstance(event, (p.Error, p.Cancelled)):
                    raise RuntimeError(f"job failed: {event}")


async def batch(url: str, jobs: int, png: bytes, gray8: bytes,
                args: argparse.Namespace) -> tuple[float, list[float]]:
    """``jobs`` clients at once: the seconds from the first submit to the last ``done``, and
    each job's pipeline seconds."""
    started = time.perf_counter()
    runs = await asyncio.gather(*(one_job(url, png, gray8, args, seed) for seed in range(jobs)))
    return time.perf_counter() - started, list(runs)


async def replica_stats(worker: Any) -> list[dict[str, Any]]:
    """Every replica's counters (Serve routes each call to one replica: ask until all answered)."""
    found: dict[int, dict[str, Any]] = {}
    for _ in range(50):
        stats = await worker.handle.stats.remote()
        found[stats["pid"]] = stats
        if len(found) == worker.slots:
            break
    return list(found.values())


async def measure(args: argparse.Namespace) -> dict[str, float]:
    import ray
    import torch

    from server.app import ServerConfig, run_server

    png, gray8 = make_inputs(args.size)
    ray.init(num_cpus=args.replicas, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}})
    base = {"model": args.model, "port": 0, "device": "cpu",
            "max_region_pixels": args.size * args.size}
    progress("starting the in-process server and the pool")
    async with run_server(ServerConfig(**base)) as single, \
            run_server(ServerConfig(**base, engine="ray", replicas=args.replicas)) as pool:
        progress("warming up")
        await batch(single.url, 1, png, gray8, args)
        await batch(pool.url, 2 * args.replicas, png, gray8, args)
        loaded = sum(len(s["models_loaded"]) for s in await replica_stats(pool.worker))
        rounds: dict[str, list[tuple[float, list[float], float]]] = {"inprocess": [], "pool": []}
        for round_ in range(args.rounds):
            order = [("inprocess", single), ("pool", pool)]
            for name, server in order if round_ % 2 == 0 else order[::-1]:
                with OthersCpu() as others:
                    seconds, runs = await batch(server.url, args.jobs, png, gray8, args)
                rounds[name].append((seconds, runs, others.share))
                progress(f"round {round_ + 1}: {name} {seconds:.2f}s (other processes used "
                         f"{others.share:.0%} of the CPUs)")
        stats = await replica_stats(pool.worker)
        per_replica = dict(pool.worker.jobs_by_replica)
    ray.shutdown()

    def median(name: str, of: Callable[[tuple[float, list[float], float]], float]) -> float:
        return statistics.median(of(r) for r in rounds[name])

    slots = {"inprocess": 1, "pool": args.replicas}

    def outside(name: str) -> Callable[[tuple[float, list[float], float]], float]:
        # A slot's time per job not spent in the pipeline: receiving the job, streaming its
        # messages, sending the result, waiting for the next.
        return lambda r: (r[0] * slots[name] - sum(r[1])) / len(r[1])

    ratios = [a[0] / b[0] for a, b in zip(rounds["pool"], rounds["inprocess"], strict=True)]
    return {"pool_ratio": statistics.median(ratios), "ratio_low": min(ratios),
            "ratio_high": max(ratios), "inprocess_s": median("inprocess", lambda r: r[0]),
            "pool_s": median("pool", lambda r: r[0]),
            "inprocess_job_s": median("inprocess", lambda r: statistics.median(r[1])),
            "replica_job_s": median("pool", lambda r: statistics.median(r[1])),
            "inprocess_outside_s": median("inprocess", outside("inprocess")),
            "pool_outside_s": median("pool", outside("pool")),
            "others_cpu_inprocess": median("inprocess", lambda r: r[2]),
            "others_cpu_pool": median("pool", lambda r: r[2]),
            "busiest_replica_share": max(per_replica.values()) / sum(per_replica.values()),
            "model_loads_in_rounds": sum(len(s["models_loaded"]) for s in stats) - loaded,
            "replica_threads": max(s["torch_threads"] for s in stats),
            "inprocess_threads": torch.get_num_threads()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-sd")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--preview-every", type=int, default=5,
                        help="a preview every N steps, as the docker asks (0: none)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    load_before = load_average()
    f = asyncio.run(measure(args))
    load = max(load_before, load_average())
    print(f"{args.jobs} jobs, {args.model} {args.size}px {args.steps} steps, previews every "
          f"{args.preview_every}, {args.replicas} replicas, load {load:.1f}")
    print(f"in-process {f['inprocess_s']:.2f}s, pool {f['pool_s']:.2f}s: ratio "
          f"{f['pool_ratio']:.3f} ({f['ratio_low']:.3f}-{f['ratio_high']:.3f}), goal <= 0.65")
    print(f"per job: pipeline {f['inprocess_job_s']:.2f}s in-process, {f['replica_job_s']:.2f}s "
          f"on a replica; a slot's time outside the pipeline {f['inprocess_outside_s']:.3f}s "
          f"in-process, {f['pool_outside_s']:.3f}s in the pool")
    print(f"torch threads: {f['inprocess_threads']:.0f} in-process, {f['replica_threads']:.0f} per "
          f"replica; busiest replica ran {f['busiest_replica_share']:.0%} of the jobs; model loads "
          f"during the rounds: {f['model_loads_in_rounds']:.0f}; other processes used "
          f"{f['others_cpu_inprocess']:.0%} (in-process rounds) and {f['others_cpu_pool']:.0%} "
          f"(pool rounds) of the CPUs")
    print(" ".join(f"{name}={value:.4f}" for name, value in {**f, "load": load}.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
