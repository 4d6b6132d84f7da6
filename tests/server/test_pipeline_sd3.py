"""The flow-matching differential loop on tiny-sd3, against diffusers' SD3 img2img.

The loop itself (``server.pipelines.flow``) is shared with Flux; Flux's packing is tested in
``test_pipeline_flux.py``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Img2ImgPipeline
from PIL import Image

from server.pipelines import Cancelled
from server.pipelines.flow import FLOW_SCHEDULER_NAMES, make_flow_scheduler
from server.pipelines.sd3 import StableDiffusion3DifferentialPipeline
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
    return make_test_image(64, 64, seed=1)


run = make_run(negative_prompt=NEGATIVE, num_inference_steps=4, guidance_scale=4.0)


def reference(pipe, scheduler: str | None = None) -> StableDiffusion3Img2ImgPipeline:
    components = dict(pipe.components)
    components["scheduler"] = make_flow_scheduler(scheduler, pipe.scheduler)
    return quiet(StableDiffusion3Img2ImgPipeline(**components))


def test_loads_as_a_flow_matching_family(tiny_sd3):
    assert isinstance(tiny_sd3, StableDiffusion3DifferentialPipeline)
    assert tiny_sd3.family == "sd3" and tiny_sd3.native_resolution == 64
    assert tiny_sd3.components["text_encoder_3"] is None
    assert tiny_sd3.vae.config.latent_channels == 16 and tiny_sd3.pad_multiple == 16
    assert tiny_sd3.to("cpu") is tiny_sd3


# -- uniform map == diffusers img2img --------------------------------------------------------------
@pytest.mark.parametrize("strength, scheduler", [(0.5, None), (1.0, None), (0.75, "Euler Karras")])
def test_uniform_map_equals_diffusers_img2img(tiny_sd3, image, strength, scheduler):
    change_map = np.full((64, 64), strength, dtype=np.float32)
    ours = run(tiny_sd3, image, change_map, seed=3, scheduler=scheduler)
    theirs = reference(tiny_sd3, scheduler)(
        prompt=PROMPT, negative_prompt=NEGATIVE, image=image, strength=strength, height=64,
        width=64, num_inference_steps=4, guidance_scale=4.0,
        generator=torch.Generator().manual_seed(3), output_type="np",
        max_sequence_length=tiny_sd3.max_sequence_length,
    ).images
    assert ours.images.shape == theirs.shape == (1, 64, 64, 3)
    assert ours.steps_run == round(strength * 4)
    np.testing.assert_array_equal(ours.images, theirs)


def test_uniform_pil_map_and_batch_equal_img2img(tiny_sd3, image):
    # 128/255 = 0.50196: 2 of 4 steps, like strength=0.5. One generator for the batch (diffusers'
    # SD3 img2img cannot take one generator per image).
    ours = tiny_sd3(prompt=PROMPT, image=image, change_map=Image.new("L", (64, 64), 128),
                    num_inference_steps=4, guidance_scale=1.0, num_images_per_prompt=2,
                    generator=torch.Generator().manual_seed(8), output_type="np")
    theirs = reference(tiny_sd3)(
        prompt=PROMPT, image=image, strength=0.5, height=64, width=64, num_inference_steps=4,
        guidance_scale=1.0, num_images_per_prompt=2, generator=torch.Generator().manual_seed(8),
        output_type="np", max_sequence_length=tiny_sd3.max_sequence_length,
    ).images
    np.testing.assert_array_equal(ours.images, theirs)
    assert not np.array_equal(ours.images[0], ours.images[1])


# -- Algorithm 2: skipping -------------------------------------------------------------------------
@pytest.mark.parametrize("top, steps", [(1.0, 8), (0.75, 6), (0.3, 2), (0.1, 0)])
def test_only_floor_max_map_times_k_steps_run(tiny_sd3, image, monkeypatch, top, steps):
    calls = ForwardCalls(monkeypatch, tiny_sd3.transformer)
    change_map = np.tile(np.linspace(0, top, 64, dtype=np.float32), (64, 1))
    change_map[:, -16:] = np.float32(top)
    out = run(tiny_sd3, image, change_map, num_inference_steps=8)
    assert calls.count == steps == math.floor(top * 8 + 1e-4)
    assert out.steps_run == steps


# -- Algorithm 1: kept pixels, nested masks ---------------------------------------------------------
def test_strength_zero_pixels_equal_the_input_and_the_rest_is_repainted(tiny_sd3, image):
    change_map = np.zeros((64, 64), np.float32)
    change_map[:, 32:] = 1.0
    out = tiny_sd3(prompt=PROMPT, image=image, change_map=change_map, num_inference_steps=4,
                   generator=torch.Generator().manual_seed(0))
    result, source = np.asarray(out.images[0]), np.asarray(image)
    assert np.array_equal(result[:, :32], source[:, :32])
    assert np.abs(result[:, 32:].astype(int) - source[:, 32:]).mean() > 10


def test_strength_zero_latents_end_on_the_original(tiny_sd3, image):
    change_map = np.zeros((64, 64), np.float32)
    change_map[:, 32:] = 0.75
    out = run(tiny_sd3, image, change_map, output_type="latent")
    tensor, _ = tiny_sd3.prepare_image(image)
    z_init, _ = tiny_sd3.prepare_latents(tensor, 1, torch.Generator().manual_seed(0),
                                         torch.float32)
    assert out.images.shape == (1, 16, 8, 8)
    assert torch.equal(out.images[..., :4], z_init[..., :4])
    assert not torch.equal(out.images[..., 4:], z_init[..., 4:])


def test_each_region_gets_exactly_its_last_steps(tiny_sd3, monkeypatch):
    k = 4
    strengths = [0.0, 0.25, 0.5, 1.0]
    change_map = striped_map(strengths, 16, height=16)  # 16-px columns = 2 latent cells each
    keeps = record_keeps(monkeypatch, tiny_sd3, lambda keep: keep[0, 0].clone())
    tiny_sd3(prompt=PROMPT, image=make_test_image(64, 16), change_map=change_map,
             num_inference_steps=k, guidance_scale=1.0,
             generator=torch.Generator().manual_seed(0), output_type="latent")
    keep = torch.stack(keeps)  # steps x h x w
    assert keep.shape == (k, 2, 8)
    for earlier, later in zip(keep, keep[1:], strict=False):
        assert torch.all(later <= earlier)  # nested
    for j, s in enumerate(strengths):
        column = keep[:, :, 2 * j: 2 * j + 2].reshape(k, -1)
        assert torch.all(column == column[:, :1])
        kept_at = column[:, 0].nonzero().flatten().tolist()
        expected = math.floor(s * k + 1e-4)
        # Re-injected up to and including step k - n (every step for n = 0), free afterwards.
        assert kept_at == list(range(min(k - expected + 1, k)))


def test_batch_variants_differ_and_reproduce_alone(tiny_sd3, image):
    change_map = np.full((64, 64), 0.75, np.float32)
    batch = tiny_sd3(prompt=PROMPT, image=image, change_map=change_map, num_inference_steps=4,
                     num_images_per_prompt=2, output_type="np", guidance_scale=1.0,
                     generator=[torch.Generator().manual_seed(40 + i) for i in range(2)]).images
    assert batch.shape == (2, 64, 64, 3) and not np.array_equal(batch[0], batch[1])
    alone = tiny_sd3(prompt=PROMPT, image=image, change_map=change_map, num_inference_steps=4,
                     output_type="np", guidance_scale=1.0,
                     generator=torch.Generator().manual_seed(41)).images
    np.testing.assert_allclose(alone[0], batch[1], atol=1e-5)


def test_odd_sizes_come_back_at_input_size(tiny_sd3):
    image = make_test_image(45, 29)
    change_map = np.zeros((29, 45), np.float32)
    change_map[:, 22:] = 1.0
    out = tiny_sd3(prompt=PROMPT, image=image, change_map=change_map, num_inference_steps=2,
                   generator=torch.Generator().manual_seed(0))
    assert out.images[0].size == (45, 29)
    assert np.array_equal(np.asarray(out.images[0])[:, :22], np.asarray(image)[:, :22])


def test_all_zero_map_returns_the_input_without_the_model(tiny_sd3, image, monkeypatch):
    calls = ForwardCalls(monkeypatch, tiny_sd3.transformer)
    out = tiny_sd3(prompt=PROMPT, image=image, change_map=np.zeros((64, 64), np.float32))
    assert calls.count == 0 and out.steps_run == 0
    assert np.array_equal(np.asarray(out.images[0]), np.asarray(image))
    latents = tiny_sd3(prompt=PROMPT, image=image, change_map=np.zeros((64, 64), np.float32),
                       output_type="latent", num_images_per_prompt=2,
                       generator=torch.Generator().manual_seed(0)).images
    tensor, _ = tiny_sd3.prepare_image(image)
    z_init, _ = tiny_sd3.prepare_latents(tensor, 2, torch.Generator().manual_seed(0),
                                         torch.float32)
    assert calls.count == 0 and torch.equal(latents, z_init)


# -- hooks, schedulers, errors ---------------------------------------------------------------------
def test_preview_hook_reports_every_step_with_a_cheap_preview(tiny_sd3):
    hook = StepRecorder()
    seen, previews = hook.seen, hook.previews

    tiny_sd3(prompt=PROMPT, image=make_test_image(60, 44), change_map=np.ones((44, 60)),
             num_inference_steps=3, generator=torch.Generator().manual_seed(0), callback=hook)
    assert [info.step for info in seen] == [1, 2, 3] and all(i.total == 3 for i in seen)
    assert all(i.family == "sd3" and i.latents.shape == (1, 16, 6, 8) for i in seen)
    assert all(pv.shape == (6, 8, 3) and pv.dtype == np.uint8 for pv in previews)
    assert not np.array_equal(previews[0], previews[-1])


def test_cancel_stops_before_the_next_step(tiny_sd3, image, monkeypatch):
    calls = ForwardCalls(monkeypatch, tiny_sd3.transformer)
    cancel, hook = cancel_when(lambda info: info.step == 2)

    with pytest.raises(Cancelled):
        tiny_sd3(prompt=PROMPT, image=image, change_map=np.ones((64, 64), np.float32),
                 num_inference_steps=6, callback=hook, cancel=cancel)
    assert calls.count == 2



def test_flow_scheduler_names_pick_their_sigma_spacing(tiny_sd3):
    # The img2img comparisons build both sides with make_flow_scheduler: the names are checked here.
    spacings = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
    expected = {"Euler": set(), "Euler Karras": {"use_karras_sigmas"},
                "Euler exponential": {"use_exponential_sigmas"}}
    assert set(expected) == set(FLOW_SCHEDULER_NAMES)
    model = tiny_sd3.scheduler.config
    for name, on in expected.items():
        sched = make_flow_scheduler(name, tiny_sd3.scheduler)
        assert type(sched) is FlowMatchEulerDiscreteScheduler
        assert {key for key in spacings if sched.config[key]} == on, name
        assert (sched.config["shift"], sched.config["use_dynamic_shifting"]) == \
            (model["shift"], model["use_dynamic_shifting"]), name  # the model's shift stays

def test_flow_schedulers_run_and_sd_only_ones_are_refused(tiny_sd3, image):
    change_map = np.full((64, 64), 0.5, np.float32)
    results = [run(tiny_sd3, image, change_map, scheduler=name).images
               for name in FLOW_SCHEDULER_NAMES]
    assert all(np.isfinite(r).all() for r in results)
    assert not np.array_equal(results[0], results[1])  # the sigma spacing really changed
    with pytest.raises(ValueError, match="flow-matching"):
        run(tiny_sd3, image, change_map, scheduler="DDIM")
    with pytest.raises(ValueError, match="refiner"):
        run(tiny_sd3, image, change_map, refiner_split=0.5)


# -- through the real server -----------------------------------------------------------------------
@async_test
async def test_a_job_through_the_server_returns_the_pipelines_result_at_full_size(tiny_sd3):
    image, change = half_changed(seed=4)  # 80 x 48, not a multiple of 16: padded and cropped
    events, families = await server_job(tiny_sd3, "tiny-sd3", image, change, steps=3, seed=11,
                                        preview_every=1)
    assert "sd3" in families
    # The server ran only the edited region (plus a margin); the kept part is exact.
    got, source, kept = kept_part_exact(events, image)
    assert events[-1].steps_run == 3 and got.shape[0] == 48
    assert of(events, p.Preview)  # cheap latent previews went out
    assert np.abs(got[:, kept + 8:].astype(int) - source[:, kept + 8:]).mean() > 10


def test_dynamic_shifting_schedule_equals_img2img(tiny_sd3, image):
    # SD3.5-style configs shift the sigmas by the image's token count.
    components = dict(tiny_sd3.components)
    components["scheduler"] = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.16, base_image_seq_len=4,
        max_image_seq_len=64)
    pipe = StableDiffusion3DifferentialPipeline(**components)
    pipe.max_sequence_length = tiny_sd3.max_sequence_length
    change_map = np.full((64, 64), 0.75, np.float32)
    ours = run(pipe, image, change_map, seed=2)
    theirs = reference(pipe)(
        prompt=PROMPT, negative_prompt=NEGATIVE, image=image, strength=0.75, height=64, width=64,
        num_inference_steps=4, guidance_scale=4.0, generator=torch.Generator().manual_seed(2),
        output_type="np", max_sequence_length=pipe.max_sequence_length,
    ).images
    np.testing.assert_array_equal(ours.images, theirs)
    assert not np.array_equal(ours.images, run(tiny_sd3, image, change_map, seed=2).images)


def test_kept_cells_are_the_original_noised_to_each_steps_own_sigma(tiny_sd3, monkeypatch):
    # scale_noise: kept cells must be sigma_i * noise + (1 - sigma_i) * z_init at every step i,
    # with the sigma of that step (re-noising to the first sigma passed every other test).
    probe = ReinjectionProbe(monkeypatch, tiny_sd3, [tiny_sd3.transformer])
    run(tiny_sd3, make_test_image(64, 32), striped_map(STRIPES, 16, height=32),
        num_inference_steps=STRIPE_K)
    reference = make_flow_scheduler(None, tiny_sd3.scheduler)
    tiny_sd3.set_timesteps(reference, STRIPE_K, (4, 8))
    z_init, noise = probe.originals[0]
    n = stripe_steps(cells_per_stripe=2)
    assert_kept_cells_match(probe.samples, [
        (n <= STRIPE_K - i, reference.scale_noise(z_init, t[None], noise))  # by t: no begin index
        for i, t in enumerate(reference.timesteps)])


# -- which ids are flow-matching models --------------------------------------------------------------
def test_flow_families_are_recognised_and_pickled_weights_refused(tmp_path):
    from server.models import ModelNotFoundError, family_of, load_pipeline

    assert family_of("tiny-sd3") == "sd3" and family_of("tiny-flux") == "flux"
    assert family_of("stabilityai/stable-diffusion-3.5-medium") == "sd3"
    assert family_of("black-forest-labs/FLUX.1-dev") == "flux"
    assert family_of("stable-diffusion-v1-5/stable-diffusion-v1-5") == "sd"
    assert family_of("tiny-sd") == "sd"
    folder = tmp_path / "my-model"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert family_of(str(folder)) == "flux"
    (folder / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    assert family_of(str(folder)) == "sd3"
    (folder / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelNotFoundError, match="safetensors"):
        load_pipeline(str(folder))
