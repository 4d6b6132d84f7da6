"""What the pipeline and the server cost on one CUDA GPU, as one Markdown table (run by bench/gpu.sh).

    bench/gpu.sh                      # one CUDA GPU: sd15-size at 512 px, sdxl-size at 1024 px; <= 8 minutes
    bench/gpu.sh --cpu-smoke          # the same code on the CPU: tiny-sd / tiny-sdxl at 64 px, seconds

Rows: diffusers img2img vs ours for each model and precision (float16, bfloat16, float16 with the denoiser
compiled, float16 channels-last), from bench/pipeline_cost.py (s/step of each from the fit over the skipping
table, overhead, skip_vs_img2img, skip_0.1, fan5, peak memory above the run's start and ours minus img2img),
and the server overhead from bench/server_overhead.py. The table goes to --out (default bench/gpu_results.md)
and to stdout; paste it into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/gpu_table.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench import pipeline_cost, server_overhead  # noqa: E402
from bench.common import progress  # noqa: E402


@dataclass
class Case:
    model: str
    size: int
    dtype: str = "float16"
    compile: bool = False
    channels_last: bool = False
    server: bool = False  # also run bench/server_overhead.py on it

    @property
    def label(self) -> str:
        extras = [x for x, on in (("compiled", self.compile), ("channels-last", self.channels_last)) if on]
        return f"{self.model} {self.size}² {self.dtype}" + "".join(f", {x}" for x in extras)


GPU_CASES = (
    Case("sd15-size", 512, "float16", server=True),
    Case("sd15-size", 512, "bfloat16"),
    Case("sd15-size", 512, "float16", channels_last=True),
    Case("sd15-size", 512, "float16", compile=True),
    Case("sdxl-size", 1024, "float16", server=True),
)
CPU_SMOKE_CASES = (
    Case("tiny-sd", 64, "float32", server=True),
    Case("tiny-sd", 64, "float32", compile=True),  # with the "eager" backend: inductor takes minutes on a CPU
    Case("tiny-sdxl", 64, "float32"),
)
COLUMNS = ("case", "img2img s/step", "ours s/step", "overhead", "skip_vs_img2img", "skip_0.1", "fan5",
           "peak MB (img2img)", "mem_overhead_mb", "server_overhead", "first preview s", "wall s")


def run_case(case: Case, smoke: bool) -> dict[str, str]:
    device = "cpu" if smoke else "cuda"
    settings = pipeline_cost.Settings(
        model=case.model, device=device, size=case.size, steps=10 if smoke else 20, repeats=1 if smoke else 3,
        dtype=case.dtype, compile=case.compile, channels_last=case.channels_last,
        compile_backend="eager" if smoke else "inductor", threads=1 if smoke else None,
        clock="cpu" if smoke else "wall")
    started = time.perf_counter()
    progress(f"{case.label}: pipeline")
    report = pipeline_cost.run_benchmark(settings, memory=not smoke)  # the CPU's way is tested on its own
    values = report.summary()
    row = {
        "case": case.label,
        "img2img s/step": f"{values['step_s']:.4f}",
        "ours s/step": f"{values['ours_step_s']:.4f}",
        "overhead": f"{values['overhead']:.3f}",
        "skip_vs_img2img": f"{values['skip_vs_img2img']:.3f}",
        "skip_0.1": f"{values['skip_0.1']:.3f}",
        "fan5": f"{values['fan5']:.3f}",
        "peak MB (img2img)": f"{report.memory_mb['img2img']:.0f}" if report.memory_mb else "-",
        "mem_overhead_mb": f"{values['mem_overhead_mb']:.2f}" if "mem_overhead_mb" in values else "-",
        "server_overhead": "-",
        "first preview s": "-",
    }
    if case.server:
        progress(f"{case.label}: server")
        served = server_overhead.run_benchmark(server_overhead.Settings(
            model=case.model, device=device, size=case.size, steps=4 if smoke else 20,
            repeats=1 if smoke else 3, dtype=case.dtype, threads=1 if smoke else None,
            clock="cpu" if smoke else "wall"))
        summary = served.summary()
        row["server_overhead"] = f"{summary['server_overhead']:.3f}"
        row["first preview s"] = f"{summary['first_preview_s']:.3f}"
    row["wall s"] = f"{time.perf_counter() - started:.0f}"
    return row


def markdown_table(rows: Sequence[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row.get(c, "-") for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def machine(smoke: bool) -> str:
    import torch

    where = "CPU smoke run" if smoke else torch.cuda.get_device_name(0)
    return (f"{where}; torch {torch.__version__}, Python {platform.python_version()}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny models on the CPU (tests the code, not speed)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "gpu_results.md")
    args = parser.parse_args(argv)
    if not args.cpu_smoke:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA GPU here; --cpu-smoke runs the same code on the CPU")
    cases = CPU_SMOKE_CASES if args.cpu_smoke else GPU_CASES
    started = time.perf_counter()
    rows = [run_case(case, args.cpu_smoke) for case in cases]
    text = (f"{machine(args.cpu_smoke)}; {time.perf_counter() - started:.0f} s in all. Steps: "
            f"{10 if args.cpu_smoke else 20}, DPM++ 2M Karras, CFG 7.5; ratios: medians of per-round ratios.\n\n"
            + markdown_table(rows))
    args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
