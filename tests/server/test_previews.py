"""Latent -> RGB previews: a linear map per model family, checked by inverting it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from server.previews import LATENT_RGB_FACTORS, latents_to_rgb
from shared import protocol as p
from tests.conftest import make_test_image
from tests.pipeline_helpers import server_job
from tests.server.server_harness import async_test, decode, of

FAMILIES = sorted(LATENT_RGB_FACTORS)


def latents_for(rgb: np.ndarray, family: str) -> torch.Tensor:
    """Latents (C x h x w) that the family's factors map back to ``rgb`` (least squares)."""
    factors, bias = LATENT_RGB_FACTORS[family]
    weight = np.asarray(factors, np.float64)  # C x 3
    target = rgb.astype(np.float64) / 255.0 * 2.0 - 1.0 - np.asarray(bias)  # h x w x 3
    lat = target @ np.linalg.pinv(weight)  # h x w x C; exact, the factors have rank 3
    return torch.from_numpy(lat.transpose(2, 0, 1).copy()).float()


@pytest.mark.parametrize("family", FAMILIES)
def test_preview_is_the_picture_the_latents_stand_for(family):
    picture = np.asarray(make_test_image(24, 16))  # not square: catches a swapped h / w
    picture = np.clip(picture, 8, 247)  # inside the range, away from the clamp
    preview = latents_to_rgb(latents_for(picture, family), family)
    assert preview.shape == (16, 24, 3) and preview.dtype == np.uint8
    assert np.abs(preview.astype(int) - picture).max() <= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_preview_of_zero_latents_is_a_neutral_colour_and_batch_dim_is_ok(family):
    channels = len(LATENT_RGB_FACTORS[family][0])
    zero = latents_to_rgb(torch.zeros(1, channels, 5, 7), family)  # B x C x h x w: first one
    assert zero.shape == (5, 7, 3)
    assert np.all((zero > 90) & (zero < 170))  # mid grey give or take the bias
    loud = latents_to_rgb(torch.full((channels, 2, 2), 1e4), family)
    assert loud.min() >= 0 and loud.max() <= 255  # clamped, not wrapped around


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_preview_takes_any_float_dtype(dtype):
    picture = np.asarray(make_test_image(8, 8))
    latents = latents_for(picture, "sd")
    preview = latents_to_rgb(latents.to(dtype), "sd")
    assert np.abs(preview.astype(int) - picture).max() <= 4  # half precision rounding


def test_preview_refuses_wrong_channels_and_unknown_family():
    with pytest.raises(ValueError, match="4 latent channels, got 3"):
        latents_to_rgb(torch.zeros(3, 4, 4), "sd")
    with pytest.raises(ValueError, match="family 'nope'"):
        latents_to_rgb(torch.zeros(4, 4, 4), "nope")


@pytest.mark.parametrize("fixture, family", [("tiny_sd", "sd"), ("tiny_sdxl", "sdxl")])
def test_step_preview_shows_the_clean_estimate_at_latent_size(request, fixture, family):
    # 61 x 45 pads to 64 x 48: 8 x 6 latent cells, one preview pixel each.
    pipe = request.getfixturevalue(fixture)
    seen = []
    pipe(prompt="x", image=make_test_image(61, 45), change_map=np.ones((45, 61), np.float32),
         num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="latent",
         scheduler="Euler", callback=lambda info: seen.append(
             (info.family, info.preview(), info.denoised.clone(), info.latents.clone())))
    assert len(seen) == 3
    for seen_family, preview, denoised, _ in seen:
        assert seen_family == family
        assert preview.shape == (6, 8, 3) and preview.dtype == np.uint8
        # The scheduler's clean estimate, not the noisy latents: previews look like the result.
        np.testing.assert_array_equal(preview, latents_to_rgb(denoised[0], family))
    _, first, _, noisy = seen[0]  # (at the last step Euler's estimate is the latents themselves)
    assert not np.array_equal(first, latents_to_rgb(noisy[0], family))


# -- previews composited like the result ------------------------------------------------------------
def area_average(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """``array`` (H x W or H x W x C) averaged over ``width`` x ``height`` areas."""
    tensor = torch.from_numpy(np.asarray(array, np.float64))
    tensor = tensor[None, None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)[None]
    small = torch.nn.functional.adaptive_avg_pool2d(tensor, (height, width))[0]
    return small[0].numpy() if np.ndim(array) == 2 else small.permute(1, 2, 0).numpy()


def test_a_preview_is_the_picture_as_it_will_look(tiny_sd):
    # Columns of latent cells: kept (0), a value below 1/k (blended, as in the result), changed.
    k = 10
    image = make_test_image(64, 32)
    change_map = np.zeros((32, 64), np.float32)
    change_map[:, 24:40] = 0.05  # half a step: the result's weight there is smoothstep(0.5)
    change_map[:, 40:] = 1.0
    seen = []
    tiny_sd(prompt="x", image=image, change_map=change_map, num_inference_steps=k,
            generator=torch.Generator().manual_seed(0),
            callback=lambda info: seen.append((info.preview(), info.generated_preview())))
    source = area_average(np.asarray(image, np.float64), 8, 4)
    for preview, generated in seen:
        assert preview.shape == generated.shape == (4, 8, 3)
        np.testing.assert_allclose(preview[:, :3], source[:, :3], atol=0.5)  # the input, kept
        np.testing.assert_array_equal(preview[:, 5:], generated[:, 5:])  # the model's, changed
        half = np.round(generated[:, 3:5] + (source[:, 3:5] - generated[:, 3:5]) * 0.5)
        np.testing.assert_allclose(preview[:, 3:5], half, atol=1)
    assert not np.allclose(seen[0][1][:, :3], source[:, :3], atol=8)  # (not so by itself)


@async_test
async def test_previews_the_server_sends_show_kept_pixels_as_the_input(tiny_sd):
    image = make_test_image(64, 64, seed=3)
    change = np.zeros((64, 64), np.uint8)
    change[:, 40:] = 255
    events, _ = await server_job(tiny_sd, "tiny-sd", image, change, steps=4, preview_every=1)
    previews = of(events, p.Preview)
    assert previews
    for event in previews:
        got = decode(event.png)
        box = event.region
        source = np.asarray(image)[box.y : box.y + box.height, box.x : box.x + box.width]
        kept = change[box.y : box.y + box.height, box.x : box.x + box.width] == 0
        height, width = got.shape[:2]
        fully_kept = area_average(kept.astype(np.float64), width, height) == 1.0
        assert fully_kept.any() and not fully_kept.all()
        expected = area_average(source.astype(np.float64), width, height)
        np.testing.assert_allclose(got[fully_kept], expected[fully_kept], atol=0.5)
