"""A big canvas with a small edit: the map layer's rows that are opaque black ('Create Change Map
layer') or fully transparent are 0 without converting them, so only the painted rows are converted
(issue 15: bench/big_canvas.py found the whole-canvas conversion was 0.6 s of a 4096 px click).
The map sent must be the one the whole conversion gives."""

from __future__ import annotations

import numpy as np
import pytest
from plugin_fakes import FakeCanvas, qapp
from test_plugin_controller import make, picture

import krita_plugin.images as images
from krita_plugin.jobs import changed_columns, changed_rows, crop_gray, nonzero_box, painted_rows
from shared.regions import context_crop

W, H = 48, 32


@pytest.fixture(autouse=True)
def _app():
    qapp()


def map_layer(kind: str) -> np.ndarray:
    layer = np.zeros((H, W, 4), np.uint8)
    if kind == "black":  # as 'Create Change Map layer' fills it
        layer[..., 3] = 255
    layer[10:14, 20:30] = (255, 255, 255, 255)
    layer[17, 5] = (0, 0, 255, 255)  # one red pixel: luminance 87
    layer[19, 0:8] = (0, 0, 0, 0)  # a mixed row (black and transparent): converted, still 0
    return layer


@pytest.mark.parametrize("kind", ["black", "transparent"])
def test_only_the_painted_rows_are_converted_and_the_map_is_the_same(monkeypatch, kind):
    layer = map_layer(kind)
    converted = []
    convert = images.change_map_from_bgra

    def recording(bgra, width, height):
        converted.append((width, height))
        return convert(bgra, width, height)

    whole = convert(layer.tobytes(), W, H)  # what the whole conversion gives, before the patch
    monkeypatch.setattr(images, "change_map_from_bgra", recording)
    canvas = FakeCanvas(picture())
    canvas.add_painter_layer("Change Map", layer)
    c, client, _, notices = make(canvas, mode="change_map")
    assert c.generate(), notices
    got = client.received()
    box = nonzero_box(whole, W, H)
    assert (box.x, box.y, box.width, box.height) == (5, 10, 25, 8)
    assert converted == [(25, 10) if kind == "black" else (25, 8)]  # the painted box only
    crop = context_crop(box, (W, H), client.session.capabilities.native_resolution)
    assert got.map_gray8 == crop_gray(whole, W, crop)


def test_changed_rows_finds_the_band_or_none():
    assert changed_rows(map_layer("black").tobytes(), W, H) == (10, 20)
    assert changed_rows(map_layer("transparent").tobytes(), W, H) == (10, 18)
    empty = np.zeros((H, W, 4), np.uint8)
    assert changed_rows(empty.tobytes(), W, H) == (0, 0)
    empty[..., 3] = 255
    assert changed_rows(empty.tobytes(), W, H) == (0, 0)
    empty[H - 1, W - 1] = (1, 0, 0, 255)
    assert changed_rows(empty.tobytes(), W, H) == (H - 1, H)


def test_changed_columns_finds_the_painted_columns_of_those_rows():
    black = map_layer("black").tobytes()
    assert changed_columns(black, W, 10, 20) == (5, 30)  # row 19: a plain prefix, a plain suffix
    assert changed_columns(black, W, 10, 18) == (5, 30)
    assert changed_columns(map_layer("transparent").tobytes(), W, 10, 18) == (5, 30)
    assert changed_columns(black, W, 0, 0) == (W, W)  # no rows: nothing
    full = np.full((1, W, 4), 200, np.uint8).tobytes()
    assert changed_columns(full, W, 0, 1) == (0, W)


@pytest.mark.parametrize("rows", [1, 3, 7, H])
def test_painted_rows_keeps_only_the_rows_between_the_first_and_last_paint(rows):
    layer = map_layer("black")
    data = layer.tobytes()
    bands = [(y, layer[y:y + rows].tobytes()) for y in range(0, H, rows)]
    stride = W * 4
    assert painted_rows(bands, W) == (10, 20, data[10 * stride:20 * stride])
    assert painted_rows([(y, bytes(len(b))) for y, b in bands], W) == (0, 0, b"")
