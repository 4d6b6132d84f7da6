"""What a run skips because it would change nothing (issue 15's profile): the original noised for
no held cell, the composite over pixels the map gives a whole step. Outputs stay bit-exact; the
comparisons with diffusers' img2img (test_pipeline_sd.py) hold the rest."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from server.pipelines import composite_unchanged, unchanged_blend_weight
from tests.conftest import make_test_image
from tests.pipeline_helpers import PROMPT, record_keeps, striped_map


def count_add_noise(monkeypatch) -> list[int]:
    calls: list[int] = []
    add_noise = DDIMScheduler.add_noise

    def counting(self, *args, **kwargs):
        calls.append(1)
        return add_noise(self, *args, **kwargs)

    monkeypatch.setattr(DDIMScheduler, "add_noise", counting)
    return calls


@pytest.mark.parametrize(("strengths", "noisings"), [
    ([0.5, 0.5], 1),  # uniform: only the initial latents; no cell is ever held
    ([1.0, 0.5, 0.3], 1 + 7),  # fewest 3 steps of 10: cells held at step indices 1..7
    ([1.0, 0.5, 0.3, 0.0], 1 + 9),  # a strength-0 stripe is held at every step after the first
])
def test_the_original_is_noised_only_where_a_cell_is_held(tiny_sd, monkeypatch, strengths, noisings):
    keeps = record_keeps(monkeypatch, tiny_sd, lambda keep: bool(keep.any()))
    calls = count_add_noise(monkeypatch)
    out = tiny_sd(prompt=PROMPT, image=make_test_image(16 * len(strengths), 16),
                  change_map=striped_map(strengths, 16, height=16), num_inference_steps=10,
                  generator=torch.Generator().manual_seed(0), scheduler="DDIM", output_type="latent")
    assert out.steps_run == 10 * max(strengths)
    assert len(keeps) == out.steps_run  # the loop still passes every step's mask
    assert len(calls) == noisings
    # Whatever was skipped held no cell, or was the first step (the latents are that noising).
    assert sum(keeps[1:]) == noisings - 1


@pytest.mark.parametrize("shape", ["uniform", "ramp", "blob", "zero", "tiny values"])
def test_composite_equals_the_blend_formula_bit_for_bit(shape):
    rng = np.random.default_rng(0)
    size, k = 96, 10
    maps = {
        "uniform": np.full((size, size), 0.5, np.float32),
        "ramp": np.tile(np.linspace(0.0, 1.0, size, dtype=np.float32), (size, 1)),
        "blob": np.pad(np.full((size // 2, size // 3), 0.8, np.float32), ((24, 24), (10, 54))),
        "zero": np.zeros((size, size), np.float32),
        "tiny values": rng.random((size, size), dtype=np.float32) * 0.12,
    }
    pixel_map = maps[shape]
    generated = rng.random((2, size, size, 3), dtype=np.float32)
    original = rng.random((size, size, 3), dtype=np.float32)
    weight = unchanged_blend_weight(pixel_map, k)[None, :, :, None]
    expected = generated * weight + original[None] * (1.0 - weight)
    assert np.array_equal(composite_unchanged(generated.copy(), original, pixel_map, k), expected)
    read_only = generated.copy()
    read_only.flags.writeable = False
    assert np.array_equal(composite_unchanged(read_only, original, pixel_map, k), expected)
