"""The SDXL differential loop (and the base + refiner split) against diffusers' SDXL img2img."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline

import server.pipelines as pipelines_module
from server.models.tiny import tiny_components
from server.pipelines.sd import StableDiffusionXLDifferentialPipeline
from server.schedulers import make_scheduler
from tests.conftest import make_test_image
from tests.pipeline_helpers import (
    NEGATIVE, PROMPT, STRIPE_K, STRIPES, ForwardCalls, ReinjectionProbe, assert_kept_cells_match,
    quiet, record_keeps, stripe_steps, striped_map,
)

SCHEDULERS = ("DDIM", "Euler", "Euler a", "DPM++ 2M Karras", "UniPC")
FIRST_ORDER = ("DDIM", "Euler", "Euler a")  # one step uses only the current model output
MULTISTEP = ("DPM++ 2M Karras", "UniPC", "PNDM")  # steps also use earlier model outputs


def reference_base(pipe, scheduler: str) -> StableDiffusionXLImg2ImgPipeline:
    return quiet(StableDiffusionXLImg2ImgPipeline(
        **{**pipe.components, "scheduler": make_scheduler(scheduler, pipe.scheduler.config)},
        requires_aesthetics_score=False, force_zeros_for_empty_prompt=True, add_watermarker=False,
    ))


def reference_refiner(pipe, scheduler: str) -> StableDiffusionXLImg2ImgPipeline:
    """The refiner the way diffusers runs it: its own pipeline, its own fresh scheduler."""
    refiner = pipe.refiner
    return quiet(StableDiffusionXLImg2ImgPipeline(
        vae=pipe.vae, text_encoder=None, tokenizer=None, text_encoder_2=refiner.text_encoder_2,
        tokenizer_2=refiner.tokenizer_2, unet=refiner.unet,
        scheduler=make_scheduler(scheduler, pipe.scheduler.config),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False, add_watermarker=False,
    ))


def common(seed: int = 3) -> dict:
    return dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=10, guidance_scale=7.5,
                generator=torch.Generator().manual_seed(seed))


# -- uniform map == diffusers SDXL img2img ---------------------------------------------------------
@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("strength", [0.3, 0.7, 1.0])
def test_uniform_map_equals_diffusers_sdxl_img2img(tiny_sdxl, test_image, scheduler, strength):
    change_map = np.full((64, 64), strength, dtype=np.float32)
    ours = tiny_sdxl(image=test_image, change_map=change_map, scheduler=scheduler,
                     output_type="np", **common())
    theirs = reference_base(tiny_sdxl, scheduler)(image=test_image, strength=strength,
                                                   output_type="np", **common()).images
    assert ours.steps_run == int(strength * 10 + 1e-4)
    assert ours.images.shape == theirs.shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(ours.images, theirs)


def test_uniform_map_equals_sdxl_img2img_with_batch(tiny_sdxl, test_image):
    change_map = np.full((64, 64), 0.5, dtype=np.float32)
    ours = tiny_sdxl(image=test_image, change_map=change_map, scheduler="DPM++ 2M Karras",
                     num_images_per_prompt=2, output_type="np",
                     **{**common(), "generator": [torch.Generator().manual_seed(s) for s in (1, 2)]})
    theirs = reference_base(tiny_sdxl, "DPM++ 2M Karras")(
        image=test_image, strength=0.5, num_images_per_prompt=2, output_type="np",
        **{**common(), "generator": [torch.Generator().manual_seed(s) for s in (1, 2)]}).images
    assert ours.images.shape == (2, 64, 64, 3)
    assert not np.array_equal(ours.images[0], ours.images[1])
    np.testing.assert_array_equal(ours.images, theirs)


@pytest.mark.parametrize("force_upcast", [True, False])
def test_half_precision_equals_sdxl_img2img(test_image, force_upcast):
    # SDXL's VAE overflows in fp16: with force_upcast it encodes and decodes in fp32, as in diffusers.
    components = tiny_components("tiny-sdxl")
    components["vae"].register_to_config(force_upcast=force_upcast)
    pipe = StableDiffusionXLDifferentialPipeline(**components).to(dtype=torch.float16)
    change_map = np.full((64, 64), 0.5, dtype=np.float32)
    ours = pipe(image=test_image, change_map=change_map, scheduler="Euler", output_type="np",
                **{**common(), "num_inference_steps": 6}).images
    theirs = reference_base(pipe, "Euler")(image=test_image, strength=0.5, output_type="np",
                                           **{**common(), "num_inference_steps": 6}).images
    assert pipe.vae.dtype == torch.float16  # back in fp16 after the run
    np.testing.assert_array_equal(ours, theirs)



def test_a_vae_with_latent_mean_and_std_equals_sdxl_img2img(test_image):
    # Some SDXL-family VAEs normalise latents per channel (latents_mean / latents_std in their
    # config); diffusers applies them on encode and decode, and so must we.
    components = tiny_components("tiny-sdxl")
    components["vae"].register_to_config(latents_mean=[0.3, -0.2, 0.1, 0.5], latents_std=[1.5, 0.8, 1.2, 2.0])
    pipe = StableDiffusionXLDifferentialPipeline(**components)
    change_map = np.full((64, 64), 0.5, dtype=np.float32)
    ours = pipe(image=test_image, change_map=change_map, scheduler="Euler", output_type="np",
                **{**common(), "num_inference_steps": 6}).images
    theirs = reference_base(pipe, "Euler")(image=test_image, strength=0.5, output_type="np",
                                           **{**common(), "num_inference_steps": 6}).images
    np.testing.assert_array_equal(ours, theirs)
    plain = StableDiffusionXLDifferentialPipeline(**tiny_components("tiny-sdxl"))(
        image=test_image, change_map=change_map, scheduler="Euler", output_type="np",
        **{**common(), "num_inference_steps": 6}).images
    assert not np.array_equal(ours, plain)  # the statistics really mattered

# -- base + refiner split ----------------------------------------------------------------------------
def diffusers_split(pipe, image, strength: float, split: float, scheduler: str) -> torch.Tensor:
    """diffusers' documented two-pipeline way: base with ``denoising_end``, latents handed to the
    refiner with ``denoising_start``; one generator object for both, as the docs do."""
    kwargs = common()
    base_latents = reference_base(pipe, scheduler)(
        image=image, strength=strength, denoising_end=split, output_type="latent", **kwargs).images
    return reference_refiner(pipe, scheduler)(
        image=base_latents, strength=strength, denoising_start=split, output_type="latent",
        **kwargs).images


@pytest.mark.parametrize("scheduler", FIRST_ORDER)
@pytest.mark.parametrize("strength, split", [(1.0, 0.8), (0.7, 0.5), (0.5, 0.8)])
def test_refiner_split_equals_diffusers_base_then_refiner(tiny_sdxl_refined, test_image, scheduler,
                                                          strength, split):
    # (0.5, 0.8): the run starts below the split, so the refiner does every step.
    change_map = np.full((64, 64), strength, dtype=np.float32)
    ours = tiny_sdxl_refined(image=test_image, change_map=change_map, scheduler=scheduler,
                             refiner_split=split, output_type="latent", **common()).images
    theirs = diffusers_split(tiny_sdxl_refined, test_image, strength, split, scheduler)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("scheduler", MULTISTEP)
def test_refiner_split_with_multistep_scheduler(tiny_sdxl_refined, test_image, monkeypatch,
                                                scheduler):
    """Multistep schedulers (DPM++ 2M, UniPC, PNDM) are not bit-equal to diffusers' split, by design.

    diffusers runs base and refiner as two pipelines; the refiner's ``set_timesteps`` builds a
    fresh solver state, so its first steps forget the model outputs of the base's last steps and
    restart at first order (DPM++: ``model_outputs``/``lower_order_nums``; UniPC also
    ``last_sample``, the corrector's input; PNDM its ``ets`` history). Our loop is one solve
    with one scheduler, so the refiner's first step still extrapolates from the base's outputs,
    which is the multistep method as written. Everything else is identical, and this test
    shows it exactly:

    1. the base part (latents at the split) equals diffusers' base with ``denoising_end``;
    2. clearing the solver history at the split -- what the fresh diffusers scheduler does --
       makes the whole result equal diffusers' base + refiner bit for bit;
    3. without clearing it, the results differ (the history really carries over).
    """
    strength, split, k = 1.0, 0.8, 10
    change_map = np.full((64, 64), strength, dtype=np.float32)
    cutoff = round(1000 - split * 1000)  # diffusers' discrete_timestep_cutoff
    sched = make_scheduler(scheduler, tiny_sdxl_refined.scheduler.config)
    sched.set_timesteps(k)
    base_steps = int((sched.timesteps >= cutoff).sum()) // sched.order  # 6 with Karras sigmas
    at_split: list[torch.Tensor] = []

    def hook(info):
        if info.step == base_steps:
            at_split.append(info.latents.clone())

    ours = tiny_sdxl_refined(image=test_image, change_map=change_map, scheduler=scheduler,
                             refiner_split=split, output_type="latent", callback=hook,
                             **{**common(), "num_inference_steps": k}).images
    base_only = reference_base(tiny_sdxl_refined, scheduler)(
        image=test_image, strength=strength, denoising_end=split, output_type="latent",
        **common()).images
    assert torch.equal(at_split[0], base_only)  # 1.

    make = pipelines_module.make_scheduler

    def forgetting_at_split(name, config):
        sched = make(name, config)
        step = sched.step

        def step_then_forget(model_output, t, sample, *args, **kwargs):
            if t < cutoff and not getattr(sched, "_forgot", False):
                sched._forgot = True  # what a freshly set-up scheduler starts from
                sched.model_outputs = [None] * len(getattr(sched, "model_outputs", []))
                for attr, empty in (("lower_order_nums", 0), ("last_sample", None),
                                    ("ets", []), ("counter", 0)):
                    if hasattr(sched, attr):
                        setattr(sched, attr, empty)
                if hasattr(sched, "timestep_list"):
                    sched.timestep_list = [None] * len(sched.timestep_list)
            return step(model_output, t, sample, *args, **kwargs)

        sched.step = step_then_forget
        return sched

    monkeypatch.setattr(pipelines_module, "make_scheduler", forgetting_at_split)
    forgetting = tiny_sdxl_refined(image=test_image, change_map=change_map, scheduler=scheduler,
                                   refiner_split=split, output_type="latent",
                                   **{**common(), "num_inference_steps": k}).images
    theirs = diffusers_split(tiny_sdxl_refined, test_image, strength, split, scheduler)
    assert torch.equal(forgetting, theirs)  # 2.
    assert not torch.equal(ours, theirs)  # 3.


def test_refiner_runs_the_steps_below_the_split(tiny_sdxl_refined, test_image, monkeypatch):
    base_calls = ForwardCalls(monkeypatch, tiny_sdxl_refined.unet)
    refiner_calls = ForwardCalls(monkeypatch, tiny_sdxl_refined.refiner.unet)
    change_map = np.full((64, 64), 0.7, dtype=np.float32)
    # 7 of 10 steps run (indices 3..9); with leading spacing, indices 0..7 are at or above 0.8's
    # cutoff (timestep 200): base runs 3..7, the refiner 8..9.
    tiny_sdxl_refined(image=test_image, change_map=change_map, scheduler="Euler",
                      refiner_split=0.8, output_type="latent", **common())
    assert (base_calls.count, refiner_calls.count) == (5, 2)
    base_calls.count = refiner_calls.count = 0
    tiny_sdxl_refined(image=test_image, change_map=change_map, scheduler="Euler",
                      refiner_split=1.0, output_type="latent", **common())
    assert (base_calls.count, refiner_calls.count) == (7, 0)  # 1.0: no refiner at all


def test_regions_get_their_last_steps_across_the_base_refiner_switch(tiny_sdxl_refined, monkeypatch):
    # Left 0.3, right 1.0, 10 Euler steps, split 0.8: the base runs steps 0..7, the refiner 8..9.
    # The left region is re-injected up to step 7 and so gets steps 7, 8, 9.
    change_map = np.ones((16, 32), np.float32)
    change_map[:, :16] = 0.3
    unets = []
    # One latent row: 2 cells left, 2 right.
    keeps = record_keeps(monkeypatch, tiny_sdxl_refined, lambda keep: keep[0, 0, 0].tolist())
    base_calls = ForwardCalls(monkeypatch, tiny_sdxl_refined.unet)
    refiner_calls = ForwardCalls(monkeypatch, tiny_sdxl_refined.refiner.unet)
    tiny_sdxl_refined(image=make_test_image(32, 16), change_map=change_map, scheduler="Euler",
                      refiner_split=0.8, output_type="latent",
                      callback=lambda info: unets.append((base_calls.count, refiner_calls.count)),
                      **common())
    assert (base_calls.count, refiner_calls.count) == (8, 2)
    assert [b for b, _ in unets] == [1, 2, 3, 4, 5, 6, 7, 8, 8, 8]
    kept_left = [step for step, keep in enumerate(keeps) if keep[0]]
    assert kept_left == list(range(8)) and not any(keep[2] for keep in keeps[1:])
    assert all(keep[:2] == [keep[0]] * 2 and keep[2:] == [keep[2]] * 2 for keep in keeps)


def test_refiner_split_is_checked(tiny_sdxl, tiny_sdxl_refined, test_image):
    change_map = np.ones((64, 64), np.float32)
    with pytest.raises(ValueError, match="needs a refiner"):
        tiny_sdxl(image=test_image, change_map=change_map, refiner_split=0.5, num_inference_steps=2)
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match=r"refiner_split must be in \(0, 1\]"):
            tiny_sdxl_refined(image=test_image, change_map=change_map, refiner_split=bad,
                              num_inference_steps=2)


# -- Algorithms 1 + 2 on SDXL -------------------------------------------------------------------------
@pytest.mark.parametrize("top, steps", [(1.0, 12), (0.5, 6), (0.3, 3), (0.05, 0)])
def test_sdxl_runs_only_floor_max_map_times_k_steps(tiny_sdxl, test_image, monkeypatch, top, steps):
    calls = ForwardCalls(monkeypatch, tiny_sdxl.unet)
    change_map = np.tile(np.linspace(0, top, 64, dtype=np.float32), (64, 1))
    change_map[:, -8:] = np.float32(top)
    out = tiny_sdxl(image=test_image, change_map=change_map, scheduler="DPM++ 2M Karras",
                    output_type="np", **{**common(), "num_inference_steps": 12})
    assert calls.count == out.steps_run == steps == math.floor(top * 12 + 1e-4)
    if steps == 0:
        np.testing.assert_array_equal(out.images[0], np.asarray(test_image) / np.float32(255))


def test_sdxl_left_half_zero_keeps_input_pixels_exactly(tiny_sdxl_refined, test_image):
    change_map = np.zeros((64, 64), np.float32)
    change_map[:, 32:] = 1.0
    out = tiny_sdxl_refined(image=test_image, change_map=change_map, scheduler="DPM++ 2M Karras",
                            refiner_split=0.6, output_type="pil", **common())
    result, source = np.asarray(out.images[0]), np.asarray(test_image)
    assert np.array_equal(result[:, :32], source[:, :32])
    assert np.abs(result[:, 32:].astype(int) - source[:, 32:]).mean() > 10


def test_sdxl_left_half_zero_without_refiner_and_odd_size(tiny_sdxl):
    image = make_test_image(59, 37)
    change_map = np.zeros((37, 59), np.float32)
    change_map[:, 30:] = 1.0
    out = tiny_sdxl(image=image, change_map=change_map, scheduler="Euler a", **common())
    result = np.asarray(out.images[0])
    assert result.shape == (37, 59, 3)
    assert np.array_equal(result[:, :30], np.asarray(image)[:, :30])
    assert np.abs(result[:, 30:].astype(int) - np.asarray(image)[:, 30:]).mean() > 10


def test_sdxl_preview_hook(tiny_sdxl, test_image):
    previews = []
    tiny_sdxl(image=test_image, change_map=np.full((64, 64), 0.5, np.float32), scheduler="Euler",
              callback=lambda info: previews.append((info.family, info.preview())), **common())
    assert len(previews) == 5
    assert all(family == "sdxl" and p.shape == (8, 8, 3) and p.dtype == np.uint8
               for family, p in previews)


def test_kept_cells_are_the_original_noised_to_each_steps_own_timestep(tiny_sdxl, monkeypatch):
    # Euler noises by sigma and scales the model input by 1 / sqrt(sigma^2 + 1): each step's
    # kept cells must be the original noised to that step's own sigma (not the first one's).
    probe = ReinjectionProbe(monkeypatch, tiny_sdxl, [tiny_sdxl.unet])
    tiny_sdxl(prompt=PROMPT, image=make_test_image(64, 32), change_map=striped_map(STRIPES, 16, 32),
              num_inference_steps=STRIPE_K, generator=torch.Generator().manual_seed(0),
              scheduler="Euler", output_type="latent")
    reference = make_scheduler("Euler", tiny_sdxl.scheduler.config)
    reference.set_timesteps(STRIPE_K)
    z_init, noise = probe.originals[0]
    n = stripe_steps(cells_per_stripe=2)
    expected = []
    for i, t in enumerate(reference.timesteps):
        sigma = reference.sigmas[i]
        noised = reference.add_noise(z_init, noise, t[None])  # looked up by t: no begin index
        expected.append((n <= STRIPE_K - i, noised / ((sigma**2 + 1) ** 0.5)))
    assert_kept_cells_match(probe.samples, expected)
