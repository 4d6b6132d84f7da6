"""Change-map builders and checks: server/maps.py and the fan geometry in shared/fan.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

import server.maps as maps
from server.maps import fan_map, soft_inpaint_map, to_change_map
from shared import fan
from shared.fan import LATENT_CELL_PX, fan_columns, fan_strengths


def square_mask(size: int = 96, box: tuple[int, int, int, int] = (40, 40, 56, 56)) -> np.ndarray:
    mask = np.zeros((size, size), np.float32)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 1.0
    return mask


def direct_gaussian_blur(values: np.ndarray, sigma: float) -> np.ndarray:
    """A plain 2-D Gaussian (not separable), edge pixels repeated: the peer of maps' blur."""
    radius = max(1, math.ceil(3 * sigma))
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (x[:, None] ** 2 + x[None, :] ** 2) / sigma**2)
    kernel /= kernel.sum()
    padded = np.pad(values.astype(np.float64), radius, mode="edge")
    h, w = values.shape
    out = np.zeros((h, w))
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out += kernel[dy, dx] * padded[dy : dy + h, dx : dx + w]
    return out


# -- soft inpaint ----------------------------------------------------------------------------------
def test_soft_inpaint_is_twice_a_gaussian_blur_capped_at_one():
    mask = square_mask()
    softness = 8.0
    result = soft_inpaint_map(mask, softness)
    expected = np.maximum(mask, np.minimum(1.0, 2.0 * direct_gaussian_blur(mask, softness / 2)))
    assert result.dtype == np.float32 and result.shape == mask.shape
    np.testing.assert_allclose(result, expected, atol=1e-5)


@pytest.mark.parametrize("softness", [2.0, 8.0, 16.0])
def test_soft_inpaint_values_and_reach(softness):
    mask = square_mask(128, (56, 56, 72, 72))
    result = soft_inpaint_map(mask, softness)
    assert result.min() >= 0.0 and result.max() <= 1.0
    assert np.all(result[mask == 1] == 1.0)  # the painted area changes fully
    row = result[64, 72:]  # going right from the square's edge
    assert np.all(np.diff(row) <= 0)  # fades outward, no bumps
    # About 0.05 at `softness` outside (2 * Phi(-2) = 0.046; coarser for tiny kernels), exactly 0
    # past the kernel's reach.
    assert 0.02 < row[int(softness) - 1] < 0.15
    reach = math.ceil(1.5 * softness)
    assert np.all(row[reach:] == 0.0)
    far = np.ones_like(mask, bool)
    far[56 - reach : 72 + reach, 56 - reach : 72 + reach] = False
    assert np.all(result[far] == 0.0)


def test_soft_inpaint_larger_softness_reaches_further():
    mask = square_mask()
    widths = [int((soft_inpaint_map(mask, s)[48] > 0.01).sum()) for s in (2.0, 6.0, 12.0)]
    assert widths[0] < widths[1] < widths[2]


def test_soft_inpaint_zero_softness_is_the_binary_mask():
    mask = square_mask()
    mask[10, 10] = 0.4  # below 0.5: not painted
    mask[12, 12] = 0.6  # above: painted
    result = soft_inpaint_map(mask, 0.0)
    expected = square_mask()
    expected[12, 12] = 1.0
    np.testing.assert_array_equal(result, expected)
    assert set(np.unique(result)) == {0.0, 1.0}


def test_soft_inpaint_takes_pil_and_uint8_masks_alike():
    mask = square_mask()
    as_uint8 = (mask * 255).astype(np.uint8)
    from_float = soft_inpaint_map(mask, 6.0)
    np.testing.assert_array_equal(soft_inpaint_map(as_uint8, 6.0), from_float)
    np.testing.assert_array_equal(soft_inpaint_map(Image.fromarray(as_uint8), 6.0), from_float)
    np.testing.assert_array_equal(soft_inpaint_map(mask.astype(bool), 6.0), from_float)


@pytest.mark.parametrize("grow", [3, 8, -4])
def test_soft_inpaint_grow_and_shrink(grow):
    mask = square_mask()  # 16 x 16 square at 40..56
    hard = soft_inpaint_map(mask, 0.0, grow_px=grow)
    x0, x1 = 40 - grow, 56 + grow
    np.testing.assert_array_equal(hard, square_mask(96, (x0, x0, x1, x1)))
    soft = soft_inpaint_map(mask, 6.0, grow_px=grow)
    assert np.all(soft[x0:x1, x0:x1] == 1.0) and soft[48, x1 + 2] < 1.0



def test_soft_inpaint_at_the_canvas_edge_fades_as_if_the_picture_went_on():
    # A strip down the whole left side: beyond the top and bottom borders the mask repeats, so
    # every row fades the same way (a zero border would dim the rows near the edges).
    mask = np.zeros((64, 96), np.float32)
    mask[:, :10] = 1.0
    result = soft_inpaint_map(mask, 8.0)
    np.testing.assert_array_equal(result, np.broadcast_to(result[32], result.shape))
    assert 0.0 < result[0, 14] < 1.0 and result[0, 9] == 1.0

def test_soft_inpaint_empty_and_full_masks():
    assert not soft_inpaint_map(np.zeros((32, 32), np.float32), 10.0).any()
    assert np.all(soft_inpaint_map(np.ones((32, 32), np.float32), 10.0) == 1.0)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_soft_inpaint_rejects_bad_softness(bad):
    with pytest.raises(ValueError, match="softness_px"):
        soft_inpaint_map(square_mask(), bad)


# -- strength fan ----------------------------------------------------------------------------------
def test_fan_strengths_even_spacing_and_ends():
    assert fan_strengths(5, 0.2, 1.0) == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert fan_strengths(4, 0.0, 0.3) == [0.0, 0.1, 0.2, 0.3]
    assert fan_strengths(1, 0.2, 0.9) == [0.9]
    assert fan_strengths(3, 0.5, 0.5) == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("args, reason", [
    ((0, 0.2, 1.0), "at least one column"),
    ((True, 0.2, 1.0), "at least one column"),
    ((3, -0.1, 1.0), r"\[0, 1\]"),
    ((3, 0.2, 1.5), r"\[0, 1\]"),
    ((3, 0.8, 0.2), "upside down"),
])
def test_fan_strengths_rejects_bad_input(args, reason):
    with pytest.raises(ValueError, match=reason):
        fan_strengths(*args)


@pytest.mark.parametrize("width, count", [(512, 4), (512, 3), (100, 3), (64, 8), (30, 7), (7, 7),
                                          (1000, 16), (513, 5)])
def test_fan_columns_tile_the_width(width, count):
    spans = fan_columns(width, count)
    assert len(spans) == count
    assert spans[0][0] == 0 and spans[-1][1] == width
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))  # no gap, no overlap
    widths = [x1 - x0 for x0, x1 in spans]
    assert min(widths) >= 1
    if width >= LATENT_CELL_PX * count:
        # Inner edges on the latent grid (the cell nearest the equal split), every column at
        # least one cell wide.
        assert all(x0 % LATENT_CELL_PX == 0 for x0, _ in spans)
        assert all(abs(x0 - j * width / count) <= LATENT_CELL_PX / 2 + 1
                   for j, (x0, _) in enumerate(spans))
        assert min(widths) >= LATENT_CELL_PX
    else:
        assert max(widths) - min(widths) <= 1  # plain equal split


def test_fan_columns_accept_numpy_integers():
    assert fan_columns(np.int64(64), np.int32(4)) == fan_columns(64, 4)


@pytest.mark.parametrize("width, count", [(3, 4), (0, 1)])
def test_fan_columns_rejects_too_narrow(width, count):
    with pytest.raises(ValueError, match="do not fit"):
        fan_columns(width, count)


@pytest.mark.parametrize("width, height, count", [(512, 40, 4), (100, 9, 3), (30, 5, 7)])
def test_fan_map_columns_are_the_shared_spans(width, height, count):
    strengths = fan_strengths(count, 0.1, 0.9)
    values = fan_map(width, height, strengths)
    assert values.shape == (height, width) and values.dtype == np.float32
    for (x0, x1), strength in zip(fan_columns(width, count), strengths, strict=True):
        assert np.all(values[:, x0:x1] == np.float32(strength))
    # One definition of the boundaries: the server's builder uses shared.fan's, not a copy.
    assert maps.fan_columns is fan.fan_columns


def test_fan_map_is_uniform_per_latent_cell_when_aligned():
    values = fan_map(512, 64, fan_strengths(3, 0.2, 1.0))  # 512 / 3 is not a multiple of 8
    cells = values.reshape(8, 8, 64, 8).transpose(0, 2, 1, 3).reshape(8, 64, 64)
    assert np.all(cells.min(axis=-1) == cells.max(axis=-1))  # each 8 x 8 cell has one strength


@pytest.mark.parametrize("strengths, reason", [([], "at least one"), ([0.2, 1.2], r"\[0, 1\]"),
                                               ([-0.1], r"\[0, 1\]")])
def test_fan_map_rejects_bad_strengths(strengths, reason):
    with pytest.raises(ValueError, match=reason):
        fan_map(64, 64, strengths)


def test_fan_map_rejects_bad_size():
    with pytest.raises(ValueError, match="pixels high"):
        fan_map(64, 0, [0.5])
    with pytest.raises(ValueError, match="do not fit"):
        fan_map(2, 8, [0.1, 0.2, 0.3])


# -- to_change_map ----------------------------------------------------------------------------------
def test_float_map_of_the_right_size_passes_through():
    values = np.random.RandomState(0).rand(24, 40).astype(np.float32)
    out = to_change_map(values, (40, 24))
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, values)


@pytest.mark.parametrize("given, expected", [
    (np.array([[0, 51, 255]], np.uint8), [0.0, 0.2, 1.0]),
    (np.array([[0, 65535]], np.uint16), [0.0, 1.0]),
    (np.array([[False, True]]), [0.0, 1.0]),
    (np.array([[0.0, 0.25]], np.float64), [0.0, 0.25]),
    (np.array([[[0.0], [0.5]]], np.float32), [0.0, 0.5]),  # H x W x 1
    (Image.fromarray(np.array([[0, 51, 255]], np.uint8)), [0.0, 0.2, 1.0]),
    (Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1"), [0.0, 1.0]),
    (Image.fromarray(np.array([[0.0, 0.75]], np.float32), mode="F"), [0.0, 0.75]),
    (Image.fromarray(np.array([[0, 255, 65535]], np.uint16)), [0.0, 255 / 65535, 1.0]),  # I;16
    (Image.fromarray(np.array([[0, 200]], np.uint16)), [0.0, 200 / 65535]),  # dark, still 16-bit
    (Image.fromarray(np.array([[0, 51, 255]], np.int32)), [0.0, 0.2, 1.0]),  # I with 8-bit data
    (Image.fromarray(np.array([[0, 255, 65535]], np.int32)), [0.0, 255 / 65535, 1.0]),  # I with 16-bit data
])
def test_map_kinds_become_unit_floats(given, expected):
    width = len(expected)
    out = to_change_map(given, (width, 1))
    np.testing.assert_allclose(out[0], expected, atol=1e-6)


def test_rgb_maps_use_luminance_like_pil():
    rgb = np.random.RandomState(1).randint(0, 256, (16, 16, 3)).astype(np.uint8)
    luma = np.asarray(Image.fromarray(rgb).convert("L"), np.float32) / 255.0
    for given in (rgb, Image.fromarray(rgb), rgb.astype(np.float32) / 255.0):
        np.testing.assert_allclose(to_change_map(given, (16, 16)), luma, atol=1 / 255 + 1e-6)
    rgba = np.concatenate([rgb, np.zeros((16, 16, 1), np.uint8)], axis=-1)  # alpha is ignored
    np.testing.assert_array_equal(to_change_map(rgba, (16, 16)), to_change_map(rgb, (16, 16)))
    np.testing.assert_array_equal(to_change_map(Image.fromarray(rgba, "RGBA"), (16, 16)),
                                  to_change_map(Image.fromarray(rgb), (16, 16)))
    # Pure colours: green is brightest, blue darkest (ITU-R 601 weights).
    pure = np.eye(3, dtype=np.float32)[None]  # 1 x 3 x 3: red, green, blue pixels
    np.testing.assert_allclose(to_change_map(pure, (3, 1))[0], [0.299, 0.587, 0.114], atol=1e-6)


def test_maps_of_another_size_are_resized_to_the_image():
    small = np.zeros((8, 8), np.float32)
    small[:, 4:] = 1.0
    out = to_change_map(small, (64, 32))
    assert out.shape == (32, 64) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.all(out[:, :24] == 0.0) and np.all(out[:, 40:] == 1.0)  # far from the edge: exact
    assert np.all(np.diff(out[0]) >= 0)  # bilinear: a ramp at the edge, no overshoot
    assert 0.0 < out[0, 32] < 1.0
    constant = to_change_map(np.full((5, 7), 0.3, np.float32), (61, 45))
    np.testing.assert_allclose(constant, 0.3, atol=1e-6)
    pil = to_change_map(Image.new("L", (10, 10), 255), (33, 17))
    assert pil.shape == (17, 33) and np.all(pil == 1.0)


@pytest.mark.parametrize("bad, reason", [
    (np.array([[0.2, np.nan]], np.float32), "NaN"),
    (np.array([[0.2, np.inf]], np.float32), "infinite"),
    (np.zeros((0, 8), np.float32), "empty"),
    (np.zeros((8, 0, 3), np.uint8), "empty"),
    (Image.new("L", (0, 4)), "empty"),
    (np.zeros((8,), np.float32), "shape"),
    (np.zeros((2, 8, 8), np.float32), "shape"),
    (np.zeros((8, 8, 2), np.float32), "shape"),
    (np.zeros((1, 8, 8, 1), np.float32), "shape"),
    (np.full((4, 4), 1.01, np.float32), r"\[0, 1\]"),
    (np.full((4, 4), -0.5, np.float32), r"\[0, 1\]"),
    (np.array([[0, 255]], np.int64), r"\[0, 1\]"),  # 0..255 only as uint8
    (np.array([["a", "b"]]), "numbers"),
    ([[0.1, 0.2], [0.3]], "not an image or array|numbers"),
    (None, "numbers"),
])
def test_bad_maps_raise_clear_value_errors(bad, reason):
    with pytest.raises(ValueError, match=reason):
        to_change_map(bad, (8, 8))


@pytest.mark.parametrize("size", [(0, 8), (8, 0)])
def test_empty_target_size_is_refused(size):
    with pytest.raises(ValueError, match="empty image"):
        to_change_map(np.zeros((8, 8), np.float32), size)
