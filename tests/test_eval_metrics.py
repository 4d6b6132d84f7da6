"""CAM, DAM, the edit-strength map and the fallback perceptual distance on synthetic data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval import metrics
from eval.metrics import cam, dam, edit_strength_map, get_distance, ms_lab_ssim_distance


def _ramp(h: int = 32, w: int = 48) -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, w), (h, 1))


def _texture(seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def test_linear_edit_map_gives_perfect_scores() -> None:
    m = _ramp()
    e = 0.37 * m - 1.5
    assert cam(m, e) == pytest.approx(1.0, abs=1e-12)
    assert dam(m, e) == pytest.approx(0.0, abs=1e-9)


def test_inverted_edit_map_is_perfectly_fitted_but_anticorrelated() -> None:
    m = _ramp()
    e = 1.0 - m
    assert cam(m, e) == pytest.approx(-1.0, abs=1e-12)
    # DAM lets a be negative, so an inverted map still fits: CAM is what catches the inversion.
    assert dam(m, e) == pytest.approx(0.0, abs=1e-9)


def test_noise_lowers_cam_and_raises_dam_monotonically() -> None:
    m = _ramp()
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(m.shape)
    cams = [cam(m, m + level * noise) for level in (0.0, 0.1, 0.3, 1.0, 3.0)]
    dams = [dam(m, m + level * noise) for level in (0.0, 0.1, 0.3, 1.0, 3.0)]
    assert cams[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(cams, cams[1:], strict=False))
    assert all(a < b for a, b in zip(dams, dams[1:], strict=False))
    assert cams[-1] < 0.5


def test_dam_agrees_with_closed_form_of_least_squares() -> None:
    # For a least-squares fit with intercept, the residual is ||M - mean M|| * sqrt(1 - r^2).
    rng = np.random.default_rng(1)
    m = rng.random((20, 30))
    e = np.sin(3 * m) + 0.2 * rng.standard_normal(m.shape)
    r = cam(m, e)
    expected = np.linalg.norm(m - m.mean()) * math.sqrt(1 - r * r)
    assert dam(m, e) == pytest.approx(expected, rel=1e-9)


def test_dam_is_a_frobenius_norm_and_scales_with_map_size() -> None:
    m = np.zeros((4, 4))
    m[:, :2] = 1.0
    e = np.zeros((4, 4))  # nothing edited: the best fit is M's mean, 0.5, off by 0.5 at 16 pixels
    assert dam(m, e) == pytest.approx(math.sqrt(16 * 0.25))
    assert dam(np.kron(m, np.ones((2, 2))), np.zeros((8, 8))) == pytest.approx(2 * dam(m, e))


def test_constant_edit_map_has_undefined_cam() -> None:
    m = _ramp()
    assert math.isnan(cam(m, np.full(m.shape, 0.25)))
    assert math.isnan(cam(np.zeros((4, 4)), _ramp(4, 4)))


def test_mismatched_or_bad_maps_are_refused() -> None:
    with pytest.raises(ValueError, match="one size"):
        cam(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="finite"):
        dam(np.zeros((4, 4)), np.full((4, 4), np.nan))


def test_edit_strength_map_removes_spatial_bias() -> None:
    # A fake editor that follows the map but also always changes the top rows more (a bias that
    # every map shares, like borders in a real model). Subtracting the all-change run removes it.
    size = 64
    m = np.tile(np.linspace(0.0, 1.0, size), (size, 1))
    bias = np.zeros((size, size))
    bias[:16] = 1.0
    distance = get_distance(metrics.FALLBACK_DISTANCE)

    def edit(image: np.ndarray, amount: np.ndarray, seed: int) -> np.ndarray:
        noise = np.random.default_rng(seed).integers(0, 256, size=image.shape)
        a = np.clip(amount, 0, 1)[..., None]
        return np.round(image * (1 - a) + noise * a).astype(np.uint8)

    images = [_texture(seed) for seed in range(8)]
    with_map = metrics.MeanDistanceMap(distance)
    all_change = metrics.MeanDistanceMap(distance)
    for i, image in enumerate(images):
        with_map.add(image, edit(image, 0.6 * m + 0.4 * bias, 100 + i))
        all_change.add(image, edit(image, 0.6 + 0.4 * bias, 200 + i))
    raw = with_map.mean()
    e = edit_strength_map(raw, all_change.mean())
    assert with_map.count == 8
    first = distance(images[0], edit(images[0], 0.6 * m + 0.4 * bias, 100))
    two = metrics.MeanDistanceMap(distance)
    two.add(images[0], edit(images[0], 0.6 * m + 0.4 * bias, 100))
    two.add(images[0], images[0])  # unchanged: distance 0
    np.testing.assert_allclose(two.mean(), first / 2, atol=1e-9)  # a mean, not a sum
    # White-noise textures and a saturating distance keep CAM below 1 even for this ideal editor.
    assert cam(m, e) > 0.8
    assert cam(m, e) > cam(m, raw) + 0.1


def test_adherence_convenience_matches_parts() -> None:
    distance = get_distance(metrics.FALLBACK_DISTANCE)
    m = _ramp(64, 64)
    image = _texture(7)
    out = image.copy()
    out[:, 32:] = 255 - out[:, 32:]
    everything = 255 - image
    scores, e = metrics.adherence(m, [(image, out)], [(image, everything)], distance)
    expected = distance(image, out) - distance(image, everything)
    np.testing.assert_allclose(e, expected)
    assert scores.cam == pytest.approx(cam(m, expected))
    assert scores.dam == pytest.approx(dam(m, expected))
    assert scores.distance == metrics.FALLBACK_DISTANCE and scores.pairs == 1


def test_fallback_distance_is_zero_for_identical_images_and_grows_with_change() -> None:
    image = _texture(3)
    assert np.abs(ms_lab_ssim_distance(image, image)).max() < 1e-9
    rng = np.random.default_rng(4)
    noise = rng.integers(-128, 128, size=image.shape)
    means = []
    for amount in (0.1, 0.3, 0.6, 1.0):
        changed = np.clip(image + amount * noise, 0, 255).astype(np.uint8)
        means.append(ms_lab_ssim_distance(image, changed).mean())
    assert all(a < b for a, b in zip(means, means[1:], strict=False))


def test_fallback_distance_is_local() -> None:
    image = _texture(5, size=128)
    changed = image.copy()
    changed[:, 64:] = np.roll(changed[:, 64:], 7, axis=0)  # new texture, same colours, right half only
    d = ms_lab_ssim_distance(image, changed)
    left, right = d[:, :48].mean(), d[:, 80:].mean()
    assert right > 0.2
    assert left < 0.02 * right


def test_fallback_distance_sees_a_flat_colour_change() -> None:
    grey = np.full((32, 32, 3), 128, dtype=np.uint8)
    red = grey.copy()
    red[..., 0] = 200
    assert ms_lab_ssim_distance(grey, red).mean() > 0.1


def test_lab_conversion_known_colours() -> None:
    lab = metrics.srgb_to_lab(np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0]]], dtype=np.uint8))[0]
    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=0.05)
    np.testing.assert_allclose(lab[1], [0.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.05)


def test_gaussian_blur_keeps_mean_and_smooths() -> None:
    rng = np.random.default_rng(6)
    x = rng.random((40, 50))
    y = metrics.gaussian_blur(x, 2.0)
    assert y.shape == x.shape
    assert y.mean() == pytest.approx(x.mean(), abs=0.01)
    assert y.std() < 0.5 * x.std()
    np.testing.assert_allclose(metrics.gaussian_blur(np.full((5, 5), 3.0), 4.0), 3.0)


def test_distance_checks_its_inputs() -> None:
    distance = get_distance(metrics.FALLBACK_DISTANCE)
    with pytest.raises(ValueError, match="RGB"):
        distance(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        distance(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="differ in size"):
        distance(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8))


def test_auto_distance_names_what_it_uses() -> None:
    reason = metrics.lpips_unavailable_reason()
    chosen = get_distance("auto")
    if reason is None:
        assert chosen.name == metrics.LPIPS_DISTANCE
    else:
        assert chosen.name == metrics.FALLBACK_DISTANCE
        with pytest.raises(RuntimeError, match="LPIPS is not available"):
            get_distance(metrics.LPIPS_DISTANCE)
    with pytest.raises(ValueError, match="unknown distance"):
        get_distance("psnr")


@pytest.mark.skipif(metrics.lpips_unavailable_reason() is not None, reason="LPIPS weights are not on this machine")
def test_lpips_distance_when_available() -> None:
    distance = get_distance(metrics.LPIPS_DISTANCE)
    image = _texture(8)
    changed = image.copy()
    changed[:, 32:] = 255 - changed[:, 32:]
    d = distance(image, changed)
    assert d.shape == (64, 64)
    assert d[:, 40:].mean() > d[:, :24].mean()
