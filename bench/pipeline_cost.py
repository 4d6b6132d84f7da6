"""What the differential pipeline costs, as ratios measured in one run.

    python bench/pipeline_cost.py --quick                      # tiny-sd on the CPU, 1 thread, under a minute on 2 cores
    python bench/pipeline_cost.py --model sd15-size --quick    # SD 1.5's real architecture, random weights: < 4 min
    python bench/pipeline_cost.py --model sd15-size --threads 1   # 256 px on the CPU, the recorded figures
    python bench/pipeline_cost.py --model sd15-size --device cuda --size 512

- overhead:  differential run with a uniform map of strength s / diffusers' StableDiffusionImg2ImgPipeline
             (built from the same components and scheduler) at strength=s, same steps and seed (goal <= 1.01).
- skip_vs_img2img: the worst, over maximum strengths m in SKIP_LEVELS, of (a differential run whose map's
             maximum is m: a 0 -> m ramp, then m on its last quarter) / (img2img at strength m). Both run
             floor(m * k) steps (Algorithm 2), so skipping should cost exactly what img2img costs (goal <= 1.02).
             The skipping table (time against m, paper Table 4) is printed with a least-squares fit
             (fixed + per step); skip_<m> is the time at m relative to m = 1.
- fan5:      one 5-column strength fan (0.2 ... 1.0) / the five img2img runs at those strengths (goal <= 0.34).
- mem_overhead_mb: peak memory of the differential run above its start, minus the same for img2img (goal <= 3).
  CUDA: torch.cuda.max_memory_allocated. CPU: in a child process whose large allocations are all mmapped
  (MALLOC_MMAP_THRESHOLD_), the peak resident set (VmHWM, reset through /proc/self/clear_refs) during the run.

One warm-up call of each pipeline (every case has the same shapes), then the cases take turns for --repeats
rounds, forwards then backwards (the machine may be shared and noisy: interleaving spreads its noise over all
cases). A ratio is the median over the rounds of the two cases' ratio within the round (compared cases run back
to back, so a load that comes and goes cancels out); the table also shows the range of those ratios, the ratio
of the medians, and each case's median time and spread. The first round's outputs give the step counts and the
uniform-map check.
Maps use the project's convention: 1 = change fully, 0 = keep (`mu_paper = 1 - map`).
The last line holds `name=value` pairs for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/pipeline_cost.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    add_model_arguments,
    clock,
    default_clock,
    load_average,
    measure_peaks,
    progress,
    torch_threads,
)

SKIP_LEVELS = (0.1, 0.3, 0.5, 1.0)  # maximum strengths of the skipping table
FAN_STRENGTHS = (0.2, 0.4, 0.6, 0.8, 1.0)
PROMPT = "an oil painting of a harbour at dusk"
NEGATIVE = "blurry"
# Below this, glibc serves allocations from its heap, where freed memory stays resident and hides later
# peaks; above it every block is its own mapping, returned at once. Large tensors are what we measure.
_MMAP_THRESHOLD = 64 * 1024


@dataclass
class Settings:
    model: str = "tiny-sd"
    device: str = "cpu"
    size: int = 128
    steps: int = 20
    repeats: int = 5
    strength: float = 0.5  # the uniform map's; one of SKIP_LEVELS shares its img2img run
    guidance_scale: float = 7.5
    scheduler: str | None = None  # None: server.schedulers.DEFAULT_SCHEDULER
    seed: int = 0
    threads: int | None = None  # torch CPU threads; None: torch's default
    dtype: str = "auto"  # auto: float16 on CUDA, else float32
    channels_last: bool = False
    compile: bool = False
    clock: str = "wall"  # or "cpu": see bench.common.clock
    compile_backend: str = "inductor"
    fan: bool = True  # False (--no-fan): only the cases overhead and skip_vs_img2img need

    @property
    def img2img_levels(self) -> list[float]:
        return sorted({*SKIP_LEVELS, *(FAN_STRENGTHS if self.fan else ()), self.strength})


def img2img_case(strength: float) -> str:
    return f"img2img_{strength:g}"


def skip_case(level: float) -> str:
    return f"ours_max_{level:g}"


@dataclass
class Report:
    settings: Settings
    samples: dict[str, list[float]] = field(default_factory=dict)  # seconds per case, one per round
    medians: dict[str, float] = field(default_factory=dict)  # seconds per case
    steps_run: dict[str, int] = field(default_factory=dict)
    memory_mb: dict[str, float] = field(default_factory=dict)  # peak extra MB per case
    memory_method: str = ""
    uniform_max_diff: float = float("nan")  # ours vs img2img, output pixels in [0, 1]
    load_average: float = float("nan")  # the machine's 1-minute load, the larger of before and after timing

    def ratio(self, case: str, reference: str) -> float:
        """The median of the per-round ratios: each round's pair ran back to back, so a load that comes
        and goes over seconds cancels out of it better than out of a ratio of medians."""
        return statistics.median(self.round_ratios(case, reference))

    def ratio_of_medians(self, case: str, reference: str) -> float:
        return self.medians[case] / self.medians[reference]

    def round_ratios(self, case: str, reference: str) -> list[float]:
        """The two cases' ratio within each round: their spread shows how much the noise moves a ratio."""
        return [a / b for a, b in zip(self.samples[case], self.samples[reference], strict=True)]

    def step_cost_fit(self, cases: dict[str, int]) -> tuple[float, float]:
        """Least-squares ``seconds = fixed + per_step * steps`` over ``cases`` (name -> steps run)."""
        points = [(n, self.medians[name]) for name, n in cases.items() if n > 0]
        if len({n for n, _ in points}) < 2:
            return float("nan"), float("nan")
        per_step, fixed = np.polyfit([n for n, _ in points], [t for _, t in points], 1)
        return float(fixed), float(per_step)

    def img2img_steps(self) -> dict[str, int]:
        k = self.settings.steps
        return {img2img_case(m): int(m * k + 1e-4) for m in self.settings.img2img_levels}

    def summary(self) -> dict[str, float]:
        reference = img2img_case(self.settings.strength)
        out = {"overhead": self.ratio("ours_uniform", reference)}
        out["skip_vs_img2img"] = max(self.ratio(skip_case(m), img2img_case(m)) for m in SKIP_LEVELS)
        # The worst single round of each: with the median, the per-round range a goal is read against.
        out["overhead_worst_round"] = max(self.round_ratios("ours_uniform", reference))
        out["skip_vs_img2img_worst_round"] = max(max(self.round_ratios(skip_case(m), img2img_case(m)))
                                                 for m in SKIP_LEVELS)
        for level in SKIP_LEVELS:
            out[f"skip_{level:g}"] = self.ratio(skip_case(level), skip_case(1.0))
        if self.settings.fan:
            out["fan5"] = self.ratio("ours_fan5", "img2img_x5")
        if self.memory_mb:
            out["mem_overhead_mb"] = self.memory_mb["ours_uniform"] - self.memory_mb["img2img"]
        fixed, per_step = self.step_cost_fit(self.img2img_steps())
        out["step_s"], out["fixed_s"] = per_step, fixed
        out["ours_step_s"] = self.step_cost_fit({skip_case(m): self.steps_run[skip_case(m)] for m in SKIP_LEVELS})[1]
        return out


# --------------------------------------------------------------------------------------------
# Building the two pipelines and the cases
# --------------------------------------------------------------------------------------------


def load(settings: Settings) -> tuple[Any, Any]:
    """Our pipeline and diffusers' img2img pipeline sharing its components (one copy of the weights)."""
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    from server.config import PipelineOptions
    from server.models import load_pipeline
    from server.schedulers import DEFAULT_SCHEDULER, make_scheduler

    settings.scheduler = settings.scheduler or DEFAULT_SCHEDULER
    if settings.dtype == "auto":
        dtype = torch.float16 if settings.device.startswith("cuda") else torch.float32
    else:
        dtype = getattr(torch, settings.dtype)
    options = PipelineOptions(channels_last=settings.channels_last, compile=settings.compile,
                              compile_backend=settings.compile_backend)
    pipe = load_pipeline(settings.model, device=settings.device, dtype=dtype, options=options)
    components = {**pipe.components, "scheduler": make_scheduler(settings.scheduler, pipe.scheduler.config)}
    if pipe.family == "sdxl":
        reference = StableDiffusionXLImg2ImgPipeline(
            **components, requires_aesthetics_score=False, add_watermarker=False
        )
    else:
        reference = StableDiffusionImg2ImgPipeline(
            **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    reference.set_progress_bar_config(disable=True)
    return pipe, reference


def input_image(size: int) -> Any:
    from PIL import Image

    from eval.images import synthetic_image

    return Image.fromarray(synthetic_image(size, size, seed=0))


def ramp(size: int, maximum: float) -> np.ndarray:
    """A 0 -> `maximum` left-to-right ramp over three quarters of the width, then `maximum`.

    A real map (not uniform) whose largest strength is `maximum` on whole latent cells too (a plain ramp
    would average to less than `maximum` in its last cell, and run a step fewer than floor(maximum * k)).
    """
    row = np.clip(np.linspace(0.0, maximum * 4 / 3, size), 0.0, maximum).astype(np.float32)
    return np.tile(row, (size, 1))


def make_cases(pipe: Any, reference: Any, settings: Settings) -> dict[str, Callable[[], Any]]:
    """Name -> a call that runs one case once and returns the pipeline output (or a list of them)."""
    import torch

    from server.maps import fan_map

    image = input_image(settings.size)
    size, steps = settings.size, settings.steps

    def generator() -> torch.Generator:
        return torch.Generator(device="cpu").manual_seed(settings.seed)

    def ours(change_map: np.ndarray) -> Callable[[], Any]:
        return lambda: pipe(
            prompt=PROMPT, negative_prompt=NEGATIVE, image=image, change_map=change_map,
            num_inference_steps=steps, guidance_scale=settings.guidance_scale, generator=generator(),
            scheduler=settings.scheduler, output_type="np",
        )

    def img2img(strength: float) -> Any:
        return reference(
            prompt=PROMPT, negative_prompt=NEGATIVE, image=image, strength=strength,
            num_inference_steps=steps, guidance_scale=settings.guidance_scale, generator=generator(),
            output_type="np",
        )

    # Compared cases sit next to each other, so each pair runs back to back in every round.
    cases: dict[str, Callable[[], Any]] = {}
    for level in SKIP_LEVELS:
        cases[img2img_case(level)] = lambda level=level: img2img(level)
        if level == settings.strength:
            cases["ours_uniform"] = ours(np.full((size, size), settings.strength, dtype=np.float32))
        cases[skip_case(level)] = ours(ramp(size, level))
    if settings.fan:
        cases["ours_fan5"] = ours(fan_map(size, size, FAN_STRENGTHS))
    for strength in settings.img2img_levels:
        cases.setdefault(img2img_case(strength), lambda strength=strength: img2img(strength))
    if "ours_uniform" not in cases:
        cases["ours_uniform"] = ours(np.full((size, size), settings.strength, dtype=np.float32))
    return cases


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def measure_times(
    cases: dict[str, Callable[[], Any]], repeats: int, device: str = "cpu", warm_up: Sequence[str] = (),
    now: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Seconds per case, one sample per round, and the first round's outputs. The cases take turns, in
    order, then in reverse order, after one call of each case in `warm_up` (first-call allocations, lazy
    imports, kernel selection: every case has the same shapes, so one call per pipeline is enough)."""
    for name in warm_up:
        cases[name]()
    names = list(cases)
    samples: dict[str, list[float]] = {name: [] for name in names}
    outputs: dict[str, Any] = {}
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else names[::-1]:
            _synchronize(device)
            started = now()
            output = cases[name]()
            _synchronize(device)
            samples[name].append(now() - started)
            if round_index == 0:
                outputs[name] = output
        progress(f"round {round_index + 1}/{repeats} timed")
    return samples, outputs


# --------------------------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------------------------


def memory_cases(cases: dict[str, Callable[[], Any]], settings: Settings) -> dict[str, Callable[[], Any]]:
    """The uniform map and img2img at its strength: the same work, so any difference is ours."""
    return {"img2img": cases[img2img_case(settings.strength)], "ours_uniform": cases["ours_uniform"]}


def memory_rounds(settings: Settings) -> int:
    # A full-size model's run costs seconds to minutes on a CPU; its peaks vary far less than its times.
    return max(3, settings.repeats) if settings.model.startswith("tiny-") else min(2, settings.repeats)


def memory_in_child(settings: Settings) -> tuple[dict[str, float], str]:
    """CPU peaks measured in a fresh process whose large allocations all go through mmap. The uniform map
    runs at the lowest skipping level there: the peak is the VAE's and one step's, not the steps' count."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(_MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": "0"}
    child = {**settings.__dict__, "strength": SKIP_LEVELS[0]}
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", json.dumps(child)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), "peak RSS (VmHWM) in a child process, mmapped allocations"


def _memory_child(settings_json: str) -> None:
    settings = Settings(**json.loads(settings_json))
    with torch_threads(settings.threads):
        pipe, reference = load(settings)
        cases = memory_cases(make_cases(pipe, reference, settings), settings)
        print(json.dumps(measure_peaks(cases, list(cases), memory_rounds(settings), settings.device)))


# --------------------------------------------------------------------------------------------
# The whole benchmark
# --------------------------------------------------------------------------------------------


def run_benchmark(settings: Settings, memory: bool = True, pipes: tuple[Any, Any] | None = None) -> Report:
    import torch

    pipe, reference = pipes or load(settings)
    cases = make_cases(pipe, reference, settings)
    report = Report(settings)
    report.load_average = load_average()
    lowest = SKIP_LEVELS[0]
    report.samples, outputs = measure_times(cases, settings.repeats, settings.device,
                                            warm_up=(img2img_case(lowest), skip_case(lowest)),
                                            now=clock(settings.clock))
    report.load_average = max(report.load_average, load_average())
    # Same seed, same scheduler, same components: the uniform map must reproduce img2img.
    ours_image, theirs_image = outputs["ours_uniform"].images, outputs[img2img_case(settings.strength)].images
    report.uniform_max_diff = float(np.abs(np.asarray(ours_image) - np.asarray(theirs_image)).max())
    report.steps_run = {name: out.steps_run for name, out in outputs.items() if name.startswith("ours")}
    del outputs
    if settings.fan:
        fan = [report.samples[img2img_case(s)] for s in FAN_STRENGTHS]
        report.samples["img2img_x5"] = [sum(times) for times in zip(*fan, strict=True)]
    report.medians = {name: statistics.median(values) for name, values in report.samples.items()}
    if memory:
        progress("measuring peak memory")
        if settings.device.startswith("cuda"):
            report.memory_mb = measure_peaks(memory_cases(cases, settings), ("img2img", "ours_uniform"),
                                             memory_rounds(settings), settings.device)
            report.memory_method = "torch.cuda.max_memory_allocated"
        elif os.path.exists("/proc/self/clear_refs"):
            report.memory_mb, report.memory_method = memory_in_child(settings)
    report.torch = torch.__version__  # type: ignore[attr-defined]
    report.threads = torch.get_num_threads()  # type: ignore[attr-defined]
    return report


def format_report(report: Report) -> str:
    s = report.settings
    k = s.steps
    header = (f"{'case':<36}{'steps':>6}{'median s':>10}{'min-max s':>16}{'ratio':>8}{'(min-max)':>15}"
              f"{'of medians':>11}  goal")

    def row(label: str, case: str, steps: int, reference: str, goal: str = "") -> str:
        values = report.samples[case]
        spread = f"{min(values):.4f}-{max(values):.4f}"
        if case == reference:
            ratio, rounds, of_medians = f"{1.0:>8.3f}", "", ""
        else:
            per_round = report.round_ratios(case, reference)
            ratio = f"{report.ratio(case, reference):>8.3f}"
            rounds = f"({min(per_round):.3f}-{max(per_round):.3f})"
            of_medians = f"{report.ratio_of_medians(case, reference):.3f}"
        return (f"{label:<36}{steps:>6}{report.medians[case]:>10.4f}{spread:>16}{ratio}{rounds:>15}"
                f"{of_medians:>11}  {goal}").rstrip()

    reference = img2img_case(s.strength)
    extra_ms = (report.medians["ours_uniform"] - report.medians[reference]) * 1000
    lines = [
        f"bench/pipeline_cost.py: model {s.model} on {s.device} ({s.dtype}, torch {getattr(report, 'torch', '?')}, "
        f"{getattr(report, 'threads', '?')} threads{', channels-last' if s.channels_last else ''}"
        f"{', compiled' if s.compile else ''}), {s.size}x{s.size}, {k} steps, scheduler {s.scheduler}, "
        f"guidance {s.guidance_scale}, median of {s.repeats} interleaved rounds, {s.clock} clock; load average "
        f"{report.load_average:.1f} on {os.cpu_count()} CPUs",
        f"uniform map {s.strength:g} vs img2img strength={s.strength:g}: max pixel difference "
        f"{report.uniform_max_diff:.2e} (0 = the same computation)",
        "",
        header,
        row(f"img2img (diffusers), strength {s.strength:g}", reference, int(k * s.strength + 1e-4), reference),
        row(f"differential, uniform map {s.strength:g}", "ours_uniform", report.steps_run["ours_uniform"],
            reference, "<= 1.01 (overhead)"),
        f"differential minus img2img: {extra_ms:+.1f} ms per run (a fixed cost weighs more on small, short runs)",
        "",
        "Skipping (Algorithm 2; paper Table 4): map = ramp 0 -> max m, against img2img at strength m",
        header.replace("case", "max strength m", 1),
    ]
    img2img_steps = report.img2img_steps()
    for level in SKIP_LEVELS:
        lines.append(row(f"{level:g} img2img", img2img_case(level), img2img_steps[img2img_case(level)],
                         img2img_case(level)))
        lines.append(row(f"{level:g} differential", skip_case(level), report.steps_run[skip_case(level)],
                         img2img_case(level), "<= 1.02 (skip_vs_img2img: the worst)"))
    ours_steps = {skip_case(m): report.steps_run[skip_case(m)] for m in SKIP_LEVELS}
    for label, steps in (("differential", ours_steps), ("img2img", img2img_steps)):
        fixed, per_step = report.step_cost_fit(steps)
        if fixed == fixed:  # not NaN
            full = fixed + per_step * k
            lines.append(
                f"fit, {label}: {fixed:.3f} s fixed (prompt, VAE, setup) + {per_step:.3f} s per step; the fixed "
                f"part is {fixed / full:.0%} of a {k}-step run (it bounds time(m) / time(1) from below)"
            )
    steps5 = sum(int(k * x + 1e-4) for x in FAN_STRENGTHS)
    lines += [] if not s.fan else [
        "",
        f"Strength fan {', '.join(f'{x:g}' for x in FAN_STRENGTHS)}",
        row("five img2img runs (sum)", "img2img_x5", steps5, "img2img_x5"),
        row("one 5-column fan run", "ours_fan5", report.steps_run["ours_fan5"], "img2img_x5", "<= 0.34 (fan5)"),
    ]
    if report.memory_mb:
        lines += [
            "",
            f"Peak memory above the run's start ({report.memory_method})",
            f"{'img2img':<36}{'':>6}{report.memory_mb['img2img']:>10.2f} MB",
            f"{'differential, uniform map':<36}{'':>6}{report.memory_mb['ours_uniform']:>10.2f} MB",
        ]
    else:
        lines += ["", "Peak memory: not measured (needs CUDA or Linux /proc/self/clear_refs)"]
    return "\n".join(lines)


def summary_line(report: Report) -> str:
    pairs = [f"{name}={value:.4f}" if "mem" not in name else f"{name}={value:.2f}"
             for name, value in report.summary().items()]
    return " ".join(pairs)


def default_settings(model: str, device: str, quick: bool) -> Settings:
    """Sizes that fit the machine: tiny models at 128 px (--quick: 64, 20 steps, 3 rounds); full-size ones
    at their native resolution on a GPU, 256 px on a CPU (--quick: 96 px, CFG off, 1 round: < 4 min of CPU)."""
    if model.startswith("tiny-"):
        return Settings(size=64, steps=20, repeats=3) if quick else Settings(size=128, steps=20, repeats=5)
    if quick:
        return Settings(size=96, steps=10, repeats=1, guidance_scale=1.0)
    return Settings(size=0 if device.startswith("cuda") else 256, steps=10, repeats=3)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, "tiny-sd, sd15-size, sdxl-size, or any SD / SDXL id")
    parser.add_argument("--size", type=int, help="image side in px (default: see --quick and default_settings)")
    parser.add_argument("--steps", type=int, help="inference steps (default 20; full-size models 10)")
    parser.add_argument("--repeats", type=int, help="timed rounds (default 5; --quick: 3)")
    parser.add_argument("--strength", type=float, default=0.5, help="uniform map / img2img strength for overhead")
    parser.add_argument("--guidance-scale", type=float, help="default 7.5 (--quick on a full-size model: 1)")
    parser.add_argument("--scheduler", help="scheduler name (default: the server's default)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; --quick: 1)")
    parser.add_argument("--clock", choices=("wall", "cpu"),
                        help="cpu: process CPU time, the default on the CPU with 1 thread (see bench.common.clock)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--no-fan", action="store_true",
                        help="leave out the fan and the img2img strengths only it needs: the rounds time what "
                             "overhead and skip_vs_img2img need (9 runs, 43 steps a round at 10 steps), so more fit")
    parser.add_argument("--quick", action="store_true", help="small and short, 1 thread unless given (see above)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        _memory_child(args.memory_child)
        return 0
    settings = default_settings(args.model, args.device, args.quick)
    settings.model, settings.device, settings.dtype = args.model, args.device, args.dtype
    settings.channels_last, settings.compile = args.channels_last, args.compile
    settings.fan = not args.no_fan
    settings.strength, settings.scheduler = args.strength, args.scheduler
    settings.steps = args.steps or settings.steps
    settings.repeats = args.repeats or settings.repeats
    settings.size = args.size or settings.size
    if args.guidance_scale is not None:
        settings.guidance_scale = args.guidance_scale
    if settings.steps < 1 or settings.repeats < 1 or (args.size is not None and args.size < 8):
        parser.error("--steps and --repeats must be at least 1, --size at least 8")
    settings.threads = args.threads or (1 if args.quick else None)
    settings.clock = args.clock or default_clock(settings.device, settings.threads)
    with torch_threads(settings.threads):  # one thread on a shared CPU: see bench.common.torch_threads
        pipes = load(settings)
        if settings.size == 0:
            settings.size = pipes[0].native_resolution
        report = run_benchmark(settings, memory=not args.no_memory, pipes=pipes)
    print(format_report(report))
    print(summary_line(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
