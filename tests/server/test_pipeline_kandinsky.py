"""Kandinsky 2.2's differential loop against diffusers' prior + img2img, and its own promises."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import KandinskyV22Img2ImgPipeline, KandinskyV22PriorPipeline

from server.pipelines import Cancelled
from server.schedulers import make_scheduler
from tests.conftest import make_test_image
from tests.pipeline_helpers import (
    NEGATIVE, PROMPT, ForwardCalls, StepRecorder, cancel_when,
    STRIPE_K, STRIPES, ReinjectionProbe, assert_kept_cells_match, half_changed, kept_part_exact,
    make_run, quiet, server_job, stripe_steps, striped_map,
)

PRIOR_STEPS = 3


def reference(pipe, scheduler: str | None = None):
    """diffusers' prior and img2img decoder on the very same components."""
    c = pipe.components
    prior = KandinskyV22PriorPipeline(
        prior=c["prior"], image_encoder=c["image_encoder"], text_encoder=c["text_encoder"],
        tokenizer=c["tokenizer"], scheduler=c["prior_scheduler"],
        image_processor=c["image_processor"])
    sched = make_scheduler(scheduler, c["scheduler"].config) if scheduler else c["scheduler"]
    decoder = KandinskyV22Img2ImgPipeline(unet=c["unet"], scheduler=sched, movq=c["movq"])
    return quiet(prior), quiet(decoder)


run = make_run(negative_prompt=NEGATIVE, num_inference_steps=10, guidance_scale=4.0,
               prior_num_inference_steps=PRIOR_STEPS)


def test_loads_through_load_pipeline(tiny_k22):
    assert tiny_k22.family == "kandinsky22"
    assert tiny_k22.native_resolution == 64  # decoder sample size 8 x MoVQ factor 8
    assert {"prior", "unet", "movq", "scheduler", "prior_scheduler"} <= set(tiny_k22.components)


# -- uniform map == prior + KandinskyV22Img2ImgPipeline ------------------------------------------
@pytest.mark.parametrize("strength, negative, scheduler", [
    (0.3, NEGATIVE, None), (0.7, None, "DDIM"), (1.0, NEGATIVE, "DPM++ 2M"),
])
def test_uniform_map_equals_diffusers_img2img(tiny_k22, strength, negative, scheduler):
    image = make_test_image()
    change_map = np.full((64, 64), strength, np.float32)  # 0.7 is 0.69999999 in float32
    ours = run(tiny_k22, image, change_map, seed=3, negative_prompt=negative, scheduler=scheduler)
    prior, decoder = reference(tiny_k22, scheduler)
    generator = torch.Generator().manual_seed(3)  # one generator: prior first, then decoder
    embeds, negative_embeds = prior(PROMPT, negative_prompt=negative, generator=generator,
                                    num_inference_steps=PRIOR_STEPS, return_dict=False)
    theirs = decoder(image_embeds=embeds, negative_image_embeds=negative_embeds, image=image,
                     height=64, width=64, strength=strength, num_inference_steps=10,
                     guidance_scale=4.0, generator=generator, output_type="np").images
    assert ours.steps_run == math.floor(strength * 10 + 1e-4)
    assert ours.images.shape == theirs.shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(ours.images, theirs)


def test_batch_equals_img2img_and_variants_reproduce_alone(tiny_k22):
    image = make_test_image()
    change_map = np.full((64, 64), 0.6, np.float32)
    kwargs = dict(prompt=PROMPT, negative_prompt=NEGATIVE, image=image, change_map=change_map,
                  num_inference_steps=5, guidance_scale=4.0, output_type="latent",
                  prior_num_inference_steps=PRIOR_STEPS)
    batch = tiny_k22(**kwargs, num_images_per_prompt=2,
                     generator=[torch.Generator().manual_seed(40 + i) for i in range(2)]).images
    assert batch.shape == (2, 4, 8, 8) and not torch.equal(batch[0], batch[1])
    alone = tiny_k22(**kwargs, generator=torch.Generator().manual_seed(41)).images
    torch.testing.assert_close(alone[0], batch[1], atol=1e-4, rtol=0)  # batched-matmul rounding
    # One generator for the batch: the prior samples both rows, then one noise draw for both.
    ours = run(tiny_k22, image, change_map, seed=7, num_inference_steps=5,
               num_images_per_prompt=2).images
    prior, decoder = reference(tiny_k22)
    generator = torch.Generator().manual_seed(7)
    embeds, negative = prior(PROMPT, negative_prompt=NEGATIVE, generator=generator,
                             num_images_per_prompt=2, num_inference_steps=PRIOR_STEPS,
                             return_dict=False)
    theirs = decoder(image_embeds=embeds, negative_image_embeds=negative, image=[image] * 2,
                     height=64, width=64, strength=0.6, num_inference_steps=5, guidance_scale=4.0,
                     generator=generator, output_type="np").images
    # diffusers encodes the image once per row, we once for all rows: float rounding only.
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


# -- Algorithm 2 (skipping), strength 0, all-zero maps -------------------------------------------
@pytest.mark.parametrize("top, steps", [(1.0, 8), (0.5, 4), (0.3, 2)])
def test_only_floor_max_map_times_k_steps_run(tiny_k22, monkeypatch, top, steps):
    calls = ForwardCalls(monkeypatch, tiny_k22.unet)
    change_map = np.tile(np.linspace(0, top, 64, dtype=np.float32), (64, 1))
    change_map[:, -8:] = np.float32(top)
    out = run(tiny_k22, make_test_image(), change_map, num_inference_steps=8,
              output_type="latent")
    assert calls.count == out.steps_run == steps == math.floor(top * 8 + 1e-4)
    assert int(out.steps_per_latent_pixel.max()) == steps


def test_strength_zero_pixels_and_latents_equal_the_input(tiny_k22):
    image = make_test_image(72, 40)  # not a multiple of 8: padded and cropped back
    change_map = np.zeros((40, 72), np.float32)
    change_map[:, 40:] = 0.8
    out = run(tiny_k22, image, change_map, num_inference_steps=5, output_type="pil")
    result = np.asarray(out.images[0])
    assert out.images[0].size == (72, 40)
    assert np.array_equal(result[:, :40], np.asarray(image)[:, :40])
    assert not np.array_equal(result[:, 48:], np.asarray(image)[:, 48:])
    latents = run(tiny_k22, image, change_map, num_inference_steps=5, output_type="latent")
    tensor, _ = tiny_k22.prepare_image(image)
    z_init, _ = tiny_k22.prepare_latents(tensor, 1, None, torch.float32)
    assert torch.equal(latents.images[..., :5], z_init[..., :5])
    assert not torch.equal(latents.images[..., 6:], z_init[..., 6:])


def test_all_zero_map_runs_nothing(tiny_k22, monkeypatch):
    unet = ForwardCalls(monkeypatch, tiny_k22.unet)
    prior = ForwardCalls(monkeypatch, tiny_k22.components["prior"])
    image = make_test_image()
    out = tiny_k22(prompt=PROMPT, image=image, change_map=np.zeros((64, 64), np.float32),
                   num_images_per_prompt=2)
    assert unet.count == prior.count == out.steps_run == 0
    assert len(out.images) == 2
    assert all(np.array_equal(np.asarray(r), np.asarray(image)) for r in out.images)
    latents = tiny_k22(prompt=PROMPT, image=image, change_map=np.zeros((64, 64), np.float32),
                       num_images_per_prompt=2, output_type="latent")
    tensor, _ = tiny_k22.prepare_image(image)
    z_init, _ = tiny_k22.prepare_latents(tensor, 2, None, torch.float32)
    assert unet.count == prior.count == 0 and torch.equal(latents.images, z_init)


# -- hooks -----------------------------------------------------------------------------------------
def test_preview_hook_and_cancel(tiny_k22, monkeypatch):
    hook = StepRecorder()
    seen, previews = hook.seen, hook.previews

    image = make_test_image(60, 60)
    run(tiny_k22, image, np.full((60, 60), 0.5, np.float32), callback=hook)
    assert [info.step for info in seen] == [1, 2, 3, 4, 5] and seen[0].total == 5
    assert all(p.shape == (8, 8, 3) and p.dtype == np.uint8 for p in previews)
    assert not np.array_equal(previews[0], previews[-1])

    calls = ForwardCalls(monkeypatch, tiny_k22.unet)
    cancel, stop_at_two = cancel_when(lambda info: info.step == 2)

    with pytest.raises(Cancelled):
        run(tiny_k22, make_test_image(), np.ones((64, 64), np.float32), num_inference_steps=6,
            callback=stop_at_two, cancel=cancel)
    assert calls.count == 2


def test_bad_arguments_raise_value_errors(tiny_k22):
    image, change_map = make_test_image(), np.ones((64, 64), np.float32)
    with pytest.raises(ValueError, match="scheduler"):
        tiny_k22(image=image, change_map=change_map, scheduler="Nope")
    with pytest.raises(ValueError, match="generators"):
        tiny_k22(image=image, change_map=change_map, num_inference_steps=2,
                 num_images_per_prompt=2, generator=[torch.Generator()])
    with pytest.raises(ValueError, match="refiner"):
        tiny_k22(image=image, change_map=change_map, refiner_split=0.5)


# -- over the real server --------------------------------------------------------------------------
def test_a_job_over_the_real_server_returns_the_right_size(tiny_k22):
    import asyncio

    from shared import protocol as p
    from tests.server.server_harness import of

    image, change = half_changed(seed=2)
    events, families = asyncio.run(server_job(tiny_k22, "tiny-kandinsky22", image, change, steps=4,
                                              seed=5, preview_every=1))
    assert "kandinsky22" in families
    # The server crops to the edited region; the kept part is exact.
    got, source, kept = kept_part_exact(events, image)
    assert not np.array_equal(got[:, kept + 4 :], source[:, kept + 4 :])
    assert of(events, p.Preview)


def test_every_scheduler_name_runs(tiny_k22):
    from server.schedulers import SCHEDULER_NAMES

    for name in SCHEDULER_NAMES:
        out = run(tiny_k22, make_test_image(), np.full((64, 64), 0.5, np.float32),
                  num_inference_steps=4, scheduler=name, output_type="latent")
        assert torch.isfinite(out.images).all() and out.steps_run >= 2, name


# -- loading real-model folders ----------------------------------------------------------------------
def save_as_folders(pipe, root, safe: bool = True) -> None:
    prior, decoder = reference(pipe)
    prior.save_pretrained(root / "prior", safe_serialization=safe)
    decoder.save_pretrained(root / "decoder", safe_serialization=safe)


def test_a_saved_prior_and_decoder_folder_loads_and_gives_the_same_images(tiny_k22, tmp_path):
    from server.models import load_pipeline

    save_as_folders(tiny_k22, tmp_path)
    loaded = load_pipeline(str(tmp_path))
    assert loaded.family == "kandinsky22"
    image, change_map = make_test_image(), np.full((64, 64), 0.5, np.float32)
    a = run(tiny_k22, image, change_map, num_inference_steps=4).images
    b = run(loaded, image, change_map, num_inference_steps=4).images
    np.testing.assert_array_equal(a, b)


def test_pickled_weights_are_refused(tiny_k22, tmp_path):
    from server.models import ModelNotFoundError, load_pipeline

    save_as_folders(tiny_k22, tmp_path, safe=False)
    with pytest.raises(ModelNotFoundError, match="safetensors"):
        load_pipeline(str(tmp_path))


def test_kept_cells_are_the_original_noised_to_each_steps_own_timestep(tiny_k22, monkeypatch):
    # The decoder's loop: kept MoVQ cells are the original noised (add_noise) to each step's t.
    probe = ReinjectionProbe(monkeypatch, tiny_k22, [tiny_k22.unet])
    run(tiny_k22, make_test_image(64, 32), striped_map(STRIPES, 16, height=32),
        num_inference_steps=STRIPE_K)
    reference = make_scheduler("DDIM", tiny_k22.scheduler.config)
    reference.set_timesteps(STRIPE_K)
    z_init, noise = probe.originals[0]
    n = stripe_steps(cells_per_stripe=2)
    assert_kept_cells_match(probe.samples, [
        (n <= STRIPE_K - i, reference.add_noise(z_init, noise, t[None]))
        for i, t in enumerate(reference.timesteps)])
