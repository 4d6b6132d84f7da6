"""DeepFloyd IF's pixel-space differential loop against diffusers' IF img2img stages."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, IFImg2ImgPipeline, IFImg2ImgSuperResolutionPipeline

from server.pipelines import Cancelled, StepInfo
from server.pipelines.deepfloyd_if import NO_SAFETY
from tests.conftest import make_test_image
from tests.pipeline_helpers import (
    NEGATIVE, PROMPT, ForwardCalls, StepRecorder, cancel_when,
    STRIPE_K, STRIPES, STRIPE_STEPS, ReinjectionProbe, assert_kept_cells_match, half_changed,
    kept_part_exact, make_run, quiet, server_job, striped_map,
)


def reference(pipe):
    """diffusers' stage I and stage II img2img pipelines on the very same components."""
    c = pipe.components
    first = IFImg2ImgPipeline(tokenizer=c["tokenizer"], text_encoder=c["text_encoder"],
                              unet=c["unet"], scheduler=c["scheduler"], **NO_SAFETY)
    second = IFImg2ImgSuperResolutionPipeline(
        tokenizer=c["tokenizer"], text_encoder=c["text_encoder"], unet=c["unet_2"],
        scheduler=c["scheduler_2"], image_noising_scheduler=c["image_noising_scheduler"],
        **NO_SAFETY)
    return quiet(first), quiet(second)


run = make_run(negative_prompt=NEGATIVE, num_inference_steps=10, guidance_scale=7.0)


def test_loads_through_load_pipeline(tiny_if):
    assert tiny_if.family == "if"
    assert tiny_if.native_resolution == 64  # stage II's size (stage I: 16)
    assert tiny_if.stages == {"stage_2": True, "stage_3": False}


# -- uniform map == IFImg2ImgPipeline (+ IFImg2ImgSuperResolutionPipeline) -----------------------
@pytest.mark.parametrize("strength", [0.5, 0.7])  # float32 0.7 is 0.69999999: still 7 of 10
def test_uniform_map_equals_diffusers_img2img_stage_1(tiny_if, strength):
    image = make_test_image()
    change_map = np.full((64, 64), strength, np.float32)
    ours = run(tiny_if, image, change_map, seed=3, stage_2=False, output_type="latent")
    first, _ = reference(tiny_if)
    theirs = first(prompt=PROMPT, negative_prompt=NEGATIVE, image=image, strength=strength,
                   num_inference_steps=10, guidance_scale=7.0, clean_caption=False,
                   generator=torch.Generator().manual_seed(3), output_type="pt").images
    assert ours.images.shape == theirs.shape == (1, 3, 16, 16)
    assert ours.steps_run == math.floor(strength * 10 + 1e-4)
    assert torch.equal(ours.images, theirs)


def test_uniform_map_equals_diffusers_cascade_stage_1_and_2(tiny_if):
    image = make_test_image()
    change_map = np.full((64, 64), 0.6, np.float32)
    ours = run(tiny_if, image, change_map, seed=5, num_inference_steps=5)
    first, second = reference(tiny_if)
    generator = torch.Generator().manual_seed(5)  # one generator through both stages
    stage_1 = first(prompt=PROMPT, negative_prompt=NEGATIVE, image=image, strength=0.6,
                    num_inference_steps=5, guidance_scale=7.0, clean_caption=False,
                    generator=generator, output_type="pt").images
    theirs = second(prompt=PROMPT, negative_prompt=NEGATIVE, image=stage_1, original_image=image,
                    strength=0.6, num_inference_steps=5, guidance_scale=7.0,
                    clean_caption=False, generator=generator, output_type="np").images
    assert ours.steps_run == 3 + 3
    assert ours.images.shape == theirs.shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(ours.images, theirs)


# -- Algorithm 2 (skipping) per stage, strength 0, all-zero maps ---------------------------------
@pytest.mark.parametrize("top", [1.0, 0.5, 0.25])
def test_each_stage_runs_only_floor_max_map_times_k_steps(tiny_if, monkeypatch, top):
    stage_1 = ForwardCalls(monkeypatch, tiny_if.components["unet"])
    stage_2 = ForwardCalls(monkeypatch, tiny_if.components["unet_2"])
    change_map = np.tile(np.linspace(0, top, 64, dtype=np.float32), (64, 1))
    change_map[:, -8:] = np.float32(top)  # survives the box filter down to stage I's 16 px
    out = run(tiny_if, make_test_image(), change_map, num_inference_steps=4,
              output_type="latent")
    expected = math.floor(top * 4 + 1e-4)
    assert stage_1.count == stage_2.count == expected
    assert out.steps_run == 2 * expected


def test_strength_zero_pixels_equal_the_input(tiny_if):
    image = make_test_image(80, 48)  # stage I 24 x 16, stage II 104 x 64, result back at 80 x 48
    change_map = np.zeros((48, 80), np.float32)
    change_map[:, 40:] = 1.0
    out = run(tiny_if, image, change_map, num_inference_steps=4, output_type="pil")
    result, source = np.asarray(out.images[0]), np.asarray(image)
    assert out.images[0].size == (80, 48)
    assert np.array_equal(result[:, :40], source[:, :40])
    assert not np.array_equal(result[:, 44:], source[:, 44:])
    last = run(tiny_if, image, change_map, num_inference_steps=4, output_type="latent")
    x_init = tiny_if.stage_input(image, 2)
    assert last.images.shape == (1, 3, 64, 104)
    assert torch.equal(last.images[..., :52], x_init[..., :52])  # stage II's kept half


def test_all_zero_map_runs_nothing(tiny_if, monkeypatch):
    calls = ForwardCalls(monkeypatch, tiny_if.components["unet"])
    image = make_test_image()
    out = tiny_if(prompt=PROMPT, image=image, change_map=np.zeros((64, 64), np.float32),
                  num_images_per_prompt=2)
    assert calls.count == out.steps_run == 0
    assert len(out.images) == 2
    assert all(np.array_equal(np.asarray(r), np.asarray(image)) for r in out.images)


# -- batch, hooks ----------------------------------------------------------------------------------
def test_batch_variants_differ_and_reproduce_alone(tiny_if):
    image, change_map = make_test_image(), np.full((64, 64), 0.8, np.float32)
    kwargs = dict(prompt=PROMPT, image=image, change_map=change_map, num_inference_steps=4,
                  output_type="np")
    batch = tiny_if(**kwargs, num_images_per_prompt=2,
                    generator=[torch.Generator().manual_seed(40 + i) for i in range(2)]).images
    assert batch.shape == (2, 64, 64, 3) and not np.array_equal(batch[0], batch[1])
    alone = tiny_if(**kwargs, generator=torch.Generator().manual_seed(41)).images
    np.testing.assert_allclose(alone[0], batch[1], atol=1e-4)


def test_preview_hook_spans_both_stages_and_cancel_stops(tiny_if, monkeypatch):
    hook = StepRecorder()
    seen, previews = hook.seen, hook.previews

    run(tiny_if, make_test_image(), np.full((64, 64), 0.5, np.float32), callback=hook,
        num_inference_steps=6)
    assert [info.step for info in seen] == list(range(1, 7))
    assert all(info.total == 6 for info in seen)
    assert [info.stage for info in seen] == [1] * 3 + [2] * 3
    assert all(p.shape == (16, 16, 3) and p.dtype == np.uint8 for p in previews)
    assert not np.array_equal(previews[0], previews[-1])

    calls = ForwardCalls(monkeypatch, tiny_if.components["unet_2"])
    cancel, stop_in_stage_2 = cancel_when(lambda info: info.step == 5)

    with pytest.raises(Cancelled):
        run(tiny_if, make_test_image(), np.ones((64, 64), np.float32), num_inference_steps=3,
            callback=stop_in_stage_2, cancel=cancel)
    assert calls.count == 2  # 3 steps of stage I, then 2 of stage II


def test_bad_arguments_raise_value_errors(tiny_if):
    image, change_map = make_test_image(), np.ones((64, 64), np.float32)
    with pytest.raises(ValueError, match="scheduler"):
        tiny_if(image=image, change_map=change_map, scheduler="Nope")
    with pytest.raises(ValueError, match="generators"):
        tiny_if(image=image, change_map=change_map, num_inference_steps=2,
                num_images_per_prompt=2, generator=[torch.Generator()])
    with pytest.raises(ValueError, match="refiner"):
        tiny_if(image=image, change_map=change_map, refiner_split=0.5)


# -- over the real server --------------------------------------------------------------------------
def test_a_job_over_the_real_server_returns_the_right_size(tiny_if):
    import asyncio

    from shared import protocol as p
    from tests.server.server_harness import decode, of

    image, change = half_changed(seed=2)
    events, families = asyncio.run(server_job(tiny_if, "tiny-if", image, change, steps=4,
                                              seed=5, preview_every=1))
    assert {"if", "kandinsky22"} <= families
    # The server crops to the edited region; the kept part is exact.
    got, source, kept = kept_part_exact(events, image)
    assert not np.array_equal(got[:, kept + 4 :], source[:, kept + 4 :])
    assert of(events, p.Preview) and all(decode(e.png).shape[2] == 3
                                         for e in of(events, p.Preview))


def test_stage_3_upscales_stage_2s_result_as_usual(tiny_if):
    from server.pipelines.deepfloyd_if import DeepFloydIFDifferentialPipeline
    from server.models.tiny import tiny_if_upscaler

    upscaler = tiny_if_upscaler()
    pipe = DeepFloydIFDifferentialPipeline(**tiny_if.components, upscaler=upscaler)
    assert pipe.stages == {"stage_2": True, "stage_3": True} and pipe.native_resolution == 256
    image, change_map = make_test_image(), np.full((64, 64), 0.5, np.float32)
    kwargs = dict(prompt=PROMPT, image=image, change_map=change_map, num_inference_steps=2,
                  guidance_scale=7.0, output_type="latent")
    ours = pipe(**kwargs, generator=torch.Generator().manual_seed(5)).images
    assert ours.shape == (1, 3, 256, 256)
    generator = torch.Generator().manual_seed(5)  # stages I + II, then diffusers' upscaler
    stage_2 = pipe(**kwargs, generator=generator, stage_3=False).images
    theirs = upscaler(prompt=[PROMPT], image=(stage_2 / 2 + 0.5).clamp(0, 1), noise_level=100,
                      generator=generator, num_inference_steps=2, guidance_scale=7.0,
                      output_type="pt").images * 2 - 1
    assert torch.equal(ours, theirs)
    seen: list[StepInfo] = []
    final = pipe(**{**kwargs, "output_type": "np"}, generator=torch.Generator().manual_seed(5),
                 callback=seen.append)
    assert final.images.shape == (1, 64, 64, 3)  # back at the input's size
    assert [(i.step, i.stage) for i in seen] == [(1, 1), (2, 2), (3, 3), (4, 3)]
    assert all(i.total == 4 and i.preview().shape == (16, 16, 3) for i in seen)
    cancel, stop_in_stage_3 = cancel_when(lambda info: info.stage == 3)

    with pytest.raises(Cancelled):
        pipe(**kwargs, callback=stop_in_stage_3, cancel=cancel)


def test_every_scheduler_name_runs(tiny_if):
    # IF's config asks for a learned variance; schedulers without one get the noise only.
    from server.schedulers import SCHEDULER_NAMES

    for name in SCHEDULER_NAMES:
        out = run(tiny_if, make_test_image(), np.full((64, 64), 0.5, np.float32),
                  num_inference_steps=4, scheduler=name, stage_2=False)
        assert np.isfinite(out.images).all() and out.steps_run >= 2, name


def test_stage_sizes_fit_a_deeper_unet_on_a_wide_crop(tiny_if):
    # IF's resize makes 80 x 48 into 24 x 16 at stage I; a UNet that halves four times needs
    # multiples of 16 (as IF-II does at 256 px), so such sizes are rounded to fit it.
    from diffusers import UNet2DConditionModel

    from server.pipelines.deepfloyd_if import DeepFloydIFDifferentialPipeline

    config = dict(tiny_if.unet.config)
    config.update(block_out_channels=(8, 8, 16, 16, 32),
                  down_block_types=("ResnetDownsampleBlock2D",) * 4
                  + ("SimpleCrossAttnDownBlock2D",),
                  up_block_types=("SimpleCrossAttnUpBlock2D",)
                  + ("ResnetUpsampleBlock2D",) * 4)
    deep = UNet2DConditionModel.from_config(config).eval()
    pipe = DeepFloydIFDifferentialPipeline(**{**tiny_if.components, "unet": deep})
    image = make_test_image(80, 48)
    assert tuple(pipe.stage_input(image, 1).shape) == (1, 3, 16, 32)
    assert tuple(pipe.stage_input(make_test_image(), 1).shape) == (1, 3, 16, 16)  # IF's own
    change_map = np.zeros((48, 80), np.float32)
    change_map[:, 40:] = 1.0
    out = run(pipe, image, change_map, num_inference_steps=2, stage_2=False, output_type="pil")
    assert out.images[0].size == (80, 48)
    assert np.array_equal(np.asarray(out.images[0])[:, :40], np.asarray(image)[:, :40])


def test_kept_pixels_are_the_original_noised_to_each_steps_own_timestep(tiny_if, monkeypatch):
    # Both differential stages: kept pixels are the stage's input noised (add_noise) to each
    # step's own timestep. The 64 x 32 stripes are 8 px wide at stage I (32 x 16) and 32 px at
    # stage II (128 x 64).
    probe = ReinjectionProbe(monkeypatch, tiny_if, [tiny_if.unet, tiny_if.helper_2.unet])
    run(tiny_if, make_test_image(64, 32), striped_map(STRIPES, 16, height=32),
        num_inference_steps=STRIPE_K)
    assert len(probe.samples) == 2 * STRIPE_K
    expected = []
    for stage, (scheduler, stripe_px) in enumerate([(tiny_if.scheduler, 8),
                                                   (tiny_if.helper_2.scheduler, 32)]):
        reference = DDPMScheduler.from_config(scheduler.config)
        reference.set_timesteps(STRIPE_K)
        x_init, noise = probe.originals[stage * STRIPE_K]
        n = torch.tensor(STRIPE_STEPS).repeat_interleave(stripe_px)[None, None, None]
        expected += [(n <= STRIPE_K - i, reference.add_noise(x_init, noise, t[None]))
                     for i, t in enumerate(reference.timesteps)]
    assert_kept_cells_match([s[:, :3] for s in probe.samples], expected)  # (II: + condition)


# -- loading real-model folders ----------------------------------------------------------------------
def save_as_folders(pipe, root, safe: bool = True) -> None:
    first, second = reference(pipe)
    first.save_pretrained(root / "stage_1", safe_serialization=safe)
    second.text_encoder = second.tokenizer = None  # stage II reuses stage I's T5, as real IF
    second.register_to_config(text_encoder=(None, None), tokenizer=(None, None))
    second.save_pretrained(root / "stage_2", safe_serialization=safe)


def test_saved_stage_folders_load_and_give_the_same_images(tiny_if, tmp_path):
    from server.models import load_pipeline

    save_as_folders(tiny_if, tmp_path)
    loaded = load_pipeline(str(tmp_path))
    assert loaded.family == "if" and loaded.stages == {"stage_2": True, "stage_3": False}
    image, change_map = make_test_image(), np.full((64, 64), 0.5, np.float32)
    a = run(tiny_if, image, change_map, num_inference_steps=4).images
    b = run(loaded, image, change_map, num_inference_steps=4).images
    np.testing.assert_array_equal(a, b)


def test_pickled_weights_are_refused(tiny_if, tmp_path):
    from server.models import ModelNotFoundError, load_pipeline

    save_as_folders(tiny_if, tmp_path, safe=False)
    with pytest.raises(ModelNotFoundError, match="safetensors"):
        load_pipeline(str(tmp_path))
