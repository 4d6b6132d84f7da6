"""The SD differential loop (Algorithms 1 + 2) against diffusers' img2img and its own promises."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline
from PIL import Image

from server.pipelines import Cancelled, StepInfo
from server.models.tiny import tiny_components
from server.pipelines.sd import StableDiffusionDifferentialPipeline
from server.schedulers import SCHEDULER_NAMES, make_scheduler
from tests.conftest import make_test_image
from tests.pipeline_helpers import (
    NEGATIVE, PROMPT, ForwardCalls, StepRecorder, cancel_when,
    STRIPE_K, STRIPES, ReinjectionProbe, assert_kept_cells_match, make_run, quiet, record_keeps,
    stripe_steps, striped_map,
)


def reference_img2img(pipe, scheduler: str) -> StableDiffusionImg2ImgPipeline:
    return quiet(StableDiffusionImg2ImgPipeline(
        **{**pipe.components, "scheduler": make_scheduler(scheduler, pipe.scheduler.config)},
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ))


run = make_run(negative_prompt=NEGATIVE, num_inference_steps=10, guidance_scale=7.5)


# -- uniform map == diffusers img2img --------------------------------------------------------------
@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
@pytest.mark.parametrize("strength", [0.3, 0.7, 1.0])
def test_uniform_map_equals_diffusers_img2img(tiny_sd, test_image, scheduler, strength):
    # float32 0.7 is 0.69999999: the step count must still be 7 of 10, like img2img's int(0.7*10).
    change_map = np.full((64, 64), strength, dtype=np.float32)
    ours = run(tiny_sd, test_image, change_map, seed=3, scheduler=scheduler)
    theirs = reference_img2img(tiny_sd, scheduler)(
        prompt=PROMPT, negative_prompt=NEGATIVE, image=test_image, strength=strength,
        num_inference_steps=10, guidance_scale=7.5, generator=torch.Generator().manual_seed(3),
        output_type="np",
    ).images
    assert ours.images.shape == theirs.shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(ours.images, theirs)


def test_uniform_map_equals_img2img_with_pil_map_and_batch(tiny_sd, test_image):
    # 0.6 as an 8-bit map is 153/255 = 0.6000000238: 6 of 10 steps, like strength=0.6.
    change_map = Image.new("L", (64, 64), 153)
    generators = [torch.Generator().manual_seed(s) for s in (5, 6)]
    ours = tiny_sd(prompt=PROMPT, image=test_image, change_map=change_map, num_inference_steps=10,
                   guidance_scale=5.0, generator=generators, num_images_per_prompt=2,
                   scheduler="Euler a")
    theirs = reference_img2img(tiny_sd, "Euler a")(
        prompt=PROMPT, image=test_image, strength=0.6, num_inference_steps=10, guidance_scale=5.0,
        generator=[torch.Generator().manual_seed(s) for s in (5, 6)], num_images_per_prompt=2,
    ).images
    assert len(ours.images) == len(theirs) == 2
    for a, b in zip(ours.images, theirs, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(ours.images[0]), np.asarray(ours.images[1]))  # one generator each



def test_guidance_one_runs_without_cfg_like_img2img(tiny_sd, test_image, monkeypatch):
    batches: list[int] = []
    forward = tiny_sd.unet.forward

    def recording(x, *args, **kwargs):
        batches.append(x.shape[0])
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(tiny_sd.unet, "forward", recording)
    change_map = np.full((64, 64), 0.5, dtype=np.float32)
    ours = run(tiny_sd, test_image, change_map, guidance_scale=1.0, scheduler="Euler")
    assert batches == [1] * 5  # one latent per call: no unconditional half
    theirs = reference_img2img(tiny_sd, "Euler")(
        prompt=PROMPT, negative_prompt=NEGATIVE, image=test_image, strength=0.5, num_inference_steps=10,
        guidance_scale=1.0, generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_array_equal(ours.images, theirs)

def test_v_prediction_uniform_map_equals_img2img(tiny_sd, test_image):
    components = dict(tiny_sd.components)
    components["scheduler"] = DDIMScheduler.from_config(tiny_sd.scheduler.config,
                                                        prediction_type="v_prediction")
    pipe = StableDiffusionDifferentialPipeline(**components)
    change_map = np.full((64, 64), 0.5, dtype=np.float32)
    ours = run(pipe, test_image, change_map, scheduler="DPM++ 2M Karras")
    ref = reference_img2img(pipe, "DPM++ 2M Karras")
    assert ref.scheduler.config.prediction_type == "v_prediction"
    theirs = ref(prompt=PROMPT, negative_prompt=NEGATIVE, image=test_image, strength=0.5,
                 num_inference_steps=10, guidance_scale=7.5,
                 generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_array_equal(ours.images, theirs)
    eps = run(tiny_sd, test_image, change_map, scheduler="DPM++ 2M Karras")
    assert not np.array_equal(eps.images, ours.images)  # the prediction type really mattered


def test_half_precision_equals_img2img_with_the_vae_in_fp16(test_image):
    # Real SD VAEs say force_upcast (diffusers' default); SD img2img still runs them in fp16.
    components = tiny_components("tiny-sd")
    components["vae"].register_to_config(force_upcast=True)
    pipe = StableDiffusionDifferentialPipeline(**components).to(dtype=torch.float16)
    change_map = np.full((64, 64), 0.5, dtype=np.float32)
    ours = run(pipe, test_image, change_map, scheduler="DPM++ 2M Karras", num_inference_steps=6)
    theirs = reference_img2img(pipe, "DPM++ 2M Karras")(
        prompt=PROMPT, negative_prompt=NEGATIVE, image=test_image, strength=0.5, num_inference_steps=6,
        guidance_scale=7.5, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert pipe.vae.dtype == torch.float16
    np.testing.assert_array_equal(ours.images, theirs)


# -- Algorithm 2: skipping -------------------------------------------------------------------------
@pytest.mark.parametrize("top, steps", [(1.0, 12), (0.75, 9), (0.5, 6), (0.3, 3), (0.05, 0)])
def test_only_floor_max_map_times_k_steps_run(tiny_sd, test_image, monkeypatch, top, steps):
    calls = ForwardCalls(monkeypatch, tiny_sd.unet)
    # A gradient whose maximum is `top` (float32): the count follows the maximum only.
    change_map = np.tile(np.linspace(0, top, 64, dtype=np.float32), (64, 1))
    change_map[:, -8:] = np.float32(top)
    out = run(tiny_sd, test_image, change_map, num_inference_steps=12, scheduler="Euler")
    assert calls.count == steps == math.floor(top * 12 + 1e-4)
    assert out.steps_run == steps


def test_all_zero_map_returns_input_without_unet(tiny_sd, test_image, monkeypatch):
    calls = ForwardCalls(monkeypatch, tiny_sd.unet)
    out = tiny_sd(prompt=PROMPT, image=test_image, change_map=np.zeros((64, 64), np.float32),
                  num_inference_steps=10, num_images_per_prompt=2)
    assert calls.count == 0 and out.steps_run == 0
    assert len(out.images) == 2
    for result in out.images:
        assert np.array_equal(np.asarray(result), np.asarray(test_image))


def test_all_zero_map_as_latents_is_the_encoded_input(tiny_sd, test_image, monkeypatch):
    calls = ForwardCalls(monkeypatch, tiny_sd.unet)
    out = tiny_sd(prompt=PROMPT, image=test_image, change_map=np.zeros((64, 64), np.float32),
                  num_inference_steps=10, num_images_per_prompt=2, output_type="latent",
                  generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    assert calls.count == 0 and out.steps_run == 0
    image_tensor, _ = tiny_sd.prepare_image(test_image)
    z_init, _ = tiny_sd.prepare_latents(image_tensor, 2, [torch.Generator().manual_seed(s) for s in (1, 2)],
                                        torch.float32)
    assert out.images.shape == (2, 4, 8, 8)
    assert torch.equal(out.images, z_init)


# -- Algorithm 1: regions, nested masks, exact kept pixels -----------------------------------------
def test_left_half_zero_keeps_input_pixels_exactly(tiny_sd, test_image):
    change_map = np.zeros((64, 64), np.float32)
    change_map[:, 32:] = 1.0
    out = tiny_sd(prompt=PROMPT, image=test_image, change_map=change_map, num_inference_steps=8,
                  generator=torch.Generator().manual_seed(0))
    result, source = np.asarray(out.images[0]), np.asarray(test_image)
    assert np.array_equal(result[:, :32], source[:, :32])
    assert np.abs(result[:, 32:].astype(int) - source[:, 32:]).mean() > 10  # really repainted


def test_keep_unchanged_exact_off_gives_plain_decode(tiny_sd, test_image):
    change_map = np.zeros((64, 64), np.float32)
    change_map[:, 32:] = 1.0
    out = tiny_sd(prompt=PROMPT, image=test_image, change_map=change_map, num_inference_steps=8,
                  generator=torch.Generator().manual_seed(0), keep_unchanged_exact=False)
    left = np.asarray(out.images[0])[:, :32]
    assert not np.array_equal(left, np.asarray(test_image)[:, :32])  # the VAE round trip shows


def test_kept_region_blends_smoothly_below_one_step(tiny_sd, test_image):
    # Map values under 1/k buy no step; there the output fades from input to generated.
    change_map = np.tile(np.linspace(0.0, 0.2, 64, dtype=np.float32), (64, 1))
    plain = run(tiny_sd, test_image, change_map, keep_unchanged_exact=False).images[0]
    exact = run(tiny_sd, test_image, change_map).images[0]
    source = np.asarray(test_image, dtype=np.float32) / 255.0
    assert np.array_equal(exact[:, 0], source[:, 0])  # map exactly 0
    assert np.array_equal(exact[:, 40:], plain[:, 40:])  # map >= 1/k: the generated image
    between = (exact[:, 1:32] - source[:, 1:32]) / (plain[:, 1:32] - source[:, 1:32] + 1e-12)
    weights = np.median(between.reshape(64, 31, 3), axis=(0, 2))
    assert np.all(np.diff(weights) >= -1e-3) and weights[0] < 0.2  # monotone fade, no seam


def test_blend_below_one_step_is_a_smoothstep():
    from server.pipelines import unchanged_blend_weight

    k = 10
    m = np.array([[0.0, 0.025, 0.05, 0.075, 0.1, 0.5]], np.float32)  # 0, 1/4, 1/2, 3/4, 1 and 5 steps' worth
    np.testing.assert_allclose(unchanged_blend_weight(m, k), [[0.0, 0.15625, 0.5, 0.84375, 1.0, 1.0]],
                               atol=1e-6)


def test_padding_repeats_the_border_so_edge_cells_keep_their_steps(tiny_sd):
    # 61 x 45 pads to 64 x 48 by repeating the last column/row: an all-change map stays all-change
    # in the half-filled edge cells (a zero pad would give them 5/8 of the steps).
    out = tiny_sd(prompt=PROMPT, image=make_test_image(61, 45), change_map=np.ones((45, 61), np.float32),
                  num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="latent")
    assert out.steps_per_latent_pixel.shape[-2:] == (6, 8)
    assert (out.steps_per_latent_pixel == 4).all()


def test_each_region_gets_exactly_its_last_steps_with_nested_masks(tiny_sd, monkeypatch):
    k = 10
    strengths = [0.0, 0.2, 0.5, 0.7, 1.0]
    change_map = striped_map(strengths, 16, height=16)  # 16-px columns = 2 latent cells each
    keeps = record_keeps(monkeypatch, tiny_sd, lambda keep: keep[0, 0].clone())
    calls = ForwardCalls(monkeypatch, tiny_sd.unet)
    out = tiny_sd(prompt=PROMPT, image=make_test_image(80, 16), change_map=change_map,
                  num_inference_steps=k, generator=torch.Generator().manual_seed(0),
                  scheduler="DDIM", output_type="latent")
    assert calls.count == len(keeps) == 10
    keep = torch.stack(keeps)  # steps x h x w
    for earlier, later in zip(keep, keep[1:], strict=False):
        assert torch.all(later <= earlier)  # nested: once free, a region stays free
    for j, s in enumerate(strengths):
        column = keep[:, :, 2 * j : 2 * j + 2].reshape(k, -1)
        assert torch.all(column == column[:, :1])  # a region moves as one
        kept_at = column[:, 0].nonzero().flatten().tolist()
        expected = math.floor(s * k + 1e-4)
        if expected == 0:
            assert kept_at == list(range(k))  # re-injected at every step, never free
        else:
            last = kept_at[-1]  # its own run starts at its last re-injection
            assert kept_at == list(range(last + 1)) and k - last == expected
    assert torch.equal(out.steps_per_latent_pixel[0, 0, 0], torch.tensor([0] * 2 + [2] * 2 + [5] * 2
                                                                         + [7] * 2 + [10] * 2))


def test_kept_cells_are_the_original_noised_to_each_steps_own_timestep(tiny_sd, monkeypatch):
    # Counting re-injections is not enough: re-noising the kept cells to the *first* timestep
    # at every step kept every count right. Here each step's model input is compared with the
    # scheduler's own add_noise of the original at that step's timestep, on four strengths.
    probe = ReinjectionProbe(monkeypatch, tiny_sd, [tiny_sd.unet])
    run(tiny_sd, make_test_image(64, 32), striped_map(STRIPES, 16, height=32),
        num_inference_steps=STRIPE_K, scheduler="DDIM")
    reference = make_scheduler("DDIM", tiny_sd.scheduler.config)
    reference.set_timesteps(STRIPE_K)
    z_init, noise = probe.originals[0]
    n = stripe_steps(cells_per_stripe=2)
    assert_kept_cells_match(probe.samples, [
        (n <= STRIPE_K - i, reference.add_noise(z_init, noise, t[None]))
        for i, t in enumerate(reference.timesteps)])


def test_strength_zero_latents_end_on_the_original(tiny_sd, test_image):
    change_map = np.zeros((64, 64), np.float32)
    change_map[:, 32:] = 0.8
    out = run(tiny_sd, test_image, change_map, output_type="latent")
    image_tensor, _ = tiny_sd.prepare_image(test_image)
    z_init, _ = tiny_sd.prepare_latents(image_tensor, 1, torch.Generator().manual_seed(0),
                                        torch.float32)
    assert torch.equal(out.images[..., :4], z_init[..., :4])
    assert not torch.equal(out.images[..., 4:], z_init[..., 4:])


# -- batch, sizes, maps ----------------------------------------------------------------------------
def test_batch_variants_differ_and_reproduce_alone(tiny_sd, test_image):
    change_map = np.full((64, 64), 0.8, np.float32)
    batch = tiny_sd(prompt=PROMPT, image=test_image, change_map=change_map, num_inference_steps=6,
                    num_images_per_prompt=3, output_type="np",
                    generator=[torch.Generator().manual_seed(40 + i) for i in range(3)]).images
    assert batch.shape == (3, 64, 64, 3)
    assert not np.array_equal(batch[0], batch[1]) and not np.array_equal(batch[1], batch[2])
    alone = tiny_sd(prompt=PROMPT, image=test_image, change_map=change_map, num_inference_steps=6,
                    output_type="np", generator=torch.Generator().manual_seed(41)).images
    np.testing.assert_allclose(alone[0], batch[1], atol=1e-5)
    single_generator = tiny_sd(prompt=PROMPT, image=test_image, change_map=change_map,
                               num_inference_steps=6, num_images_per_prompt=2, output_type="np",
                               generator=torch.Generator().manual_seed(1)).images
    assert not np.array_equal(single_generator[0], single_generator[1])


def test_same_seed_same_result(tiny_sd, test_image):
    change_map = np.full((64, 64), 0.6, np.float32)
    a = run(tiny_sd, test_image, change_map, seed=9).images
    b = run(tiny_sd, test_image, change_map, seed=9).images
    c = run(tiny_sd, test_image, change_map, seed=10).images
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("size", [(61, 45), (70, 33), (8, 8)])
def test_sizes_not_multiple_of_8_come_back_at_input_size(tiny_sd, size):
    image = make_test_image(*size)
    change_map = np.zeros((size[1], size[0]), np.float32)
    change_map[:, size[0] // 2 :] = 1.0
    out = tiny_sd(prompt=PROMPT, image=image, change_map=change_map, num_inference_steps=4,
                  generator=torch.Generator().manual_seed(0))
    result = out.images[0]
    assert result.size == size
    half = size[0] // 2
    assert np.array_equal(np.asarray(result)[:, :half], np.asarray(image)[:, :half])


def test_map_of_other_size_and_rgb_map_are_converted(tiny_sd, test_image):
    small = np.zeros((16, 16), np.float32)
    small[:, 8:] = 1.0
    from server.maps import to_change_map

    resized = to_change_map(small, (64, 64))
    a = run(tiny_sd, test_image, small).images
    b = run(tiny_sd, test_image, resized).images
    assert np.array_equal(a, b)
    gray = Image.new("L", (64, 64), 128)
    rgb = Image.merge("RGB", [gray, gray, gray])
    assert np.array_equal(run(tiny_sd, test_image, gray).images,
                          run(tiny_sd, test_image, rgb).images)


@pytest.mark.parametrize("bad, reason", [
    (np.full((64, 64), np.nan, np.float32), "NaN"),
    (np.zeros((0, 64), np.float32), "empty"),
    (np.zeros((64,), np.float32), "shape"),
    (np.zeros((4, 64, 64), np.float32), "shape"),
    (np.full((64, 64), 1.5, np.float32), r"\[0, 1\]"),
    (Image.new("L", (0, 0)), "empty"),
])
def test_bad_maps_raise_clear_value_errors(tiny_sd, test_image, bad, reason):
    with pytest.raises(ValueError, match=reason):
        tiny_sd(prompt=PROMPT, image=test_image, change_map=bad, num_inference_steps=4)


def test_bad_arguments_raise_value_errors(tiny_sd, test_image):
    change_map = np.ones((64, 64), np.float32)
    with pytest.raises(ValueError, match="scheduler"):
        tiny_sd(image=test_image, change_map=change_map, scheduler="Nope")
    with pytest.raises(ValueError, match="num_inference_steps"):
        tiny_sd(image=test_image, change_map=change_map, num_inference_steps=0)
    with pytest.raises(ValueError, match="generators"):
        tiny_sd(image=test_image, change_map=change_map, num_inference_steps=2,
                num_images_per_prompt=2, generator=[torch.Generator()])
    with pytest.raises(ValueError, match="refiner"):
        tiny_sd(image=test_image, change_map=change_map, refiner_split=0.5)


# -- hooks -----------------------------------------------------------------------------------------
def test_preview_hook_reports_every_step(tiny_sd, test_image):
    hook = StepRecorder()
    seen, previews = hook.seen, hook.previews

    change_map = np.full((60, 60), 0.5, np.float32)
    tiny_sd(prompt=PROMPT, image=test_image.resize((60, 60)), change_map=change_map,
            num_inference_steps=10, generator=torch.Generator().manual_seed(0), callback=hook,
            scheduler="DPM++ 2M Karras")
    assert [info.step for info in seen] == [1, 2, 3, 4, 5]
    assert all(info.total == 5 for info in seen)
    assert all(p.shape == (8, 8, 3) and p.dtype == np.uint8 for p in previews)
    assert not np.array_equal(previews[0], previews[-1])


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_previews_show_the_clean_estimate(tiny_sd, test_image, scheduler):
    seen: list[StepInfo] = []
    run(tiny_sd, test_image, np.full((64, 64), 0.8, np.float32), num_inference_steps=6,
        scheduler=scheduler, callback=seen.append)
    # floor(0.8 * 6) = 4 steps, each seen (PNDM's first step takes two model calls: 5 callbacks).
    assert [info.step for info in seen] == list(range(1, 6 if scheduler == "PNDM" else 5))
    if scheduler == "PNDM":  # no clean estimate to show: the latents themselves
        assert all(info.denoised is None for info in seen)
        return
    assert all(info.denoised is not None for info in seen)
    first, last = seen[0], seen[-1]
    assert not torch.allclose(first.denoised, first.latents, atol=1e-2)  # not the noisy latents
    # At the end the estimate is the result (the last step lands on it, up to the final sigma).
    spread = float(last.latents.std())
    assert float((last.denoised - last.latents).abs().max()) < 0.05 * spread


def test_cancel_stops_before_the_next_step(tiny_sd, test_image, monkeypatch):
    calls = ForwardCalls(monkeypatch, tiny_sd.unet)
    cancel, hook = cancel_when(lambda info: info.step == 2)

    with pytest.raises(Cancelled):
        tiny_sd(prompt=PROMPT, image=test_image, change_map=np.ones((64, 64), np.float32),
                num_inference_steps=8, callback=hook, cancel=cancel)
    assert calls.count == 2


def test_lms_coefficients_are_the_exact_integrals(tiny_sd):
    # LMS's coefficients integrate Lagrange basis polynomials; integrate them exactly instead.
    from numpy.polynomial import Polynomial

    sched = make_scheduler("LMS", tiny_sd.scheduler.config)
    sched.set_timesteps(10)
    sigmas = [float(s) for s in sched.sigmas]
    for t in range(len(sigmas) - 1):
        for order in range(1, min(t + 1, 4) + 1):
            for current in range(order):
                basis = Polynomial([1.0])
                for k in range(order):
                    if k != current:
                        basis *= Polynomial([-sigmas[t - k], 1.0]) / (sigmas[t - current] - sigmas[t - k])
                antiderivative = basis.integ()
                exact = antiderivative(sigmas[t + 1]) - antiderivative(sigmas[t])
                assert sched.get_lms_coefficient(order, t, current) == pytest.approx(exact, rel=1e-9,
                                                                                    abs=1e-12)



def test_scheduler_names_pick_the_samplers_painters_know(tiny_sd):
    # The img2img comparisons build both sides with make_scheduler, so they cannot see a wrong
    # pick: the names are checked here against the samplers they stand for.
    from diffusers import (
        DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
        LCMScheduler, PNDMScheduler, UniPCMultistepScheduler,
    )
    from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler  # the real one, scipy or not

    dpm = DPMSolverMultistepScheduler
    expected = {
        "DDIM": (DDIMScheduler, {}), "Euler": (EulerDiscreteScheduler, {}),
        "Euler a": (EulerAncestralDiscreteScheduler, {}),
        "DPM++ 2M": (dpm, {"use_karras_sigmas": False, "algorithm_type": "dpmsolver++"}),
        "DPM++ 2M Karras": (dpm, {"use_karras_sigmas": True, "algorithm_type": "dpmsolver++"}),
        "DPM++ 2M SDE": (dpm, {"use_karras_sigmas": False, "algorithm_type": "sde-dpmsolver++"}),
        "DPM++ 2M SDE Karras": (dpm, {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"}),
        "UniPC": (UniPCMultistepScheduler, {}), "PNDM": (PNDMScheduler, {"skip_prk_steps": True}),
        "LMS": (LMSDiscreteScheduler, {}), "LCM": (LCMScheduler, {}),
    }
    assert set(expected) == set(SCHEDULER_NAMES)
    model = tiny_sd.scheduler.config
    for name, (cls, values) in expected.items():
        sched = make_scheduler(name, model)
        assert isinstance(sched, cls) and (cls is not EulerDiscreteScheduler or
                                           not isinstance(sched, EulerAncestralDiscreteScheduler)), name
        assert {key: sched.config[key] for key in values} == values, name
        # What belongs to the model stays the model's.
        for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type"):
            assert sched.config[key] == model[key], (name, key)

def test_scheduler_names_all_run(tiny_sd, test_image):
    change_map = np.full((64, 64), 0.5, np.float32)
    for name in SCHEDULER_NAMES:
        out = run(tiny_sd, test_image, change_map, num_inference_steps=4, scheduler=name)
        assert np.isfinite(out.images).all(), name
