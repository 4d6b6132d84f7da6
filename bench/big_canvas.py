"""Big canvases: click -> result layer in the real Krita, a 4096x4096 canvas against a 1024x1024 one.

    python bench/big_canvas.py                      # tiny-sd server, 3 runs per size: ~1-2 min
    python bench/big_canvas.py --model sd15-size    # the model's own cost added (minutes on a CPU)

The plugin is built as its zip and installed into a fresh Krita profile; the real server runs on a free
loopback port; kritarunner (offscreen) drives the installed plugin's script controller. Each document has a
Background picture and a black, half-opaque 'Change Map' layer with the same 512x512 white square at its
centre, so both jobs change the same area: only the canvas differs. Timed per run: click (prepare_job: the
map read, the crop, the picture read and encoded) -> result layer in the document (the job's 'done'),
median of --runs after one warm-up job per size, the sizes taking turns (forwards, then backwards).
What must hold (issue 15): ratio = 4096 / 1024 <= 1.3.
--profile adds the plugin's cProfile of one more run per size (Krita side; the server's work is inside
'wait_for'). The last line holds `name=value` pairs for scripts.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/big_canvas.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench.common import load_average, progress  # noqa: E402

KRITA_SCRIPTS = Path(__file__).resolve().parent / "krita"
GOAL = 1.3


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tools():
    """The team's Krita harness, live server and packaging script (loaded by path, as the tests do)."""
    harness = _load("krita_harness", ROOT / "tests" / "krita" / "harness.py")
    live_server = _load("e2e_live_server", ROOT / "tests" / "e2e" / "live_server.py")
    build_plugin = _load("build_plugin", ROOT / "packaging" / "build_plugin.py")
    return harness, live_server, build_plugin


def install_plugin(home: Path, build_plugin) -> Path:
    """The zip into a fresh profile's pykrita folder, enabled, as Krita's importer leaves it."""
    plugin_zip = build_plugin.build_zip(home / "dist")
    pykrita = home / ".local/share/krita/pykrita"
    pykrita.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(pykrita)
    build_plugin.enable_in_kritarc(home / ".config/kritarc")
    return pykrita


def measure(model: str, sizes: Sequence[int], area: int, runs: int, steps: int, profile: bool,
            workdir: Path) -> dict:
    harness, live_server, build_plugin = tools()
    if not harness.krita_available():
        raise SystemExit("kritarunner (Krita 5) is not installed")
    home = workdir / "home"
    pykrita = install_plugin(home, build_plugin)
    with live_server.running_server(workdir / "server.log", model=model) as url:
        progress(f"server ({model}) up at {url}; Krita runs {runs} + 1 jobs per size {list(sizes)}")
        return harness.run_in_krita(
            "big_canvas_krita", "measure",
            {"url": url, "sizes": list(sizes), "area": area, "runs": runs, "steps": steps, "profile": profile},
            home=home, pythonpath=[KRITA_SCRIPTS, harness.HERE, pykrita], timeout_s=3600)


def summary(results: dict, sizes: Sequence[int]) -> dict[str, float]:
    medians = {size: {key: statistics.median(run[key] for run in results[str(size)]["runs"])
                      for key in ("total_s", "prepare_s", "after_prepare_s")} for size in sizes}
    small, big = min(sizes), max(sizes)
    out = {f"click_to_layer_{size}_s": medians[size]["total_s"] for size in sizes}
    out.update({f"prepare_{size}_s": medians[size]["prepare_s"] for size in sizes})
    out["ratio"] = medians[big]["total_s"] / medians[small]["total_s"]
    return out


def format_report(results: dict, sizes: Sequence[int], args: argparse.Namespace, load: float) -> str:
    lines = [f"bench/big_canvas.py: model {args.model}, {args.steps} steps, a {args.area}x{args.area} painted area "
             f"at the centre, median of {args.runs} interleaved runs after a warm-up; load average {load:.1f} on "
             f"{os.cpu_count()} CPUs", "",
             f"{'canvas':<12}{'click->layer s':>16}{'(min-max)':>18}{'prepare s':>11}{'rest s':>9}  crop sent"]
    for size in sizes:
        runs = results[str(size)]["runs"]
        totals = [r["total_s"] for r in runs]
        lines.append(f"{size}x{size:<7}{statistics.median(totals):>16.3f}"
                     f"{f'({min(totals):.3f}-{max(totals):.3f})':>18}"
                     f"{statistics.median(r['prepare_s'] for r in runs):>11.3f}"
                     f"{statistics.median(r['after_prepare_s'] for r in runs):>9.3f}  {runs[0]['crop']}")
    values = summary(results, sizes)
    lines += ["", f"ratio {max(sizes)} / {min(sizes)}: {values['ratio']:.3f} (goal <= {GOAL})"]
    for size in sizes:
        profile = results[str(size)].get("profile")
        if profile:
            lines += ["", f"Plugin profile of one more {size} run (cProfile inside Krita, cumulative):", profile]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-sd", help="the server's model (tiny-sd, sd15-size, ...)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096], help="canvas sides in px")
    parser.add_argument("--area", type=int, default=512, help="side of the painted square in px")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per size (after one warm-up)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps of each job")
    parser.add_argument("--profile", action="store_true", help="add a cProfile of one more run per size (Krita side)")
    args = parser.parse_args(argv)
    if args.runs < 1 or len(args.sizes) < 2 or min(args.sizes) < args.area:
        parser.error("--runs >= 1, two sizes or more, each at least --area")
    sizes = sorted(set(args.sizes))
    started = time.monotonic()
    load = load_average()
    with tempfile.TemporaryDirectory(prefix="big-canvas-") as tmp:
        results = measure(args.model, sizes, args.area, args.runs, args.steps, args.profile, Path(tmp))
    load = max(load, load_average())
    print(format_report(results, sizes, args, load))
    progress(f"done in {time.monotonic() - started:.0f} s")
    print(" ".join(f"{name}={value:.4f}" for name, value in summary(results, sizes).items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
