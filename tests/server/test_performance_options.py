"""The server's performance options give the same pictures as without (tolerances stated per test):
``--channels-last``, ``--compile``, the tiled VAE (``--vae-tile-above``), and ``--preview-vae``; and
attention runs through PyTorch's scaled_dot_product_attention.

Speed is left to the GPU (``bench/gpu.sh``). ``--compile`` is tested with torch.compile's ``eager``
backend (dynamo captures the UNet's graph and runs it: ~10 s here); the server's ``inductor`` backend
generates C++ on a CPU and takes minutes for tiny-sd on this machine, so its run of the same test
(same tolerance, 1e-5) is opt-in: ``DIFFDIFF_TEST_INDUCTOR=1``."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from eval.images import synthetic_image
from server.__main__ import parse_args
from server.config import PipelineOptions
from server.models import load_pipeline
from server.models.performance import (
    TINY_PREVIEW_VAE,
    apply_options,
    attention_processors,
    compile_denoisers,
    warm_up,
)

SDPA_PROCESSORS = {"AttnProcessor2_0"}  # diffusers' processor that calls F.scaled_dot_product_attention


def run(pipe, size: int = 64, strength: float = 0.6, **kwargs) -> np.ndarray:
    image = Image.fromarray(synthetic_image(size, size, seed=0))
    change_map = np.full((size, size), strength, np.float32)
    return pipe(prompt="a harbour", image=image, change_map=change_map, num_inference_steps=5,
                output_type="np", generator=torch.Generator().manual_seed(0), **kwargs).images


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return run(load_pipeline("tiny-sd"))


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_attention_goes_through_sdpa(model: str, monkeypatch) -> None:
    pipe = load_pipeline(model)
    assert attention_processors(pipe) == SDPA_PROCESSORS
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    run(pipe)
    assert calls


def test_channels_last_gives_the_same_picture(reference: np.ndarray) -> None:
    pipe = load_pipeline("tiny-sd", options=PipelineOptions(channels_last=True))
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    # Convolutions sum in another order in NHWC: float32 rounding only.
    assert np.abs(run(pipe) - reference).max() < 1e-4


# The server's default backend generates and compiles C++ here (gcc/g++ are installed): minutes on
# this CPU, so it runs only when asked: DIFFDIFF_TEST_INDUCTOR=1 (bench/gpu.sh times it on a GPU).
INDUCTOR = pytest.param("inductor", marks=pytest.mark.skipif(
    os.environ.get("DIFFDIFF_TEST_INDUCTOR") != "1",
    reason="inductor compiles C++ for minutes on a CPU: set DIFFDIFF_TEST_INDUCTOR=1"))


@pytest.mark.parametrize("backend", ["eager", INDUCTOR])
def test_compiled_denoiser_gives_the_same_picture(reference: np.ndarray, backend: str) -> None:
    pipe = load_pipeline("tiny-sd")
    unet = pipe.unet
    compile_denoisers(pipe, backend=backend)
    warm_up(pipe)  # compiles at the native resolution, the size run() uses
    assert pipe.unet is unet and unet._compiled_call_impl is not None  # compiled in place
    assert np.abs(run(pipe) - reference).max() < 1e-5


def test_vae_runs_tiled_above_the_threshold_only(monkeypatch) -> None:
    pipe = load_pipeline("tiny-sd", options=PipelineOptions(vae_tile_above=96))
    tiled = []
    vae = pipe.vae
    for name in ("_tiled_encode", "tiled_decode"):
        original = getattr(vae, name)
        monkeypatch.setattr(vae, name, lambda *a, _f=original, _n=name, **k: tiled.append(_n) or _f(*a, **k))
    run(pipe, size=96)
    assert tiled == []
    run(pipe, size=128)
    assert tiled == ["_tiled_encode", "tiled_decode"]


def test_tiled_vae_matches_the_untiled_one_within_tolerance() -> None:
    """Each tile is normalised on its own: the pictures differ, by little on a trained VAE. The tiny
    VAE (random weights, 4 channels per norm group, 64-px tiles) is a harsh case: mean difference
    <= 0.08 of the range here (0.05 measured). Kept pixels stay exact either way."""
    size = 192
    untiled = run(load_pipeline("tiny-sd", options=PipelineOptions(vae_tile_above=10_000)), size)
    tiled_pipe = load_pipeline("tiny-sd", options=PipelineOptions(vae_tile_above=64))
    tiled = run(tiled_pipe, size)
    assert tiled_pipe.vae.use_tiling
    assert np.abs(tiled - untiled).mean() <= 0.08
    # A map that keeps the left half: those pixels are the input's, tiled or not.
    image = Image.fromarray(synthetic_image(size, size, seed=0))
    change_map = np.zeros((size, size), np.float32)
    change_map[:, size // 2:] = 1.0
    out = tiled_pipe(prompt="", image=image, change_map=change_map, num_inference_steps=3, output_type="np",
                     generator=torch.Generator().manual_seed(0)).images[0]
    assert np.array_equal(np.round(out[:, : size // 2] * 255), np.asarray(image)[:, : size // 2])


def test_default_tiling_threshold_is_twice_the_native_resolution() -> None:
    pipe = load_pipeline("tiny-sd")
    assert pipe.vae_tile_above == 2 * pipe.native_resolution


def test_preview_vae_previews_at_half_the_picture_size() -> None:
    pipe = load_pipeline("tiny-sd", options=PipelineOptions(preview_vae=TINY_PREVIEW_VAE))
    infos = []
    size = 72  # not a multiple of 16: the preview is cropped like the picture (9 latent cells)
    image = Image.fromarray(synthetic_image(size, size, seed=0))
    pipe(prompt="", image=image, change_map=np.ones((size, size), np.float32), num_inference_steps=3,
         output_type="np", callback=infos.append)
    preview = infos[0].preview()
    assert preview.shape == (size // 2, size // 2, 3) and preview.dtype == np.uint8
    # The linear map stays the default: 1/8 of the picture.
    assert load_pipeline("tiny-sd").preview_decoder is None


def test_options_from_the_command_line() -> None:
    args = parse_args(["--model", "tiny-sd", "--channels-last", "--compile", "--preview-vae", "tiny-taesd",
                       "--vae-tile-above", "2048"])
    assert (args.channels_last, args.compile, args.preview_vae, args.vae_tile_above) == (
        True, True, "tiny-taesd", 2048)
    defaults = parse_args([])
    assert (defaults.channels_last, defaults.compile, defaults.preview_vae, defaults.vae_tile_above) == (
        False, False, None, None)


def test_apply_options_without_any_changes_nothing_but_the_tiling_threshold(reference: np.ndarray) -> None:
    pipe = apply_options(load_pipeline("tiny-sd"), PipelineOptions())
    assert pipe.preview_decoder is None
    assert np.array_equal(run(pipe), reference)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precisions_run_and_stay_close_to_float32(dtype: torch.dtype, reference: np.ndarray) -> None:
    """--dtype float16 / bfloat16 (the GPU's precisions) on the CPU: same computation, rounder
    numbers: within 0.05 of the range on average (tiny-sd, random weights)."""
    pipe = load_pipeline("tiny-sd", dtype=dtype)
    assert pipe.dtype == dtype and pipe.vae.dtype == dtype
    images = run(pipe)
    assert np.isfinite(images).all()
    assert np.abs(images - reference).mean() < 0.05


def test_a_run_never_walks_the_module_tree(monkeypatch) -> None:
    """diffusers' ModelMixin.device walks every module (~1,100 on SD 1.5: 5-30 ms on a CPU) per
    read; a run read it five times (bench/RESULTS.md, issue 15's profile). Now: no walk at all."""
    import diffusers.hooks.group_offloading as offloading

    pipe = load_pipeline("tiny-sd")
    walks = []
    walk = offloading._get_top_level_group_offload_hook
    monkeypatch.setattr(offloading, "_get_top_level_group_offload_hook", lambda m: walks.append(m) or walk(m))
    run(pipe)
    assert walks == []
