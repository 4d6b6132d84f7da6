"""The plugin inside the real Krita 5 (kritarunner, offscreen): canvas -> job request, soft
inpaint maps, previews and results as layers, the painter's layers left byte-identical.

Expectations are computed here, outside Krita, from the pixels the test itself put in.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from krita_support import KRITA_MARKS, harness
from shared import protocol
from shared.fan import fan_strengths

pytestmark = KRITA_MARKS

W, H = 64, 48


@pytest.fixture(scope="module")
def krita_home(tmp_path_factory) -> Path:
    # One profile for the module: Krita builds its resource database once (~15 s), then ~2 s a run.
    return tmp_path_factory.mktemp("krita-home")


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


def ink_layer() -> np.ndarray:
    ink = np.zeros((H, W, 4), np.uint8)
    ink[10:30, 5:40] = (20, 200, 30, 255)
    ink[30:40, 20:60] = (200, 40, 40, 128)  # half-transparent: composited in the projection
    return ink


def random_rgba(h: int, w: int, seed: int) -> np.ndarray:
    rgba = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    return rgba


SOFT_W, SOFT_H = 128, 64
SOFT_SEL, SOFTNESS = (40, 16, 48, 32), 8
PREVIEW_REGION = (8, 4, 32, 24)
FAN = {"columns": 4, "low": 0.2, "high": 0.8}
SEL = (8, 6, 40, 30)
DEEP = [("RGBA", "U16"), ("GRAYA", "U8"), ("RGBA", "F32")]
SETTINGS = {"server_url": "ws://127.0.0.1:7999", "token": "tok", "prompt": "two\nlines · ü", "steps": 13,
            "guidance": 6.5, "seed": 99, "random_seed": False, "variants": 3, "mode": "soft_inpaint",
            "map_layer": "Mask A", "softness_px": 12, "grow_px": -3, "fan_columns": 5, "fan_low": 0.15,
            "fan_high": 0.95, "strength": 0.4, "source": "active_layer", "region": "selection",
            "scheduler": "Euler a", "model": "tiny-sd", "negative_prompt": "blurry"}


def preview_images() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two previews (the second downscaled, one solid colour) and the result, RGBA."""
    _, _, rw, rh = PREVIEW_REGION
    preview1 = random_rgba(rh, rw, 3)
    preview2 = np.zeros((rh // 2, rw // 2, 4), np.uint8)
    preview2[:] = (250, 10, 90, 255)  # a solid colour: it must fill the whole region once scaled up
    return preview1, preview2, random_rgba(rh, rw, 4)


@pytest.fixture(scope="module")
def batch(krita_home, tmp_path_factory):
    """Every check below in ONE Krita start (plugin_checks.batch); each test reads its own part.

    Each check gets its own input files (written here) and output folder."""
    checks = {}

    def add(name: str, function: str, files: dict[str, bytes], **args):
        base = tmp_path_factory.mktemp(name)
        (base / "in").mkdir()
        (base / "out").mkdir()
        for file, data in files.items():
            (base / "in" / file).write_bytes(data)
        checks[name] = (function, {"width": W, "height": H, **args, "in_dir": str(base / "in"),
                                   "out_dir": str(base / "out")}, base / "out")

    map_files = {"picture.bgra": picture().tobytes(), "map_layer.bgra": map_layer().tobytes()}
    add("map", "job_from_map_layer", map_files)
    add("map_sel", "job_from_map_layer", map_files, region="selection", selection=[4, 6, 30, 20])
    soft_files = {"picture.bgra": random_rgba(SOFT_H, SOFT_W, 1).tobytes()}
    add("soft", "soft_inpaint_map", soft_files, width=SOFT_W, height=SOFT_H, selection=list(SOFT_SEL),
        softness=SOFTNESS)
    add("soft_region", "soft_inpaint_map", soft_files, width=SOFT_W, height=SOFT_H, selection=list(SOFT_SEL),
        softness=SOFTNESS, region="selection")
    add("grow", "soft_inpaint_map", soft_files, width=SOFT_W, height=SOFT_H, selection=list(SOFT_SEL),
        softness=0, grow=6)
    preview1, preview2, result = preview_images()
    ink = np.zeros((H, W, 4), np.uint8)
    ink[10:20, 10:50] = (20, 200, 30, 255)
    add("previews", "preview_then_result",
        {"picture.bgra": picture(2).tobytes(), "ink.bgra": ink.tobytes(), "map_layer.bgra": map_layer().tobytes(),
         "preview1.png": rgba_png(preview1), "preview2.png": rgba_png(preview2), "result.png": rgba_png(result)},
        region=list(PREVIEW_REGION))
    add("create_map", "create_map_layer", {"picture.bgra": picture().tobytes()})
    add("two_maps", "two_maps_and_a_preview", {"picture.bgra": picture(5).tobytes(), "ink.bgra": ink_layer().tobytes(),
                                                "map_layer.bgra": map_layer().tobytes()})
    for model, depth in DEEP:
        add(f"deep_{model}_{depth}", "deep_document", {}, width=16, height=16, model=model, depth=depth)
    common = {"picture.bgra": picture(4).tobytes(), "ink.bgra": ink_layer().tobytes()}
    add("fan", "fan_result_applied", {**common, "result.png": rgba_png(random_rgba(H, W, 7))}, **FAN,
        return_pixels=True)
    add("fan_sel", "fan_result_applied", {**common, "result.png": rgba_png(random_rgba(SEL[3], SEL[2], 8))}, **FAN,
        region="selection", selection=list(SEL))
    add("sources", "sources", {**common, "result.png": rgba_png(random_rgba(H, W, 9))})
    add("panel", "panel_create_map", common)
    add("settings", "settings_write", {}, values=SETTINGS)
    add("shrink", "soft_inpaint_map", soft_files, width=SOFT_W, height=SOFT_H, selection=list(SOFT_SEL),
        softness=0, grow=-4)

    names = list(checks)
    out = harness.run_in_krita("plugin_checks", "batch", {"checks": [list(checks[n][:2]) for n in names]},
                               home=krita_home)
    return {n: (r, checks[n][2]) for n, r in zip(names, out, strict=True)}


def part(batch, name):
    """(what the check returned, its output folder); a check that raised inside Krita fails here."""
    r, out_dir = batch[name]
    if not r["ok"]:
        pytest.fail(f"{name} failed inside Krita:\n{r['error']}")
    return r["value"], out_dir


# -- canvas -> job request ---------------------------------------------------------------------------


def test_map_layer_becomes_the_job_request(batch):
    result, out_dir = part(batch, "map")
    pic, layer = picture(), map_layer()

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



def test_the_topmost_map_layer_is_the_map_and_the_preview_is_not_in_the_picture(batch):
    r, out_dir = part(batch, "two_maps")
    assert r["unchanged"] and r["layers"] == 4
    sent_map = np.frombuffer((out_dir / "sent_map.gray").read_bytes(), np.uint8).reshape(H, W).astype(int)
    assert np.abs(sent_map - expected_map(map_layer())).max() <= 1  # the top 'Change Map', not the lower one
    # The picture: the lower 'Change Map' (a painter's layer) over the Background; no top map, no preview.
    pic, ink = picture(5).astype(float), ink_layer()
    a = ink[..., 3:4] / 255.0
    want = ink[..., :3] * a + pic[..., :3] * (1 - a)
    sent = np.frombuffer((out_dir / "sent_image.bgra").read_bytes(), np.uint8).reshape(H, W, 4)
    assert np.abs(sent[..., :3].astype(float) - want).max() <= 1.5 and (sent[..., 3] == 255).all()

def test_selection_region_is_sent_as_the_job_region(batch):
    result, _ = part(batch, "map_sel")
    assert result["message"]["region"] == {"x": 4, "y": 6, "width": 30, "height": 20}
    # The image and the map still cover the whole canvas: the server takes context around the region.
    assert result["image_frame"][2:] == [W, H]


def test_soft_inpaint_selection_becomes_a_blurred_map(batch):
    result, out_dir = part(batch, "soft")
    w, h = SOFT_W, SOFT_H
    x, y, sw, sh = SOFT_SEL
    softness = SOFTNESS

    assert result["message"]["mode"] == "change_map"  # the map is already soft: Krita feathered it
    assert result["selection_after"] == [x, y, sw, sh]  # the painter's selection is untouched
    soft = np.frombuffer((out_dir / "soft_map.gray").read_bytes(), np.uint8).reshape(h, w).astype(int)
    row = soft[y + sh // 2]
    center = x + sw // 2
    assert row[center] == 255 and soft[y + sh // 2, x + sw // 2 - 10] == 255  # 1 inside
    assert (row[: x - 3 * softness] == 0).all() and (row[x + sw + 3 * softness:] == 0).all()  # 0 far outside
    left, right = row[: center + 1], row[center:]
    assert (np.diff(left) >= 0).all() and (np.diff(right) <= 0).all()  # monotone fall-off across each edge
    # Vertically too (the selection is 16 px from the top and bottom: 0 on the canvas's first and last rows),
    # with the same feather across the top and bottom edges as across the left one.
    col = soft[:, center]
    assert col[0] == 0 and col[-1] == 0 and col[y + sh // 2] == 255
    top, bottom = col[: y + sh // 2 + 1], col[y + sh // 2:]
    assert (np.diff(top) >= 0).all() and (np.diff(bottom) <= 0).all()
    np.testing.assert_array_equal(col[y - softness:y + softness], row[x - softness:x + softness])
    np.testing.assert_array_equal(col[y + sh - softness:y + sh + softness], row[x + sw - softness:x + sw + softness])
    soft_edge = row[x - 2 * softness: x + 2 * softness]
    assert ((soft_edge > 0) & (soft_edge < 255)).sum() >= softness  # blurred, not a hard mask
    assert 40 <= row[x] <= 215  # the edge itself is half-way, roughly


def test_soft_inpaint_region_covers_the_feathered_edge(batch):
    result, _ = part(batch, "soft_region")
    region = result["message"]["region"]
    assert region["x"] < 40 and region["x"] + region["width"] > 88  # wider than the hard selection
    assert region["y"] <= 16 and region["y"] + region["height"] >= 48


def test_soft_inpaint_negative_grow_uses_krita_shrink(batch):
    r, out_dir = part(batch, "shrink")
    soft = np.frombuffer((out_dir / "soft_map.gray").read_bytes(), np.uint8).reshape(SOFT_H, SOFT_W)
    ys, xs = np.nonzero(soft)
    # 48x32 at (40, 16) shrunk by 4: x in [44, 84), y in [20, 44).
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (44, 84, 20, 44)
    assert (soft[20:44, 44:84] == 255).all()


def test_settings_persist_between_krita_sessions(batch, krita_home):
    r, _ = part(batch, "settings")
    assert r["same_session"]
    # A second Krita session in the same profile loads what the first one saved.
    (later,) = harness.run_in_krita("plugin_checks", "batch", {"checks": [["settings_read", {}]]}, home=krita_home)
    assert later["ok"], later.get("error")
    for key, value in SETTINGS.items():
        assert later["value"][key] == value, key


def test_soft_inpaint_grow_uses_krita_grow(batch):
    r, out_dir = part(batch, "grow")
    soft = np.frombuffer((out_dir / "soft_map.gray").read_bytes(), np.uint8).reshape(SOFT_H, SOFT_W)
    row, col = soft[32], soft[:, 64]
    # 48x32 at (40, 16) grown by 6: x in [34, 94), y in [10, 54); hard edges (softness 0).
    assert (row[35:93] == 255).all() and (row[:33] == 0).all() and (row[95:] == 0).all()
    assert (col[11:53] == 255).all() and (col[:9] == 0).all() and (col[55:] == 0).all()
    assert r["selection_after"] == list(SOFT_SEL)


def test_source_is_the_active_layer_or_the_visible_picture(batch):
    r, out_dir = part(batch, "sources")
    assert r["source_is_ink"] and r["source2"] is None
    active = np.frombuffer((out_dir / "active.bgra").read_bytes(), np.uint8).reshape(H, W, 4)
    ink = ink_layer()
    opaque = ink[..., 3] == 255
    np.testing.assert_array_equal(active[opaque], ink[opaque])  # that layer alone, not the Background
    assert (active[ink[..., 3] == 0][..., 3] == 0).all()
    # The visible picture: Ink composited over the Background; the hidden layer left out.
    pic = picture(4).astype(float)
    a = ink[..., 3:4] / 255.0
    want = ink[..., :3] * a + pic[..., :3] * (1 - a)
    projection = np.frombuffer((out_dir / "projection.bgra").read_bytes(), np.uint8).reshape(H, W, 4)
    assert np.abs(projection[..., :3].astype(float) - want).max() <= 1.5
    assert (projection[..., 3] == 255).all()
    # The result went right above the source layer, below the painter's other layers.
    assert r["names"] == ["Background", "Ink", "ink · seed 3 · strength 0.50", "Notes"]
    after_by_id = {v["id"]: v for v in r["after"].values()}
    assert all(after_by_id[v["id"]] == v for v in r["before"].values())  # by identity: indices moved up


# -- results as layers ---------------------------------------------------------------------------------


def test_previews_rewrite_one_layer_and_the_result_adds_exactly_one(batch):
    r, out_dir = part(batch, "previews")
    rx, ry, rw, rh = PREVIEW_REGION
    preview1, _, result_rgba = preview_images()

    assert r["notices"][-1][0] == "info", r["notices"]
    assert r["sent"]["mode"] == "change_map" and r["sent"]["seed"] == 40
    n_before = len(r["before"])
    # Previews: one layer, created once, then rewritten in place.
    (s1, s2) = r["snapshots"]
    assert s1["layers"] == s2["layers"] == n_before + 1
    assert len(s1["previews"]) == len(s2["previews"]) == 1
    assert s1["previews"][0]["id"] == s2["previews"][0]["id"]
    # Where the map keeps the picture (0) the plugin's layers are transparent: they show only what changes.
    changes = (expected_map(map_layer()) > 0.5)[ry:ry + rh, rx:rx + rw, None]
    for i, want in ((1, preview1), (2, None)):
        layer = np.frombuffer((out_dir / f"preview_layer{i}.bgra").read_bytes(), np.uint8).reshape(H, W, 4)
        inside = bgra_to_rgba(layer[ry:ry + rh, rx:rx + rw])
        if want is None:
            want = np.broadcast_to(np.array((250, 10, 90, 255), np.uint8), inside.shape)
        np.testing.assert_array_equal(inside, np.where(changes, want, 0))
        outside = layer.copy()
        outside[ry:ry + rh, rx:rx + rw] = 0
        assert not outside.any()  # transparent outside the region: the picture shows through

    # The result: exactly one new layer, right below the Change Map layer (whose dimming would
    # hide it), named after prompt and seed; the preview is gone.
    assert len(r["after"]) == n_before + 1
    assert len(r["new"]) == 1
    (new_key, new), = r["new"].items()
    assert "storm clouds · seed 40" in new_key and new["type"] == "paintlayer"
    assert r["order"][-2].startswith("storm clouds · seed 40") and r["order"][-1] == "Change Map"
    assert not any("preview" in k for k in r["after"])
    layer = np.frombuffer((out_dir / "result_layer.bgra").read_bytes(), np.uint8).reshape(H, W, 4)
    np.testing.assert_array_equal(bgra_to_rgba(layer[ry:ry + rh, rx:rx + rw]), np.where(changes, result_rgba, 0))
    outside = layer.copy()
    outside[ry:ry + rh, rx:rx + rw] = 0
    assert not outside.any()

    # Every layer the painter had is byte-identical (pixels, visibility, opacity, identity).
    after_by_id = {v["id"]: v for v in r["after"].values()}
    assert all(after_by_id[v["id"]] == v for v in r["before"].values())  # by identity: indices moved up
    assert r["history"] == [["storm clouds · seed 40", 40]]
    assert r["after_discard"] == r["before"]  # discarding removes only the plugin's layer
    assert r["jobs_left"] == 0


def test_fan_result_layer_is_labelled_with_each_column_strength_and_apply_adds_one_layer(batch):
    r, _ = part(batch, "fan")
    m = r["message"]
    assert m["mode"] == "fan" and m["fan"] == {"count": 4, "low": 0.2, "high": 0.8} and not r["has_map"]
    assert "region" not in m and r["state"] == "done"
    label = "fan " + " | ".join(f"{s:.2f}" for s in fan_strengths(4, 0.2, 0.8))
    assert label == "fan 0.20 | 0.40 | 0.60 | 0.80"
    assert r["names"] == ["Background", "Ink", f"dunes · seed 21 · {label}"]
    # Applied: the result is an ordinary layer now (visible, out of the list), nothing else changed.
    assert r["history_left"] == 0 and r["applied_visible"]
    assert len(r["after"]) == len(r["before"]) + 1
    for key, value in r["before"].items():
        assert r["after"][key] == value
    layer = np.frombuffer(bytes.fromhex(r["applied_pixels"]), np.uint8).reshape(H, W, 4)
    np.testing.assert_array_equal(bgra_to_rgba(layer), random_rgba(H, W, 7))


def test_fan_in_a_selection_spans_the_selection_bounds(batch):
    r, _ = part(batch, "fan_sel")
    x, y, w, h = SEL
    assert r["message"]["region"] == {"x": x, "y": y, "width": w, "height": h}
    assert r["names"][-1].endswith("fan 0.20 | 0.40 | 0.60 | 0.80")
    assert len(r["after"]) == len(r["before"]) + 1
    assert all(r["after"][k] == v for k, v in r["before"].items())


def test_create_change_map_layer(batch):
    r, _ = part(batch, "create_map")
    assert r["name"] == "Change Map" and r["type"] == "paintlayer" and r["all_black_opaque"]
    assert r["opacity"] == 128 and r["on_top"]  # half see-through, so the painter paints over the picture
    assert r["active_kept"]  # the painter's active layer is still the active one
    assert len(r["after"]) == len(r["before"]) + 1
    for key, value in r["before"].items():
        assert r["after"][key] == value


def test_create_change_map_button_in_the_panel(batch):
    r, _ = part(batch, "panel")
    assert r["count"] == 1 and r["type"] == "paintlayer" and r["all_black_opaque"]
    assert len(r["after"]) == len(r["before"]) + 1 and all(r["after"][k] == v for k, v in r["before"].items())
    assert "paint white" in r["message"] and r["submitted"] == 0


@pytest.mark.parametrize("model,depth", DEEP)
def test_documents_that_are_not_rgba8_are_converted_not_crashed(batch, model, depth):
    r, _ = part(batch, f"deep_{model}_{depth}")
    assert r["doc"] == [model, depth]
    assert r["notes"] and "8-bit" in r["notes"][0]
    assert r["image_len"] == 16 * 16 * 4
    assert r["message"]["mode"] == "uniform" and r["message"]["strength"] == 0.5
    assert r["result_cs"] == ["RGBA", "U8"] and r["result_px"] == [10, 20, 30, 255]
    assert r["before_same"]
    assert r["active_len"] == 16 * 16 * 4  # Source 'Active layer' reads a converted copy too
    assert r["map_cs"] == ["RGBA", "U8"] and r["map_rows"] == [255] * 4 + [0] * 12


# -- the harness itself ----------------------------------------------------------------------------------


def test_harness_reports_failures_inside_krita(krita_home, tmp_path):
    with pytest.raises(harness.KritaError, match="ZeroDivisionError"):
        harness.run_in_krita("plugin_checks_failing", "fails", {}, home=krita_home,
                             pythonpath=[_write_failing(tmp_path), harness.HERE])


def _write_failing(tmp_path: Path) -> Path:
    (tmp_path / "plugin_checks_failing.py").write_text(
        "from kscript import entry\n\n@entry\ndef fails(args):\n    return 1 / 0\n")
    return tmp_path
