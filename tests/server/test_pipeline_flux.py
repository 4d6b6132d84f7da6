"""The differential loop on tiny-flux (packed latents), against diffusers' Flux img2img."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import FluxImg2ImgPipeline
from PIL import Image

from server.pipelines import Cancelled
from server.pipelines.flux import FluxDifferentialPipeline, pack_latents, unpack_latents
from server.pipelines.flow import make_flow_scheduler
from shared import protocol as p
from tests.conftest import make_test_image
from tests.pipeline_helpers import (
    NEGATIVE, PROMPT, ForwardCalls, StepRecorder, cancel_when, half_changed,
    STRIPE_K, STRIPES, ReinjectionProbe, assert_kept_cells_match, kept_part_exact, make_run, quiet,
    record_keeps, server_job, stripe_steps, striped_map,
)
from tests.server.server_harness import async_test, of


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return make_test_image(64, 64, seed=2)


run = make_run(num_inference_steps=4, guidance_scale=3.5)


def reference(pipe, scheduler: str | None = None) -> FluxImg2ImgPipeline:
    components = dict(pipe.components)
    components["scheduler"] = make_flow_scheduler(scheduler, pipe.scheduler)
    return quiet(FluxImg2ImgPipeline(**components))


def test_loads_and_packs_2x2_cells_into_tokens(tiny_flux):
    assert isinstance(tiny_flux, FluxDifferentialPipeline)
    assert tiny_flux.family == "flux" and tiny_flux.native_resolution == 64
    assert tiny_flux.pad_multiple == 16
    x = torch.arange(2 * 16 * 4 * 6, dtype=torch.float32).reshape(2, 16, 4, 6)
    packed = pack_latents(x)
    assert packed.shape == (2, 2 * 3, 64)
    # token (row 0, col 1) holds cells (0..1, 2..3); channel c of cell (r, s) is at 4c + 2r + s
    assert packed[0, 1, 4 * 5 + 2 * 1 + 0] == x[0, 5, 1, 2]
    assert torch.equal(unpack_latents(packed, (4, 6)), x)


# -- uniform map == diffusers img2img --------------------------------------------------------------
@pytest.mark.parametrize("strength, scheduler", [(0.5, None), (1.0, None), (0.75, "Euler exponential")])
def test_uniform_map_equals_diffusers_img2img(tiny_flux, image, strength, scheduler):
    change_map = np.full((64, 64), strength, dtype=np.float32)
    ours = run(tiny_flux, image, change_map, seed=3, scheduler=scheduler)
    theirs = reference(tiny_flux, scheduler)(
        prompt=PROMPT, image=image, strength=strength, height=64, width=64,
        num_inference_steps=4, guidance_scale=3.5, generator=torch.Generator().manual_seed(3),
        output_type="np", max_sequence_length=tiny_flux.max_sequence_length,
    ).images
    assert ours.images.shape == theirs.shape == (1, 64, 64, 3)
    assert ours.steps_run == round(strength * 4)
    np.testing.assert_array_equal(ours.images, theirs)


def test_true_cfg_with_a_negative_prompt_and_a_batch_equals_img2img(tiny_flux, image,
                                                                    monkeypatch):
    calls = ForwardCalls(monkeypatch, tiny_flux.transformer)
    ours = tiny_flux(prompt=PROMPT, negative_prompt=NEGATIVE, true_cfg_scale=2.0, image=image,
                     change_map=Image.new("L", (64, 64), 128), num_inference_steps=4,
                     guidance_scale=3.5, num_images_per_prompt=2, output_type="np",
                     generator=torch.Generator().manual_seed(5))
    assert calls.count == 2 * 2  # two steps, a positive and a negative call each
    theirs = reference(tiny_flux)(
        prompt=PROMPT, negative_prompt=NEGATIVE, true_cfg_scale=2.0, image=image, strength=0.5,
        height=64, width=64, num_inference_steps=4, guidance_scale=3.5, num_images_per_prompt=2,
        generator=torch.Generator().manual_seed(5), output_type="np",
        max_sequence_length=tiny_flux.max_sequence_length,
    ).images
    np.testing.assert_array_equal(ours.images, theirs)
    assert not np.array_equal(ours.images[0], ours.images[1])


def test_distilled_guidance_reaches_the_transformer(tiny_flux, image):
    change_map = np.ones((64, 64), np.float32)
    a = run(tiny_flux, image, change_map, num_inference_steps=2, guidance_scale=1.0).images
    b = run(tiny_flux, image, change_map, num_inference_steps=2, guidance_scale=5.0).images
    assert not np.array_equal(a, b)


# -- Algorithm 2: skipping -------------------------------------------------------------------------
@pytest.mark.parametrize("top, steps", [(1.0, 8), (0.5, 4), (0.2, 1), (0.1, 0)])
def test_only_floor_max_map_times_k_steps_run(tiny_flux, image, monkeypatch, top, steps):
    calls = ForwardCalls(monkeypatch, tiny_flux.transformer)
    change_map = np.tile(np.linspace(0, top, 64, dtype=np.float32), (64, 1))
    change_map[:, -16:] = np.float32(top)
    out = run(tiny_flux, image, change_map, num_inference_steps=8)
    assert calls.count == steps == math.floor(top * 8 + 1e-4)
    assert out.steps_run == steps


# -- Algorithm 1 on packed latents ------------------------------------------------------------------
def test_the_packed_map_keeps_each_latent_cell_on_its_own_schedule(tiny_flux, monkeypatch):
    # 8-px columns: one latent cell each, so the two halves of every token differ.
    k = 4
    strengths = [0.0, 0.25, 0.5, 0.75, 1.0, 0.0, 0.5, 1.0]
    change_map = striped_map(strengths, 8, height=16)

    def unpacked(keep: torch.Tensor) -> torch.Tensor:
        assert keep.shape == (1, 4, 64)  # packed: 1 x 4 tokens x 64 channels
        return unpack_latents(keep.float(), (2, 8))[0].bool()

    keeps = record_keeps(monkeypatch, tiny_flux, unpacked)
    out = tiny_flux(prompt=PROMPT, image=make_test_image(64, 16), change_map=change_map,
                    num_inference_steps=k, generator=torch.Generator().manual_seed(0),
                    output_type="latent")
    keep = torch.stack(keeps)  # steps x channels x h x w
    assert keep.shape == (k, 16, 2, 8)
    assert torch.all(keep == keep[:, :1])  # every channel of a cell alike
    for j, s in enumerate(strengths):
        kept_at = keep[:, 0, :, j].all(dim=1).nonzero().flatten().tolist()
        assert torch.equal(keep[:, 0, 0, j], keep[:, 0, 1, j])
        expected = math.floor(s * k + 1e-4)
        assert kept_at == list(range(min(k - expected + 1, k))), (j, s, kept_at)
    # Unpacked latents come back, strength-0 cells exactly on the original.
    tensor, _ = tiny_flux.prepare_image(make_test_image(64, 16))
    z_init, _ = tiny_flux.prepare_latents(tensor, 1, torch.Generator().manual_seed(0),
                                          torch.float32)
    assert out.images.shape == (1, 16, 2, 8)
    for j in (0, 5):
        assert torch.equal(out.images[..., j], z_init[..., j])
    assert not torch.equal(out.images[..., 1], z_init[..., 1])


def test_strength_zero_pixels_equal_the_input(tiny_flux, image):
    change_map = np.zeros((64, 64), np.float32)
    change_map[:, 24:] = 1.0
    out = tiny_flux(prompt=PROMPT, image=image, change_map=change_map, num_inference_steps=3,
                    generator=torch.Generator().manual_seed(0))
    result, source = np.asarray(out.images[0]), np.asarray(image)
    assert np.array_equal(result[:, :24], source[:, :24])
    assert np.abs(result[:, 32:].astype(int) - source[:, 32:]).mean() > 10


def test_batch_variants_reproduce_alone_and_odd_sizes_work(tiny_flux):
    image = make_test_image(50, 37)
    change_map = np.full((37, 50), 0.75, np.float32)
    batch = tiny_flux(prompt=PROMPT, image=image, change_map=change_map, num_inference_steps=4,
                      num_images_per_prompt=2, output_type="np",
                      generator=[torch.Generator().manual_seed(60 + i) for i in range(2)]).images
    assert batch.shape == (2, 37, 50, 3) and not np.array_equal(batch[0], batch[1])
    alone = tiny_flux(prompt=PROMPT, image=image, change_map=change_map, num_inference_steps=4,
                      output_type="np", generator=torch.Generator().manual_seed(61)).images
    np.testing.assert_allclose(alone[0], batch[1], atol=1e-5)


# -- hooks -----------------------------------------------------------------------------------------
def test_preview_hook_gets_unpacked_latents_and_a_cheap_preview(tiny_flux):
    hook = StepRecorder()
    seen, previews = hook.seen, hook.previews

    tiny_flux(prompt=PROMPT, image=make_test_image(60, 44), change_map=np.ones((44, 60)),
              num_inference_steps=3, generator=torch.Generator().manual_seed(0), callback=hook)
    assert [info.step for info in seen] == [1, 2, 3]
    assert all(i.family == "flux" and i.latents.shape == (1, 16, 6, 8) for i in seen)
    assert all(pv.shape == (6, 8, 3) and pv.dtype == np.uint8 for pv in previews)
    assert not np.array_equal(previews[0], previews[-1])


def test_cancel_stops_before_the_next_step(tiny_flux, image, monkeypatch):
    calls = ForwardCalls(monkeypatch, tiny_flux.transformer)
    cancel, hook = cancel_when(lambda info: info.step == 1)

    with pytest.raises(Cancelled):
        tiny_flux(prompt=PROMPT, image=image, change_map=np.ones((64, 64), np.float32),
                  num_inference_steps=5, callback=hook, cancel=cancel)
    assert calls.count == 1


# -- through the real server -----------------------------------------------------------------------
@async_test
async def test_a_job_through_the_server_returns_the_pipelines_result_at_full_size(tiny_flux):
    image, change = half_changed(seed=4)  # 80 x 48, not a multiple of 16: padded and cropped
    events, families = await server_job(tiny_flux, "tiny-flux", image, change, steps=3, seed=11,
                                        preview_every=1)
    assert "flux" in families
    # The server ran only the edited region (plus a margin); the kept part is exact.
    got, source, kept = kept_part_exact(events, image)
    assert events[-1].steps_run == 3 and got.shape[0] == 48
    assert of(events, p.Preview)  # cheap latent previews went out
    assert np.abs(got[:, kept + 8:].astype(int) - source[:, kept + 8:]).mean() > 10


def test_kept_cells_are_the_original_noised_to_each_steps_own_sigma(tiny_flux, monkeypatch):
    # Packed latents: kept cells (unpacked) must be the original noised to each step's own sigma
    # of Flux's resolution-shifted schedule.
    probe = ReinjectionProbe(monkeypatch, tiny_flux, [tiny_flux.transformer])
    run(tiny_flux, make_test_image(64, 32), striped_map(STRIPES, 16, height=32),
        num_inference_steps=STRIPE_K)
    reference = make_flow_scheduler(None, tiny_flux.scheduler)
    tiny_flux.set_timesteps(reference, STRIPE_K, (4, 8))
    z_init, noise = (unpack_latents(x, (4, 8)) for x in probe.originals[0])
    n = stripe_steps(cells_per_stripe=2)
    assert_kept_cells_match([unpack_latents(s, (4, 8)) for s in probe.samples], [
        (n <= STRIPE_K - i, reference.scale_noise(z_init, t[None], noise))
        for i, t in enumerate(reference.timesteps)])
