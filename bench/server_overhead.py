"""What the websocket server adds to a job, as a ratio measured in one run.

    python bench/server_overhead.py --quick              # tiny-sd on the CPU, 1 thread, well under a minute on 2 cores
    python bench/server_overhead.py                      # tiny-sd, bigger and more repetitions
    python bench/server_overhead.py --model sd15-size --quick    # SD 1.5's real architecture, random weights: < 4 min
    python bench/server_overhead.py --model sd15-size --threads 1   # 256 px on the CPU, the recorded figures
    python bench/server_overhead.py --model stabilityai/stable-diffusion-2-1-base --device cuda --size 512 --steps 30

A server (server.app.run_server, the real websocket listener and job worker) runs in this process on
a free loopback port. A real websocket client in a child process (Krita is another process too; no torch
there), driven by the plugin's sans-I/O ``shared.protocol`` ClientSession, submits a change-map job
(previews on, every --preview-every steps, like the plugin) and reads every frame up to ``done``. The same
pipeline object is then called directly with the same settings (image, map, prompt, steps, guidance, seed,
scheduler): what the worker itself would call. --in-process-client runs the client on the server's event
loop instead (its parsing then competes with the worker for the GIL).

- server_overhead: client-side time from the first submit frame sent to ``done`` received / the
  direct call (goal <= 1.02). It includes the upload, PNG decoding, map building, previews, result
  PNG encoding and the download: everything a painter waits for beyond the pipeline.
- first_preview_s: time from the first submit frame sent to the first preview received (median).

The server job and the direct call take turns for --repeats rounds (the one going first alternates)
after one warm-up of each; server_overhead is the median of the per-round ratios, printed with their
range and the ratio of the medians.
The image is PNG-encoded before the clock starts (the plugin does that in Krita). The server runs the
job at the canvas size (its region budget is raised to the canvas), so both sides do the same work;
the result's largest pixel difference from the direct call is printed (0: the same computation).
The last line holds ``name=value`` pairs for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/server_overhead.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench.common import add_model_arguments, default_clock, load_average, progress, torch_threads  # noqa: E402

PROMPT = "an oil painting of a harbour at dusk"
NEGATIVE = "blurry"


@dataclass
class Settings:
    model: str = "tiny-sd"
    device: str = "cpu"
    size: int = 256
    steps: int = 20
    repeats: int = 5
    guidance_scale: float = 7.0
    preview_every: int = 2  # the plugin's default
    scheduler: str | None = None  # None: server.schedulers.DEFAULT_SCHEDULER
    seed: int = 1234
    threads: int | None = None  # torch CPU threads; None: torch's default
    client_process: bool = True  # the client in a child process (else on the server's event loop)
    dtype: str = "auto"  # auto: float16 on CUDA, else float32
    channels_last: bool = False
    compile: bool = False
    preview_vae: str | None = None  # the server's --preview-vae (tiny-taesd: a random-weight one)
    clock: str = "wall"  # or "cpu": this process's CPU time (server threads, not the client's)


@dataclass
class ServerJob:
    """One job as the client saw it (seconds from the first submit frame sent)."""

    total_s: float
    first_progress_s: float | None
    first_preview_s: float | None
    previews: int
    steps_run: int
    run_s: float  # the worker's own time inside the job, from its ``done`` timings
    result_png: bytes
    model_size: tuple[int, int]


@dataclass
class Report:
    settings: Settings
    server_s: list[float] = field(default_factory=list)  # on the settings' clock (the ratio's)
    direct_s: list[float] = field(default_factory=list)
    server_wall_s: list[float] = field(default_factory=list)  # wall clock, from the client's side
    direct_wall_s: list[float] = field(default_factory=list)
    first_preview_s: list[float] = field(default_factory=list)
    first_progress_s: list[float] = field(default_factory=list)
    worker_run_s: list[float] = field(default_factory=list)
    previews: int = 0
    steps_run: int = 0
    model_size: tuple[int, int] = (0, 0)
    result_max_diff: int = -1  # server result vs direct output, 0..255
    threads: int = 0
    load_average: float = float("nan")  # the machine's 1-minute load, the larger of before and after timing

    @property
    def server_overhead(self) -> float:
        """The median of the per-round ratios (the two ran back to back; see bench/pipeline_cost.py)."""
        return statistics.median(self.round_ratios())

    @property
    def ratio_of_medians(self) -> float:
        return statistics.median(self.server_s) / statistics.median(self.direct_s)

    def round_ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.server_s, self.direct_s, strict=True)]

    def summary(self) -> dict[str, float]:
        first_preview = statistics.median(self.first_preview_s) if self.first_preview_s else float("nan")
        return {
            "server_overhead": self.server_overhead,
            "first_preview_s": first_preview,
            "server_s": statistics.median(self.server_s),
            "direct_s": statistics.median(self.direct_s),
            "worker_run_s": statistics.median(self.worker_run_s),
            "result_max_diff": float(self.result_max_diff),
        }


def make_inputs(size: int) -> tuple[bytes, bytes, Any]:
    """The job's picture as PNG, its change map as gray8 bytes (a left-to-right gradient) and the picture."""
    from PIL import Image

    from eval.images import synthetic_image
    from eval.maps import gradient_map

    picture = Image.fromarray(synthetic_image(size, size, seed=0))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    gray8 = np.round(gradient_map(size, size) * 255).astype(np.uint8).tobytes()
    return buffer.getvalue(), gray8, picture


class Client:
    """A websocket client speaking the protocol through the plugin's ClientSession."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection: Any = None
        from shared import protocol as p

        self.p = p
        self.session = p.ClientSession(client="bench/server_overhead.py")

    async def connect(self) -> None:
        from websockets.asyncio.client import connect

        self.connection = await connect(self.url, max_size=None, compression=None, ping_interval=None)
        await self.connection.send(self.session.hello())
        for event in self.session.receive(await self.connection.recv()):
            if not isinstance(event, self.p.Welcome):
                raise RuntimeError(f"handshake failed: {event}")

    async def close(self) -> None:
        await self.connection.close()

    async def run_job(self, settings: Settings, image_png: bytes, map_gray8: bytes) -> ServerJob:
        p = self.p
        request = p.SubmitRequest(
            ref=0, width=settings.size, height=settings.size, mode="change_map", prompt=PROMPT,
            negative_prompt=NEGATIVE, steps=settings.steps, guidance=settings.guidance_scale, seed=settings.seed,
            scheduler=settings.scheduler, variants=1, preview_every=settings.preview_every,
        )
        frames = self.session.submit(request, image_png, map_gray8)
        started = time.perf_counter()
        for frame in frames:
            await self.connection.send(frame)
        first_progress = first_preview = None
        previews = 0
        result: Any = None
        model_size = (0, 0)
        while True:
            events = self.session.receive(await self.connection.recv())
            now = time.perf_counter() - started
            for event in events:
                if isinstance(event, p.Progress) and first_progress is None:
                    first_progress = now
                elif isinstance(event, p.Preview):
                    previews += 1
                    if first_preview is None:
                        first_preview = now
                elif isinstance(event, p.Started):
                    model_size = (event.width, event.height)
                elif isinstance(event, p.Result):
                    result = event
                elif isinstance(event, p.Done):
                    if result is None:
                        raise RuntimeError("the job ended without a result")
                    return ServerJob(now, first_progress, first_preview, previews, event.steps_run,
                                     event.timings.get("run_s", float("nan")), result.png, model_size)
                elif isinstance(event, (p.Error, p.Cancelled)):
                    raise RuntimeError(f"the job failed: {event}")


async def client_child(url: str, settings_json: str) -> None:
    """The client process: one job per "run" line on stdin, its timings as one JSON line on stdout (with the
    result PNG, base64, for a "run+png" line)."""
    settings = Settings(**json.loads(settings_json))
    image_png, map_gray8, _ = make_inputs(settings.size)
    client = Client(url)
    await client.connect()
    # Read commands off the loop so the connection keeps answering the server's pings meanwhile.
    while (command := (await asyncio.to_thread(sys.stdin.readline)).strip()) in ("run", "run+png"):
        job = await client.run_job(settings, image_png, map_gray8)
        fields = dataclasses.asdict(job)
        fields["result_png"] = base64.b64encode(job.result_png).decode("ascii") if command == "run+png" else ""
        print(json.dumps(fields), flush=True)
    await client.close()


class ChildClient:
    """Drives a client_child process: the same run_job as Client, over the child's stdin/stdout."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.url, self.settings = url, settings
        self.process: Any = None
        self.want_png = True  # the first job's result is compared with the direct call

    async def connect(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "--client-child", self.url,
            json.dumps(dataclasses.asdict(self.settings)), cwd=ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=1 << 28,  # one line carries a base64 result PNG
        )

    async def run_job(self, settings: Settings, image_png: bytes, map_gray8: bytes) -> ServerJob:
        self.process.stdin.write(b"run+png\n" if self.want_png else b"run\n")
        self.want_png = False
        await self.process.stdin.drain()
        line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the client process ended (exit code {await self.process.wait()}); see stderr")
        fields = json.loads(line)
        fields["result_png"] = base64.b64decode(fields["result_png"])
        fields["model_size"] = tuple(fields["model_size"])
        return ServerJob(**fields)

    async def close(self) -> None:
        self.process.stdin.write(b"quit\n")
        await self.process.stdin.drain()
        if await self.process.wait() != 0:
            raise RuntimeError("the client process failed; see stderr")


def direct_call(pipe: Any, settings: Settings, picture: Any, change_map: np.ndarray) -> Any:
    """The pipeline call the worker makes for this job, without the server around it."""
    import torch

    return pipe(
        prompt=PROMPT, negative_prompt=NEGATIVE, image=picture, change_map=change_map,
        num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
        generator=[torch.Generator("cpu").manual_seed(settings.seed)], num_images_per_prompt=1,
        scheduler=settings.scheduler, output_type="pil",
    )


async def run_benchmark_async(settings: Settings) -> Report:
    import torch
    from PIL import Image

    from server import regions
    from server.app import ServerConfig, run_server
    from server.config import PipelineOptions
    from server.schedulers import DEFAULT_SCHEDULER

    settings.scheduler = settings.scheduler or DEFAULT_SCHEDULER
    size = settings.size
    if settings.dtype == "auto":
        dtype = torch.float16 if settings.device.startswith("cuda") else None
    else:
        dtype = getattr(torch, settings.dtype)
    config = ServerConfig(
        model=settings.model, port=0, device=settings.device, dtype=dtype,
        preview_every=settings.preview_every, max_region_pixels=size * size,
        max_pixels=max(size * size, 1 << 20),
        pipeline_options=PipelineOptions(channels_last=settings.channels_last, compile=settings.compile,
                                         preview_vae=settings.preview_vae),
    )
    image_png, map_gray8, picture = make_inputs(size)
    # The map exactly as the server builds it from the gray8 frame.
    change_map = regions.map_from_gray8(map_gray8, (size, size), None).full()
    report = Report(settings, threads=torch.get_num_threads())

    async with run_server(config) as server:
        pipe = server.host.pipe
        progress(f"server up at {server.url}, model {settings.model} loaded")
        client: Client | ChildClient = (
            ChildClient(server.url, settings) if settings.client_process else Client(server.url)
        )
        await client.connect()

        async def server_round() -> ServerJob:
            return await client.run_job(settings, image_png, map_gray8)

        async def direct_round() -> tuple[float, Any]:
            started = time.perf_counter()
            # Off the event loop, as in the worker, so the server's pings are still answered.
            output = await asyncio.to_thread(direct_call, pipe, settings, picture, change_map)
            return time.perf_counter() - started, output

        job = await server_round()  # warm-up, and the correctness check
        _, output = await direct_round()
        report.model_size, report.steps_run = job.model_size, job.steps_run
        with Image.open(io.BytesIO(job.result_png)) as served:
            theirs = np.asarray(served.convert("RGB"), dtype=np.int16)
        ours = np.asarray(output.images[0].convert("RGB"), dtype=np.int16)
        report.result_max_diff = int(np.abs(theirs - ours).max()) if theirs.shape == ours.shape else 255
        progress("warm-up done")
        report.load_average = load_average()

        for round_index in range(settings.repeats):
            order = ("server", "direct") if round_index % 2 == 0 else ("direct", "server")
            for which in order:
                cpu_started = time.process_time()
                if which == "server":
                    job = await server_round()
                    report.server_wall_s.append(job.total_s)
                    report.server_s.append(time.process_time() - cpu_started if settings.clock == "cpu"
                                           else job.total_s)
                    report.worker_run_s.append(job.run_s)
                    report.previews = job.previews
                    if job.first_preview_s is not None:
                        report.first_preview_s.append(job.first_preview_s)
                    if job.first_progress_s is not None:
                        report.first_progress_s.append(job.first_progress_s)
                else:
                    seconds, _ = await direct_round()
                    report.direct_wall_s.append(seconds)
                    report.direct_s.append(time.process_time() - cpu_started if settings.clock == "cpu"
                                           else seconds)
            progress(f"round {round_index + 1}/{settings.repeats} timed")
        await client.close()
    report.load_average = max(report.load_average, load_average())
    return report


def run_benchmark(settings: Settings) -> Report:
    return asyncio.run(run_benchmark_async(settings))


def _spread(values: Sequence[float]) -> str:
    return f"{min(values):.4f}-{max(values):.4f}" if values else "-"


def format_report(report: Report) -> str:
    s = report.settings
    ratios = report.round_ratios()
    w, h = report.model_size

    def row(label: str, values: Sequence[float], ratio: str = "", rounds: str = "", of_medians: str = "",
            goal: str = "") -> str:
        median = f"{statistics.median(values):>10.4f}" if values else f"{'-':>10}"
        return f"{label:<40}{median}{_spread(values):>16}{ratio:>8}{rounds:>15}{of_medians:>11}  {goal}".rstrip()

    lines = [
        f"bench/server_overhead.py: model {s.model} on {s.device} ({s.dtype}, {report.threads} torch threads"
        f"{', channels-last' if s.channels_last else ''}{', compiled' if s.compile else ''}"
        f"{', previews through ' + s.preview_vae if s.preview_vae else ''}), {s.size}x{s.size} "
        f"change-map job (gradient), {s.steps} steps, scheduler {s.scheduler}, guidance {s.guidance_scale:g}, "
        f"preview every {s.preview_every} steps, median of {s.repeats} alternating rounds, {s.clock} clock; "
        f"load average {report.load_average:.1f} on {os.cpu_count()} CPUs; client "
        f"{'in a child process' if s.client_process else 'on the server event loop'}",
        f"server ran the model at {w}x{h}, {report.steps_run} steps, {report.previews} previews per job; "
        f"result vs direct call: max pixel difference {report.result_max_diff} (0 = the same computation)",
        "",
        f"{'case':<40}{'median s':>10}{'min-max s':>16}{'ratio':>8}{'(min-max)':>15}{'of medians':>11}  goal",
        row("direct pipeline call", report.direct_s, f"{1.0:.3f}"),
        row("job through the websocket server", report.server_s, f"{report.server_overhead:.3f}",
            f"({min(ratios):.3f}-{max(ratios):.3f})", f"{report.ratio_of_medians:.3f}", "<= 1.02 (server_overhead)"),
        row("  of which the worker's pipeline run (wall)", report.worker_run_s),
        row("first progress received", report.first_progress_s),
        row("first preview received", report.first_preview_s, goal="(first_preview_s)"),
    ]
    if s.clock == "cpu":
        wall = [a / b for a, b in zip(report.server_wall_s, report.direct_wall_s, strict=True)]
        lines.insert(-3, row("  the job, wall clock (direct call: "
                             f"{statistics.median(report.direct_wall_s):.2f} s)", report.server_wall_s,
                             f"{statistics.median(wall):.3f}", f"({min(wall):.3f}-{max(wall):.3f})"))
    outside = statistics.median(report.server_wall_s) - statistics.median(report.worker_run_s)
    lines.append(f"server minus worker run: {outside * 1000:+.1f} ms per job (upload, decode, map, result PNG, "
                 f"download); worker run minus direct call: "
                 f"{(statistics.median(report.worker_run_s) - statistics.median(report.direct_wall_s)) * 1000:+.1f} ms "
                 f"(previews, progress)")
    return "\n".join(lines)


def summary_line(report: Report) -> str:
    return " ".join(
        f"{name}={value:.0f}" if name == "result_max_diff" else f"{name}={value:.4f}"
        for name, value in report.summary().items()
    )


def default_settings(model: str, device: str, quick: bool) -> Settings:
    """Tiny models: 256 px, 20 steps, 5 rounds (--quick: 128 px, 10 steps, 3 rounds). Full-size ones: their
    native resolution on a GPU, 256 px on a CPU, 10 steps, 3 rounds (--quick: 96 px, 4 steps, CFG off, 2 rounds:
    < 4 min on one CPU core)."""
    if model.startswith("tiny-"):
        return Settings(size=128, steps=10, repeats=3) if quick else Settings(size=256, steps=20, repeats=5)
    if quick:
        return Settings(size=96, steps=4, repeats=2, guidance_scale=1.0)
    return Settings(size=0 if device.startswith("cuda") else 256, steps=10, repeats=3)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, "tiny-sd, sd15-size, sdxl-size, or any model id")
    parser.add_argument("--preview-vae", help="the server's --preview-vae (tiny-taesd: random weights, offline)")
    parser.add_argument("--size", type=int, help="canvas side in px (default: see default_settings)")
    parser.add_argument("--steps", type=int, help="inference steps (default 20; --quick: 10)")
    parser.add_argument("--repeats", type=int, help="timed rounds (default 5; --quick: 3)")
    parser.add_argument("--guidance-scale", type=float, help="default 7 (--quick on a full-size model: 1)")
    parser.add_argument("--preview-every", type=int, default=2, help="steps between previews (plugin default 2)")
    parser.add_argument("--scheduler", help="scheduler name (default: the server's default)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; --quick: 1)")
    parser.add_argument("--clock", choices=("wall", "cpu"),
                        help="cpu: this process's CPU time, the default on the CPU with 1 thread (bench.common.clock)")
    parser.add_argument("--in-process-client", action="store_true",
                        help="run the websocket client on the server's event loop, not in a child process")
    parser.add_argument("--client-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small and short, 1 thread unless given (see above)")
    args = parser.parse_args(argv)
    if args.client_child:
        asyncio.run(client_child(*args.client_child))
        return 0
    settings = default_settings(args.model, args.device, args.quick)
    settings.steps = args.steps or settings.steps
    settings.repeats = args.repeats or settings.repeats
    if args.size is not None:
        settings.size = args.size
    elif settings.size == 0:
        settings.size = 1024 if "xl" in args.model.lower() else 512
    if args.guidance_scale is not None:
        settings.guidance_scale = args.guidance_scale
    if settings.steps < 1 or settings.repeats < 1 or settings.size < 8:
        parser.error("--steps and --repeats must be at least 1, --size at least 8")
    settings.model, settings.device, settings.dtype = args.model, args.device, args.dtype
    settings.channels_last, settings.compile, settings.preview_vae = args.channels_last, args.compile, args.preview_vae
    settings.preview_every, settings.scheduler, settings.seed = args.preview_every, args.scheduler, args.seed
    settings.threads = args.threads or (1 if args.quick else None)
    settings.client_process = not args.in_process_client
    settings.clock = args.clock or default_clock(settings.device, settings.threads)
    with torch_threads(settings.threads):  # one thread on a shared CPU: see bench.common.torch_threads
        report = run_benchmark(settings)
    print(format_report(report))
    print(summary_line(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
