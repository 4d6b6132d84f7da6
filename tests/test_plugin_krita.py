"""The plugin inside the real Krita 5 (kritarunner, offscreen): canvas -> job request, soft
inpaint maps, previews and results as layers, the painter's layers left byte-identical.

Expectations are computed here, outside Krita, from the pixels the test itself put in.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared import protocol

_spec = importlib.util.spec_from_file_location("krita_harness", Path(__file__).parent / "krita" / "harness.py")
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)

pytestmark = [
    pytest.mark.krita,
    pytest.mark.skipif(not harness.krita_available(), reason="kritarunner (Krita 5) is not installed"),
]

W, H = 64, 48


@pytest.fixture(scope="module")
def krita_home(tmp_path_factory) -> Path:
    # One profile for the module: Krita builds its resource database once (~15 s), then ~2 s a run.
    return tmp_path_factory.mktemp("krita-home")


@pytest.fixture
def io_dirs(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    return tmp_path / "in", tmp_path / "out"


def run(function: str, args: dict, home: Path, io_dirs) -> object:
    in_dir, out_dir = io_dirs
    return harness.run_in_krita("plugin_checks", function, {**args, "in_dir": str(in_dir), "out_dir": str(out_dir)},
                                home=home)


def picture(seed: int = 0) -> np.ndarray:
    """An opaque noisy picture, H x W x 4, in Krita's BGRA order."""
    rng = np.random.default_rng(seed)
    bgra = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    bgra[..., 3] = 255
    return bgra


def map_layer() -> np.ndarray:
    """Stripes a painter could paint on the map layer (BGRA): white, grey, red, half-transparent
    white, and fully transparent *white* (which must still read as keep)."""
    layer = np.zeros((H, W, 4), dtype=np.uint8)
    layer[:, 0:12] = (255, 255, 255, 255)
    layer[:, 12:20] = (128, 128, 128, 255)
    layer[:, 20:28] = (0, 0, 255, 255)  # red
    layer[:, 28:36] = (255, 255, 255, 128)
    layer[:, 36:] = (255, 255, 255, 0)
    layer[40:, :] = (0, 0, 0, 255)  # black band at the bottom: keep
    return layer


def expected_map(layer_bgra: np.ndarray) -> np.ndarray:
    """Luminance of the layer composited over black (Qt's qGray weights 11/16/5 of 32)."""
    a = layer_bgra[..., 3].astype(np.int64)
    b, g, r = (layer_bgra[..., i].astype(np.int64) * a / 255.0 for i in range(3))
    return (r * 11 + g * 16 + b * 5) / 32


def png_rgba(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


def bgra_to_rgba(bgra: np.ndarray) -> np.ndarray:
    return bgra[..., [2, 1, 0, 3]]


def rgba_png(rgba: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, "PNG")
    return out.getvalue()


def test_map_layer_becomes_the_job_request(krita_home, io_dirs):
    in_dir, out_dir = io_dirs
    pic, layer = picture(), map_layer()
    (in_dir / "picture.bgra").write_bytes(pic.tobytes())
    (in_dir / "map_layer.bgra").write_bytes(layer.tobytes())

    result = run("job_from_map_layer", {"width": W, "height": H}, krita_home, io_dirs)

    message = result["message"]
    assert message["type"] == "submit" and message["mode"] == "change_map"
    assert (message["width"], message["height"], message["ref"]) == (W, H, 5)
    assert (message["prompt"], message["steps"], message["guidance"]) == ("a red barn", 12, 5.0)
    assert (message["seed"], message["variants"]) == (77, 2)
    assert "region" not in message  # whole canvas
    assert result["image_frame"] == [protocol.FRAME_IMAGE_PNG, 5, W, H]
    assert result["map_frame"] == [protocol.FRAME_MAP_GRAY8, 5, W, H]

    # The picture sent is the Background, not the white map layer painted over it.
    sent = np.frombuffer((out_dir / "sent_image.bgra").read_bytes(), np.uint8).reshape(H, W, 4)
    np.testing.assert_array_equal(sent, pic)

    sent_map = np.frombuffer((out_dir / "sent_map.gray").read_bytes(), np.uint8).reshape(H, W).astype(int)
    want = expected_map(layer)
    assert np.abs(sent_map - want).max() <= 1
    assert (sent_map[:40, 0:12] == 255).all() and (sent_map[40:] == 0).all()
    assert (sent_map[:40, 36:] == 0).all()  # transparent white counts as keep
    assert abs(sent_map[0, 30] - 128) <= 1  # half-transparent white: half change
    assert result["unchanged"] and result["layers"] == 2


def test_selection_region_is_sent_as_the_job_region(krita_home, io_dirs):
    in_dir, _ = io_dirs
    (in_dir / "picture.bgra").write_bytes(picture().tobytes())
    (in_dir / "map_layer.bgra").write_bytes(map_layer().tobytes())
    result = run("job_from_map_layer", {"width": W, "height": H, "region": "selection",
                                        "selection": [4, 6, 30, 20]}, krita_home, io_dirs)
    assert result["message"]["region"] == {"x": 4, "y": 6, "width": 30, "height": 20}
    # The image and the map still cover the whole canvas: the server takes context around the region.
    assert result["image_frame"][2:] == [W, H]


def test_soft_inpaint_selection_becomes_a_blurred_map(krita_home, io_dirs):
    in_dir, out_dir = io_dirs
    w, h = 128, 64
    rng = np.random.default_rng(1)
    pic = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    pic[..., 3] = 255
    (in_dir / "picture.bgra").write_bytes(pic.tobytes())
    x, y, sw, sh = 40, 16, 48, 32
    softness = 8

    result = run("soft_inpaint_map", {"width": w, "height": h, "selection": [x, y, sw, sh], "softness": softness},
                 krita_home, io_dirs)

    assert result["message"]["mode"] == "change_map"  # the map is already soft: Krita feathered it
    assert result["selection_after"] == [x, y, sw, sh]  # the painter's selection is untouched
    soft = np.frombuffer((out_dir / "soft_map.gray").read_bytes(), np.uint8).reshape(h, w).astype(int)
    row = soft[y + sh // 2]
    center = x + sw // 2
    assert row[center] == 255 and soft[y + sh // 2, x + sw // 2 - 10] == 255  # 1 inside
    assert (row[: x - 3 * softness] == 0).all() and (row[x + sw + 3 * softness:] == 0).all()  # 0 far outside
    assert (soft[: y - 3 * softness] == 0).all() if y - 3 * softness > 0 else True
    left, right = row[: center + 1], row[center:]
    assert (np.diff(left) >= 0).all() and (np.diff(right) <= 0).all()  # monotone fall-off across each edge
    soft_edge = row[x - 2 * softness: x + 2 * softness]
    assert ((soft_edge > 0) & (soft_edge < 255)).sum() >= softness  # blurred, not a hard mask
    assert 40 <= row[x] <= 215  # the edge itself is half-way, roughly


def test_soft_inpaint_region_covers_the_feathered_edge(krita_home, io_dirs):
    in_dir, _ = io_dirs
    w, h = 128, 64
    (in_dir / "picture.bgra").write_bytes(np.full((h, w, 4), 200, np.uint8).tobytes())
    result = run("soft_inpaint_map", {"width": w, "height": h, "selection": [40, 16, 48, 32], "softness": 8,
                                      "region": "selection"}, krita_home, io_dirs)
    region = result["message"]["region"]
    assert region["x"] < 40 and region["x"] + region["width"] > 88  # wider than the hard selection
    assert region["y"] <= 16 and region["y"] + region["height"] >= 48


def test_previews_rewrite_one_layer_and_the_result_adds_exactly_one(krita_home, io_dirs):
    in_dir, out_dir = io_dirs
    pic = picture(2)
    ink = np.zeros((H, W, 4), np.uint8)
    ink[10:20, 10:50] = (20, 200, 30, 255)
    (in_dir / "picture.bgra").write_bytes(pic.tobytes())
    (in_dir / "ink.bgra").write_bytes(ink.tobytes())
    (in_dir / "map_layer.bgra").write_bytes(map_layer().tobytes())
    rx, ry, rw, rh = 8, 4, 32, 24
    rng = np.random.default_rng(3)
    preview1 = rng.integers(0, 256, (rh, rw, 4), dtype=np.uint8)
    preview1[..., 3] = 255
    preview2 = np.zeros((rh // 2, rw // 2, 4), np.uint8)
    preview2[:] = (250, 10, 90, 255)  # a solid colour: it must fill the whole region once scaled up
    result_rgba = rng.integers(0, 256, (rh, rw, 4), dtype=np.uint8)
    result_rgba[..., 3] = 255
    (in_dir / "preview1.png").write_bytes(rgba_png(preview1))
    (in_dir / "preview2.png").write_bytes(rgba_png(preview2))
    (in_dir / "result.png").write_bytes(rgba_png(result_rgba))

    r = run("preview_then_result", {"width": W, "height": H, "region": [rx, ry, rw, rh]}, krita_home, io_dirs)

    assert r["notices"][-1][0] == "info", r["notices"]
    assert r["sent"]["mode"] == "change_map" and r["sent"]["seed"] == 40
    n_before = len(r["before"])
    # Previews: one layer, created once, then rewritten in place.
    (s1, s2) = r["snapshots"]
    assert s1["layers"] == s2["layers"] == n_before + 1
    assert len(s1["previews"]) == len(s2["previews"]) == 1
    assert s1["previews"][0]["id"] == s2["previews"][0]["id"]
    for i, want in ((1, preview1), (2, None)):
        layer = np.frombuffer((out_dir / f"preview_layer{i}.bgra").read_bytes(), np.uint8).reshape(H, W, 4)
        inside = bgra_to_rgba(layer[ry:ry + rh, rx:rx + rw])
        if want is not None:
            np.testing.assert_array_equal(inside, want)
        else:
            assert (inside == (250, 10, 90, 255)).all()
        outside = layer.copy()
        outside[ry:ry + rh, rx:rx + rw] = 0
        assert not outside.any()  # transparent outside the region: the picture shows through

    # The result: exactly one new layer, on top, named after prompt and seed; the preview is gone.
    assert len(r["after"]) == n_before + 1
    assert len(r["new"]) == 1
    (new_key, new), = r["new"].items()
    assert "storm clouds · seed 40" in new_key and new["type"] == "paintlayer"
    assert r["order"][-1].startswith("storm clouds · seed 40")
    assert not any("preview" in k for k in r["after"])
    layer = np.frombuffer((out_dir / "result_layer.bgra").read_bytes(), np.uint8).reshape(H, W, 4)
    np.testing.assert_array_equal(bgra_to_rgba(layer[ry:ry + rh, rx:rx + rw]), result_rgba)
    outside = layer.copy()
    outside[ry:ry + rh, rx:rx + rw] = 0
    assert not outside.any()

    # Every layer the painter had is byte-identical (pixels, visibility, opacity, identity).
    for key, value in r["before"].items():
        assert r["after"][key] == value
    assert r["history"] == [["storm clouds · seed 40", 40]]
    assert r["after_discard"] == r["before"]  # discarding removes only the plugin's layer
    assert r["jobs_left"] == 0


def test_create_change_map_layer(krita_home, io_dirs):
    in_dir, _ = io_dirs
    (in_dir / "picture.bgra").write_bytes(picture().tobytes())
    r = run("create_map_layer", {"width": W, "height": H}, krita_home, io_dirs)
    assert r["name"] == "Change Map" and r["type"] == "paintlayer" and r["all_black_opaque"]
    assert len(r["after"]) == len(r["before"]) + 1
    for key, value in r["before"].items():
        assert r["after"][key] == value


@pytest.mark.parametrize("model,depth", [("RGBA", "U16"), ("GRAYA", "U8"), ("RGBA", "F32")])
def test_documents_that_are_not_rgba8_are_converted_not_crashed(krita_home, io_dirs, model, depth):
    r = run("deep_document", {"width": 16, "height": 16, "model": model, "depth": depth}, krita_home, io_dirs)
    assert r["doc"] == [model, depth]
    assert r["notes"] and "8-bit" in r["notes"][0]
    assert r["image_len"] == 16 * 16 * 4
    assert r["message"]["mode"] == "uniform" and r["message"]["strength"] == 0.5
    assert r["result_cs"] == ["RGBA", "U8"] and r["result_px"] == [10, 20, 30, 255]
    assert r["before_same"]


def test_harness_reports_failures_inside_krita(krita_home, tmp_path):
    with pytest.raises(harness.KritaError, match="ZeroDivisionError"):
        harness.run_in_krita("plugin_checks_failing", "fails", {}, home=krita_home,
                             pythonpath=[_write_failing(tmp_path), harness.HERE])


def _write_failing(tmp_path: Path) -> Path:
    (tmp_path / "plugin_checks_failing.py").write_text(
        "from kscript import entry\n\n@entry\ndef fails(args):\n    return 1 / 0\n")
    return tmp_path
