"""Map transforms (``shared.map_transforms``) against numpy versions of the same formulas on
random maps, to the byte; and the fixed patterns (``shared.map_patterns``)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from shared import map_patterns as mp
from shared import map_transforms as mt

RNG = np.random.default_rng(14)
MAP = RNG.integers(0, 256, size=(97, 131), dtype=np.uint8)


def rounded(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def through(lut: bytes, gray: np.ndarray = MAP) -> np.ndarray:
    out = mt.apply(lut, gray.tobytes())
    return np.frombuffer(out, np.uint8).reshape(gray.shape)


@pytest.mark.parametrize("black,white", [(0, 255), (30, 200), (200, 30), (100, 101)])
def test_levels(black, white):
    x = MAP.astype(np.float64)
    assert np.array_equal(through(mt.levels(black, white)), rounded((x - black) * 255.0 / (white - black)))


def test_levels_with_one_point_is_a_threshold():
    assert np.array_equal(through(mt.levels(128, 128)), np.where(MAP < 128, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("g", [0.3, 1.0, 2.2])
def test_gamma_keeps_black_black(g):
    expected = rounded(255.0 * (MAP.astype(np.float64) / 255.0) ** (1.0 / g))
    assert np.array_equal(through(mt.gamma(g)), expected)
    assert mt.gamma(g)[0] == 0 and mt.gamma(g)[255] == 255


def test_curve_is_np_interp():
    points = [(20, 0), (128, 200), (230, 255)]
    xs, ys = zip(*points, strict=True)
    assert np.array_equal(through(mt.curve(points)), rounded(np.interp(MAP.astype(np.float64), xs, ys)))


def test_invert_posterise_clamp():
    assert np.array_equal(through(mt.invert()), 255 - MAP)
    n = 5
    expected = rounded(np.floor(MAP.astype(np.float64) * (n - 1) / 255.0 + 0.5) * 255.0 / (n - 1))
    assert np.array_equal(through(mt.posterise(n)), expected)
    assert set(np.unique(through(mt.posterise(n))).tolist()) <= {0, 64, 128, 191, 255}
    assert np.array_equal(through(mt.clamp(40, 180)), np.clip(MAP, 40, 180))


@pytest.mark.parametrize("keep_band", [True, False])
def test_focus_band(keep_band):
    center, half, feather = 150, 20, 30
    d = np.abs(MAP.astype(np.float64) - center) - half
    change = np.clip(d / feather, 0, 1) * 255.0
    expected = rounded(change if keep_band else 255.0 - change)
    assert np.array_equal(through(mt.focus_band(center, half, feather, keep_band)), expected)


def test_compose_and_the_transform_row():
    row = mt.MapTransform(black=20, white=220, band=100, band_width=30, gamma=1.8, posterise=4, low=10,
                          high=240, invert=True)
    step = MAP
    for lut in (mt.levels(20, 220), mt.focus_band(100, 30, 15), mt.gamma(1.8), mt.posterise(4),
                mt.clamp(10, 240), mt.invert()):
        step = through(lut, step)
    assert np.array_equal(through(row.lut()), step)
    assert mt.MapTransform().is_identity and not row.is_identity


@pytest.mark.parametrize("bad", [lambda: mt.gamma(0), lambda: mt.levels(-1, 3),
                                 lambda: mt.posterise(1), lambda: mt.clamp(200, 100),
                                 lambda: mt.apply(b"\0" * 10, b"abc")])
def test_bad_arguments_say_why(bad):
    with pytest.raises(ValueError):
        bad()


def test_speed_of_a_4096_square_map(record_property):
    big = RNG.integers(0, 256, size=4096 * 4096, dtype=np.uint8).tobytes()
    started = time.perf_counter()
    lut = mt.MapTransform(black=10, white=240, gamma=1.5, posterise=6, invert=True).lut()
    out = mt.apply(lut, big)
    seconds = time.perf_counter() - started
    record_property("map_transform_4096_s", round(seconds, 4))
    print(f"4096x4096 transform (table + translate): {seconds * 1000:.1f} ms")
    assert len(out) == len(big)


def test_patterns():
    g = np.frombuffer(mp.gradient(300, 7), np.uint8).reshape(7, 300)
    assert g[:, 0].tolist() == [0] * 7 and g[:, -1].tolist() == [255] * 7
    assert np.all(np.diff(g[0].astype(int)) >= 0)
    w, h = 41, 30
    r = np.frombuffer(mp.radial(w, h), np.uint8).reshape(h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = (w - 1) / 2, (h - 1) / 2
    expected = rounded(255.0 * np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / np.hypot(cx, cy))
    assert np.array_equal(r, expected)
    f = np.frombuffer(mp.fan(64, 3, 4, 0.25, 1.0), np.uint8).reshape(3, 64)
    assert sorted(set(f[0].tolist())) == [64, 128, 191, 255]
