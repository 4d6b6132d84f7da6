"""The whole chain in a real Krita: the built plugin zip installed into a fresh Krita profile, the
real server (`python -m server --model tiny-sd`) on a free loopback port, and the installed plugin
driven inside Krita 5 (kritarunner, offscreen) through a change-map job, a soft-inpaint job and a
4-column fan.

What must hold: previews appear as one plugin layer that goes away, results arrive as new layers
of the reported size, every layer the painter had is byte-identical afterwards, and wherever
the change map is 0 the result is the original picture exactly.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from krita_support import E2E_DIR, KRITA_MARKS, build_plugin, harness, live_server

pytestmark = KRITA_MARKS

W, H = 128, 96


# -- fixtures: a profile with the zip installed, a running server ------------------------------------
@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> dict:
    """A fresh HOME whose Krita profile has the plugin installed from the zip and enabled."""
    home = tmp_path_factory.mktemp("e2e-home")
    plugin_zip = build_plugin.build_zip(tmp_path_factory.mktemp("dist"))
    pykrita = home / ".local/share/krita/pykrita"
    pykrita.mkdir(parents=True)
    # What Krita's importer does with the zip: the package folder and the .desktop file into pykrita.
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(pykrita)
    build_plugin.enable_in_kritarc(home / ".config/kritarc")
    return {"home": home, "pykrita": pykrita}


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    with live_server.running_server(tmp_path_factory.mktemp("server") / "server.log") as url:
        yield url


@pytest.fixture
def io_dirs(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    return tmp_path / "in", tmp_path / "out"


def run(function: str, args: dict, profile: dict, io_dirs) -> dict:
    in_dir, out_dir = io_dirs
    # Krita's path: the e2e scripts, kscript, and the profile's pykrita; not the repository, so the
    # plugin, `shared` and `websockets` can only come from the installed zip.
    return harness.run_in_krita(
        "e2e_jobs", function, {**args, "in_dir": str(in_dir), "out_dir": str(out_dir)},
        home=profile["home"], pythonpath=[E2E_DIR, harness.HERE, profile["pykrita"]], timeout_s=400)


# -- pictures the painter made ------------------------------------------------------------------------
def picture(seed: int = 0) -> np.ndarray:
    """An opaque picture with smooth structure and some noise, H x W x 4 BGRA."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    bgra = np.empty((H, W, 4), np.uint8)
    bgra[..., 0] = 255 * x / (W - 1)
    bgra[..., 1] = 255 * y / (H - 1)
    bgra[..., 2] = np.clip(128 + 100 * np.sin((x + 2 * y) / 9.0) + rng.normal(0, 10, (H, W)), 0, 255)
    bgra[..., 3] = 255
    return bgra


def ink() -> np.ndarray:
    """Strokes on their own layer: opaque where painted, transparent elsewhere."""
    layer = np.zeros((H, W, 4), np.uint8)
    layer[70:76, 8:120] = (30, 30, 220, 255)
    layer[10:60, 100:104] = (200, 40, 40, 255)
    return layer


def over(base: np.ndarray, top: np.ndarray) -> np.ndarray:
    """`top` over an opaque `base`; exact for tops that are fully opaque or fully transparent."""
    return np.where(top[..., 3:4] == 255, top, base)


def load_layer(out_dir: Path, layer: dict) -> np.ndarray:
    return np.frombuffer((out_dir / layer["file"]).read_bytes(), np.uint8).reshape(H, W, 4)


# -- shared checks ---------------------------------------------------------------------------------
def check_common(r: dict, out_dir: Path, results: int) -> list[tuple[dict, np.ndarray]]:
    """Previews came and went, one new layer holds the job's `results` variants, the painter's
    layers are untouched. Returns each variant's pixels as its layer showed them."""
    assert not [n for n in r["notices"] if n[0] == "error"], r["notices"]
    assert r["outcome"]["state"] == "done" and not r["busy"], r["outcome"]
    events = r["events"]
    assert events.count("Result") == results and events[-1] == "Done", events

    # Previews: drawn (the newest only, a few a second), always on one layer, gone at the end.
    assert 1 <= r["outcome"]["previews"] <= events.count("Preview"), (r["outcome"], events)
    assert all(len(p["layers"]) <= 1 for p in r["previews"]), r["previews"]
    assert len({p["layers"][0]["id"] for p in r["previews"] if p["layers"]}) <= 1
    for p in r["previews"]:
        for layer in p["layers"]:
            x, y, w, h = layer["bounds"]
            if w == 0 or h == 0:
                continue  # the job's layer, made empty at submit: not drawn on yet
            rx, ry, rw, rh = p["region"]
            assert rx <= x and ry <= y and x + w <= rx + rw and y + h <= ry + rh  # only inside its region
    assert not any("preview" in name.lower() for name in r["order"])

    # The painter's layers: still there, byte-identical, same visibility and opacity.
    after_by_id = {v["id"]: v for v in r["after"].values()}
    for key, value in r["before"].items():
        assert after_by_id.get(value["id"]) == value, key
    assert len(r["after"]) == len(r["before"]) + 1

    # The results: ONE new paint layer for the job, every variant in the history pointing at it.
    (layer,) = r["new_layers"]
    assert len(r["history"]) == results and r["outcome"]["layer_ids"] == [layer["id"]]
    assert layer["type"] == "paintlayer" and layer["color"] == ["RGBA", "U8"] and layer["visible"]
    assert layer["name"] == r["history"][0]["name"]  # the first variant shows
    out = []
    for entry in r["history"]:
        assert entry["layer_id"] == layer["id"] and entry["shown_name"] == entry["name"]
        assert f"seed {entry['seed']}" in entry["name"]
        rx, ry, rw, rh = entry["region"]
        assert 0 <= rx and 0 <= ry and rx + rw <= W and ry + rh <= H and rw >= 8 and rh >= 8
        pixels = np.frombuffer((out_dir / entry["file"]).read_bytes(), np.uint8).reshape(H, W, 4)
        outside = pixels.copy()
        outside[ry:ry + rh, rx:rx + rw] = 0
        assert not outside.any()  # transparent outside the region: the picture shows through
        out.append((entry, pixels))
    return out


def on_canvas(sent: bytes, crop: list[int]) -> np.ndarray:
    """A one-byte map sent for the crop, placed on the whole canvas (0 elsewhere)."""
    x, y, w, h = crop
    full = np.zeros((H, W), np.uint8)
    full[y:y + h, x:x + w] = np.frombuffer(sent, np.uint8).reshape(h, w)
    return full


def check_kept_exactly(pixels: np.ndarray, original: np.ndarray, change_map: np.ndarray) -> None:
    """Where the map is 0, the result (over the picture) is the original, to the byte."""
    composite = over(original, pixels)
    keep = change_map == 0
    assert keep.any()
    np.testing.assert_array_equal(composite[keep], original[keep])


def changed_fraction(pixels: np.ndarray, original: np.ndarray, where: np.ndarray) -> float:
    diff = np.abs(over(original, pixels).astype(int) - original.astype(int))[..., :3].max(axis=-1)
    return float((diff[where] > 2).mean())


# -- the three jobs ----------------------------------------------------------------------------------
def test_change_map_job_gives_previews_then_result_layers(profile, server_url, io_dirs):
    in_dir, out_dir = io_dirs
    pic, strokes = picture(), ink()
    # The change map as painted: black (keep) everywhere, white (change) in a block, grey ramp beside it.
    map_bgra = np.zeros((H, W, 4), np.uint8)
    map_bgra[..., 3] = 255
    map_bgra[20:52, 24:56, :3] = 255
    ramp = np.linspace(40, 220, 24).astype(np.uint8)
    map_bgra[20:52, 56:80, :3] = ramp[None, :, None]
    (in_dir / "picture.bgra").write_bytes(pic.tobytes())
    (in_dir / "ink.bgra").write_bytes(strokes.tobytes())
    (in_dir / "map_layer.bgra").write_bytes(map_bgra.tobytes())

    r = run("change_map_job", {"url": server_url, "width": W, "height": H, "variants": 2, "seed": 1234},
            profile, io_dirs)

    # The plugin, `shared` and `websockets` came from the installed zip, not from the repository.
    for name, path in r["modules"].items():
        assert path.startswith(str(profile["pykrita"] / "differential_diffusion")), (name, path)

    # The map sent is the layer's pixels (its 50 % opacity is only for painting): white 255, ramp, black 0,
    # over the rectangle the server will process (the painted part plus context), not the whole canvas.
    x, y, w, h = r["crop"]
    assert x <= 24 and y <= 20 and x + w >= 80 and y + h >= 52
    sent_map = on_canvas((out_dir / "sent_map.gray").read_bytes(), r["crop"])
    np.testing.assert_array_equal(sent_map[y:y + h, x:x + w], map_bgra[y:y + h, x:x + w, 0])

    results = check_common(r, out_dir, results=2)
    assert [e["seed"] for e in r["history"]] == [1234, 1235]
    assert all(e["name"].startswith("a red barn in the snow · seed") for e in r["history"])
    # The job's layer goes right below the Change Map layer, whose dimming would otherwise hide it.
    assert r["order"][:2] == ["Background", "Ink"] and r["order"][-1] == "Change Map"
    original = over(pic, strokes)  # what the painter sees without the map layer
    change = map_bgra[..., 0]
    for entry, pixels in results:
        rx, ry, rw, rh = entry["region"]
        assert rx <= 24 and ry <= 20 and rx + rw >= 80 and ry + rh >= 52  # the region covers the painted map
        check_kept_exactly(pixels, original, change)
        assert changed_fraction(pixels, original, change == 255) > 0.5  # and where it is white, it changed
    assert not np.array_equal(results[0][1], results[1][1])  # two seeds, two pictures


def test_soft_inpaint_of_a_selection(profile, server_url, io_dirs):
    in_dir, out_dir = io_dirs
    pic, strokes = picture(1), ink()
    (in_dir / "picture.bgra").write_bytes(pic.tobytes())
    (in_dir / "ink.bgra").write_bytes(strokes.tobytes())
    sel = [40, 24, 40, 36]
    softness = 8

    r = run("soft_inpaint_job", {"url": server_url, "width": W, "height": H, "selection": sel,
                                 "softness": softness, "seed": 7}, profile, io_dirs)

    (entry, pixels), = check_common(r, out_dir, results=1)
    assert r["selection_after"] == sel  # the painter's selection is left as it was
    assert r["map_size"] == r["crop"][2:]
    assert "soft 8px" in entry["name"]
    soft = on_canvas((out_dir / "soft_map.gray").read_bytes(), r["crop"])
    x, y, w, h = sel
    # The map is Krita's feathered selection: full inside, 0 well outside, soft in between.
    assert (soft[y + softness:y + h - softness, x + softness:x + w - softness] == 255).all()
    far = np.ones((H, W), bool)
    far[max(y - 3 * softness, 0):y + h + 3 * softness, max(x - 3 * softness, 0):x + w + 3 * softness] = False
    assert (soft[far] == 0).all()
    assert ((soft > 0) & (soft < 255)).sum() > 2 * (w + h)
    original = over(pic, strokes)
    check_kept_exactly(pixels, original, soft)
    assert changed_fraction(pixels, original, soft == 255) > 0.5


def test_four_column_fan(profile, server_url, io_dirs):
    in_dir, out_dir = io_dirs
    pic = picture(2)
    (in_dir / "picture.bgra").write_bytes(pic.tobytes())

    r = run("fan_job", {"url": server_url, "width": W, "height": H, "columns": 4, "low": 0.0, "high": 1.0,
                        "steps": 12, "seed": 99}, profile, io_dirs)

    (entry, pixels), = check_common(r, out_dir, results=1)
    assert entry["name"].endswith("fan 0.00 | 0.33 | 0.67 | 1.00"), entry["name"]
    # The server paints the fan map with shared.fan's spans: 4 columns of 32 px, strengths 0 .. 1.
    from shared.fan import fan_columns, fan_strengths

    spans = fan_columns(W, 4)
    assert spans == [(0, 32), (32, 64), (64, 96), (96, 128)]
    strengths = fan_strengths(4, 0.0, 1.0)
    change = np.zeros((H, W), np.uint8)
    for (x0, x1), s in zip(spans, strengths, strict=True):
        change[:, x0:x1] = round(s * 255)
    check_kept_exactly(pixels, pic, change)  # column 0 (strength 0) is the picture itself
    fractions = [changed_fraction(pixels, pic, np.pad(np.ones((H, x1 - x0), bool), ((0, 0), (x0, W - x1))))
                 for x0, x1 in spans]
    assert fractions[0] == 0.0
    assert fractions[3] > 0.5, fractions
