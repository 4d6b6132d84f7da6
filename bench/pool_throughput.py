"""Studio throughput: 12 independent jobs on a pool of Ray Serve replicas vs the in-process engine.

    python bench/pool_throughput.py                  # tiny-sd, 2 CPU replicas, 1 thread each
    python bench/pool_throughput.py --replicas 4 --model stabilityai/stable-diffusion-2-1-base --size 512

Both servers run in this process (the real websocket front, ``server.app``), one with the default
in-process engine, one with ``--engine ray`` on a local Ray instance of ``--replicas`` CPUs. Each
round, ``--jobs`` clients connect and submit one change-map job each at once; the time is from the
first submit sent to the last ``done`` received. Both servers are warmed first (every replica has
the model loaded and has run a job). The rounds alternate which engine goes first; the figure is
the median of the per-round ratios (pool / in-process), goal <= 0.65 with 2 replicas.
OMP_NUM_THREADS=1 (set here before torch loads, and inherited by the replicas): one thread per
process, so the pool's gain is its parallelism, not thread contention.
The last line holds ``name=value`` pairs for scripts.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import asyncio
import io
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/pool_throughput.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench.common import load_average, progress  # noqa: E402


def make_inputs(size: int) -> tuple[bytes, bytes]:
    from PIL import Image

    from eval.images import synthetic_image
    from eval.maps import gradient_map

    buffer = io.BytesIO()
    Image.fromarray(synthetic_image(size, size, seed=0)).save(buffer, "PNG")
    return buffer.getvalue(), np.round(gradient_map(size, size) * 255).astype(np.uint8).tobytes()


async def one_job(url: str, png: bytes, gray8: bytes, size: int, steps: int, seed: int) -> None:
    from websockets.asyncio.client import connect

    from shared import protocol as p

    async with connect(url, max_size=None, compression=None) as ws:
        session = p.ClientSession(client="bench")
        await ws.send(session.hello())
        session.receive(await ws.recv())
        request = p.SubmitRequest(ref=1, width=size, height=size, prompt="a harbour at dusk",
                                  steps=steps, guidance=7.0, seed=seed, preview_every=0)
        for frame in session.submit(request, png, gray8):
            await ws.send(frame)
        while True:
            for event in session.receive(await ws.recv()):
                if isinstance(event, p.Done):
                    return
                if isinstance(event, (p.Error, p.Cancelled)):
                    raise RuntimeError(f"job failed: {event}")


async def batch(url: str, jobs: int, png: bytes, gray8: bytes, size: int, steps: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(one_job(url, png, gray8, size, steps, seed) for seed in range(jobs)))
    return time.perf_counter() - started


async def measure(args: argparse.Namespace) -> dict[str, float]:
    import ray

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
        await batch(single.url, 1, png, gray8, args.size, args.steps)
        await batch(pool.url, 2 * args.replicas, png, gray8, args.size, args.steps)
        times: dict[str, list[float]] = {"inprocess": [], "pool": []}
        for round_ in range(args.rounds):
            order = [("inprocess", single), ("pool", pool)]
            for name, server in order if round_ % 2 == 0 else order[::-1]:
                seconds = await batch(server.url, args.jobs, png, gray8, args.size, args.steps)
                times[name].append(seconds)
                progress(f"round {round_ + 1}: {name} {seconds:.2f}s")
        per_replica = dict(pool.worker.jobs_by_replica)
    ray.shutdown()
    ratios = [a / b for a, b in zip(times["pool"], times["inprocess"], strict=True)]
    return {"pool_ratio": statistics.median(ratios), "ratio_low": min(ratios),
            "ratio_high": max(ratios), "inprocess_s": statistics.median(times["inprocess"]),
            "pool_s": statistics.median(times["pool"]),
            "busiest_replica_share": max(per_replica.values()) / sum(per_replica.values())}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-sd")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    load_before = load_average()
    figures = asyncio.run(measure(args))
    load = max(load_before, load_average())
    print(f"{args.jobs} jobs, {args.model} {args.size}px {args.steps} steps, "
          f"{args.replicas} replicas, load {load:.1f}")
    print(f"in-process {figures['inprocess_s']:.2f}s, pool {figures['pool_s']:.2f}s: "
          f"ratio {figures['pool_ratio']:.3f} ({figures['ratio_low']:.3f}-"
          f"{figures['ratio_high']:.3f}), goal <= 0.65")
    print(" ".join(f"{name}={value:.4f}" for name, value in {**figures, "load": load}.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
