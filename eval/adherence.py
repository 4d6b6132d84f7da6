"""Adherence to the change map, the paper's Table 1 (§5.2): our pipeline vs binary-mask inpainting.

    python -m eval                                # = python -m eval.adherence
    python -m eval.adherence                      # tiny-sd on the CPU, a few minutes: shows the mechanics
    python -m eval.adherence --quick              # 2 pictures at 64 px: about a minute
    python -m eval.adherence --model stabilityai/stable-diffusion-2-1-base --device cuda --count 1000 --size 512 \
        --steps 100                               # the paper's setting (with its images in --images DIR)

For each map kind (gradient, shapes, triangles) and each input picture, the differential pipeline
edits the picture with the map; the baseline edits it with the map binarised at a threshold
(change fully above it, keep exactly below: binary-mask inpainting on the same model, same seeds),
and, as in the paper, the best threshold is reported. Both are scored against an all-change run
of the same picture and seed. Maps use the project's convention, 1 = change fully, 0 = keep
(`mu_paper = 1 - map`).

With random-weight test models (tiny-sd) the outputs are not pictures: the numbers show that the
edit follows the map, not image quality.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from eval.images import image_set
from eval.maps import MAP_KINDS, make_map
from eval.metrics import FALLBACK_DISTANCE, Distance, MeanDistanceMap, cam, dam, edit_strength_map, get_distance
from eval.metrics import lpips_unavailable_reason as _lpips_reason

DEFAULT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class Score:
    cam: float
    dam: float
    threshold: float | None = None  # the baseline's best threshold


@dataclass
class AdherenceResult:
    ours: dict[str, Score] = field(default_factory=dict)
    baseline: dict[str, Score] = field(default_factory=dict)
    baseline_by_threshold: dict[str, dict[float, Score]] = field(default_factory=dict)
    distance: str = ""
    images: int = 0
    size: tuple[int, int] = (0, 0)
    steps: int = 0
    runs: int = 0
    seconds: float = 0.0


def binarise(change_map: np.ndarray, threshold: float) -> np.ndarray:
    """The binary-mask baseline's map: change fully where the map exceeds `threshold`, keep elsewhere."""
    return (change_map > threshold).astype(np.float32)


def edit(
    pipe: Any, image: np.ndarray, change_map: np.ndarray, seed: int, steps: int, prompt: str, guidance_scale: float
) -> np.ndarray:
    """One pipeline run (agreed interface of `server.models.load_pipeline`) -> uint8 HxWx3."""
    import torch

    result = pipe(
        prompt=prompt,
        negative_prompt="",
        image=Image.fromarray(image),
        change_map=change_map,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(seed),
        output_type="pil",
    )
    return np.asarray(result.images[0].convert("RGB"), dtype=np.uint8)


def run_adherence(
    pipe: Any,
    images: Sequence[np.ndarray],
    *,
    steps: int = 10,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    kinds: Sequence[str] = MAP_KINDS,
    distance: Distance | None = None,
    prompt: str = "",
    guidance_scale: float = 1.0,
    seed: int = 0,
    map_seed: int = 0,
    progress: Any = None,
) -> AdherenceResult:
    """Score our pipeline and the binary-mask baseline on every map kind over `images`.

    Image i uses seed `seed + i` in every run (ours, baseline, all-change), so the methods differ
    only in the map they were given.
    """
    distance = distance or get_distance("auto")
    height, width = images[0].shape[:2]
    result = AdherenceResult(distance=distance.name, images=len(images), size=(width, height), steps=steps)
    started = time.perf_counter()

    def run(image_index: int, change_map: np.ndarray) -> np.ndarray:
        result.runs += 1
        if progress is not None:
            progress(result.runs)
        return edit(pipe, images[image_index], change_map, seed + image_index, steps, prompt, guidance_scale)

    all_change = MeanDistanceMap(distance)
    for i, image in enumerate(images):
        all_change.add(image, run(i, np.ones((height, width), dtype=np.float32)))
    baseline_mean = all_change.mean()

    for kind in kinds:
        change_map = make_map(kind, width, height, map_seed)
        ours = MeanDistanceMap(distance)
        for i, image in enumerate(images):
            ours.add(image, run(i, change_map))
        e = edit_strength_map(ours.mean(), baseline_mean)
        result.ours[kind] = Score(cam(change_map, e), dam(change_map, e))

        by_threshold: dict[float, Score] = {}
        for threshold in thresholds:
            binary = binarise(change_map, threshold)
            if binary.min() == binary.max():
                continue  # the threshold leaves one region only: nothing to compare
            mask_run = MeanDistanceMap(distance)
            for i, image in enumerate(images):
                mask_run.add(image, run(i, binary))
            e = edit_strength_map(mask_run.mean(), baseline_mean)
            by_threshold[threshold] = Score(cam(change_map, e), dam(change_map, e), threshold)
        result.baseline_by_threshold[kind] = by_threshold
        scored = [s for s in by_threshold.values() if not math.isnan(s.cam)]
        result.baseline[kind] = (
            max(scored, key=lambda s: s.cam) if scored else Score(float("nan"), float("nan"), None)
        )
    result.seconds = time.perf_counter() - started
    return result


def format_table(result: AdherenceResult, model: str = "") -> str:
    """The paper's Table 1 layout: one row per method, CAM and DAM per map kind."""
    kinds = list(result.ours)
    w, h = result.size
    lines = [
        f"Adherence to the change map (paper Table 1 layout): model {model or '?'}, {result.images} images "
        f"{w}x{h}, {result.steps} steps, distance {result.distance}",
        f"DAM is a Frobenius norm at {w}x{h}: compare DAMs only at one resolution. CAM higher is better, DAM lower.",
        "",
    ]
    header = f"{'method':<34}" + "".join(f"{kind + ' CAM':>16}{kind + ' DAM':>16}" for kind in kinds)
    lines += [header, "-" * len(header)]

    def row(name: str, scores: dict[str, Score]) -> str:
        return f"{name:<34}" + "".join(f"{scores[k].cam:>16.3f}{scores[k].dam:>16.2f}" for k in kinds)

    lines.append(row("Differential diffusion (ours)", result.ours))
    lines.append(row("Binary-mask inpaint (best thr.)", result.baseline))
    lines.append(
        f"{'  best threshold':<34}"
        + "".join(f"{_fmt_threshold(result.baseline[k].threshold):>16}{'':>16}" for k in kinds)
    )
    return "\n".join(lines)


def _fmt_threshold(threshold: float | None) -> str:
    return "-" if threshold is None else f"{threshold:g}"


def summary_line(result: AdherenceResult) -> str:
    pairs = []
    for kind in result.ours:
        pairs.append(f"cam_{kind}={result.ours[kind].cam:.4f}")
        pairs.append(f"dam_{kind}={result.ours[kind].dam:.3f}")
        pairs.append(f"baseline_cam_{kind}={result.baseline[kind].cam:.4f}")
        pairs.append(f"baseline_dam_{kind}={result.baseline[kind].dam:.3f}")
    pairs.append(f"distance={result.distance}")
    return " ".join(pairs)


def load_images(folder: Path, count: int, size: int) -> list[np.ndarray]:
    """Up to `count` pictures from `folder` (sorted by name), centre-cropped and resized to `size`."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))[:count]
    if not files:
        raise SystemExit(f"No .png/.jpg/.jpeg/.webp pictures in {folder}.")
    out = []
    for path in files:
        image = Image.open(path).convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
        out.append(np.asarray(image, dtype=np.uint8))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-sd", help="model id or path for server.models.load_pipeline")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--count", type=int, help="number of input pictures (default 4; --quick: 2)")
    parser.add_argument("--size", type=int, help="picture side in pixels (default 128; --quick: 64; the paper: 512)")
    parser.add_argument("--steps", type=int, default=10, help="inference steps (the paper: 100)")
    parser.add_argument("--images", type=Path, help="folder of input pictures instead of the generated set")
    parser.add_argument("--prompt", default="", help="the paper uses an empty prompt")
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--thresholds", default=",".join(f"{t:g}" for t in DEFAULT_THRESHOLDS))
    parser.add_argument("--distance", default="auto", help=f"auto, lpips-alex or {FALLBACK_DISTANCE}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="2 pictures at 64 px, 1 thread, unless given")
    args = parser.parse_args(argv)
    args.count = args.count or (2 if args.quick else 4)
    args.size = args.size or (64 if args.quick else 128)
    if args.quick:
        args.threads = args.threads or 1

    import torch

    if args.threads:
        # One thread per process keeps a shared machine from stalling OpenMP's thread barriers.
        torch.set_num_threads(args.threads)

    from server.models import load_pipeline

    distance = get_distance(args.distance)
    if distance.name == FALLBACK_DISTANCE:
        print(f"note: perceptual distance is the fallback {FALLBACK_DISTANCE}, not LPIPS ({_lpips_reason()})")
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    pipe = load_pipeline(args.model, device=args.device, dtype=dtype)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    images = (
        load_images(args.images, args.count, args.size)
        if args.images
        else image_set(args.count, args.size, args.size)
    )
    thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
    total_runs = len(images) * (1 + len(MAP_KINDS) * (1 + len(thresholds)))

    def progress(done: int) -> None:
        if sys.stderr.isatty():  # a counter in place on a terminal; nothing in a log file
            print(f"\rrun {done}/{total_runs}", end="", file=sys.stderr, flush=True)

    result = run_adherence(
        pipe,
        images,
        steps=args.steps,
        thresholds=thresholds,
        distance=distance,
        prompt=args.prompt,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        progress=progress,
    )
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(format_table(result, args.model))
    print(f"({result.runs} pipeline runs in {result.seconds:.0f} s on {args.device})")
    print(summary_line(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
