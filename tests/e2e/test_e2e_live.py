"""Live mode in a real Krita 5 (kritarunner) with the installed plugin zip and the real server
(tiny-sd): three strokes on the change map 400 ms apart start at most three jobs; one Live layer
shows the last job's result; the painter's layers are byte-identical; Keep adds one result layer;
Live off removes the Live layer."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from test_e2e_krita import H, W, ink, io_dirs, picture, profile, server_url  # noqa: F401 (fixtures)

from krita_support import E2E_DIR, KRITA_MARKS, harness

pytestmark = KRITA_MARKS


@pytest.fixture(scope="module")
def live_run(profile, server_url, tmp_path_factory):  # noqa: F811 (fixtures by name)
    in_dir, out_dir = tmp_path_factory.mktemp("in"), tmp_path_factory.mktemp("out")
    black = np.zeros((H, W, 4), np.uint8)
    black[..., 3] = 255
    black[60:80, 10:40] = 255  # what the painter had painted before turning Live on
    for name, data in (("picture.bgra", picture(2)), ("ink.bgra", ink()), ("map_layer.bgra", black)):
        (in_dir / name).write_bytes(data.tobytes())
    r = harness.run_in_krita("e2e_live", "live_strokes",
                             {"url": server_url, "width": W, "height": H, "in_dir": str(in_dir),
                              "out_dir": str(out_dir), "steps": 8},
                             home=profile["home"], pythonpath=[E2E_DIR, harness.HERE, profile["pykrita"]],
                             timeout_s=400)
    return r, out_dir


def test_strokes_give_at_most_one_job_each_and_one_live_layer_shows_the_last(live_run):
    r, out_dir = live_run
    print(json.dumps({k: r[k] for k in ("jobs_on_toggle", "jobs_total", "accepted", "done", "cancelled",
                                         "stroke_to_layer_s", "server")}))  # bench figures (pytest -s)
    assert not [n for n in r["notices"] if n[0] == "error"], r["notices"]
    assert r["jobs_on_toggle"] == 1 and r["jobs_total"] - r["jobs_on_toggle"] <= 3
    assert r["done"] + r["cancelled"] == r["accepted"] == r["jobs_total"]
    assert r["last_job"] == r["max_job"] and r["live_layers"] == 1
    live = np.frombuffer((out_dir / "live0.bgra").read_bytes(), np.uint8).reshape(H, W, 4)
    final_map = np.frombuffer((out_dir / "map_final.bgra").read_bytes(), np.uint8).reshape(H, W, 4)[..., 0]
    x, y, w, h = r["last_region"]
    result = np.asarray(Image.open(io.BytesIO((out_dir / "live_png.png").read_bytes())).convert("RGBA"))
    inside = live[y:y + h, x:x + w]
    white = final_map[y:y + h, x:x + w] == 255
    assert white.any()
    # Where the map is white the Live layer is the last result, where it is black transparent.
    np.testing.assert_array_equal(inside[white][:, [2, 1, 0]], result[white][:, :3])
    assert not inside[final_map[y:y + h, x:x + w] == 0].any()


def test_painters_layers_are_untouched_keep_adds_a_layer_and_live_off_removes_its_own(live_run):
    r, _ = live_run
    painter = {k: v for k, v in r["at_end"].items() if "live" not in k}
    assert [k.split(":", 1)[1] for k in painter] == ["Background", "Ink", "Change Map"]
    assert painter["0:Background"]["sha"] == hashlib.sha256(picture(2).tobytes()).hexdigest()
    assert painter["1:Ink"]["sha"] == hashlib.sha256(ink().tobytes()).hexdigest()
    assert r["kept_name"] and "seed 1234" in r["kept_name"] and r["history"] == 1
    assert len(r["after_keep"]) == 5  # Background, Ink, the kept result, the Live layer, the map
    assert r["after_off"] == ["Background", "Ink", r["kept_name"], "Change Map"]
