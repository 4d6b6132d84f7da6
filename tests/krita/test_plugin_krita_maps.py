"""Map tools inside the real Krita 5 (kritarunner, offscreen): "Map from depth" adds exactly one
layer, the painter's layers stay byte-identical, and the transform row (and Blur, Krita's own
filter) changes only that layer."""

from __future__ import annotations

import numpy as np
import pytest
from test_plugin_krita import H, W, ink_layer, map_layer, picture

from krita_support import KRITA_MARKS, harness

pytestmark = KRITA_MARKS


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both checks of map_checks in one Krita start."""
    home, inputs = tmp_path_factory.mktemp("krita-home"), tmp_path_factory.mktemp("in")
    for name, data in (("picture.bgra", picture(6)), ("ink.bgra", ink_layer()), ("map_layer.bgra", map_layer())):
        (inputs / name).write_bytes(data.tobytes())
    return harness.run_in_krita("map_checks", "both", {"depth": {"width": W, "height": H, "in_dir": str(inputs)},
                                                       "speeds": {"side": 2048}}, home=home)


@pytest.fixture
def depth_run(runs):
    return runs["depth"]


def test_map_from_depth_adds_one_top_layer_and_leaves_the_painters_alone(depth_run):
    r = depth_run
    assert r["request"] == {"type": "make_map", "ref": 1, "kind": "depth", "width": W, "height": H}
    before, made = r["before"], r["made"]
    new = [k for k in made if k not in before]
    assert new == [f"{len(before)}:Change Map · depth"] and r["top_name"] == "Change Map · depth"
    assert {k: made[k] for k in before} == before  # byte-identical, same visibility and opacity
    assert r["top_is_map"] and r["opaque"]
    # The picture sent to the depth model: the painter's map is left out (Ink over the Background).
    sent = np.frombuffer(bytes.fromhex(r["sent_picture"]), np.uint8).reshape(H, W, 4).astype(float)
    ink, pic = ink_layer().astype(float), picture(6).astype(float)
    a = ink[..., 3:4] / 255.0
    assert np.abs(sent[..., :3] - (ink[..., :3] * a + pic[..., :3] * (1 - a))).max() <= 1.5


def test_the_transform_row_rewrites_only_the_new_layer(depth_run):
    r = depth_run
    made, shaped = r["made"], r["shaped"]
    changed = [k for k in made if made[k] != shaped[k]]
    assert changed == [f"{len(r['before'])}:Change Map · depth"] and r["inverted"]
    assert not [n for n in r["notices"] if n[0] == "error"]


def test_blur_is_kritas_own_filter_on_the_new_layer_only(depth_run):
    r = depth_run
    shaped, softened = r["shaped"], r["softened"]
    assert [k for k in shaped if shaped[k] != softened[k]] == [f"{len(r['before'])}:Change Map · depth"]
    assert r["blur_changed_it"] and r["blur_opaque_gray"]  # still a map: gray, opaque


def test_speeds_in_kritas_python(runs, record_property):
    """Recorded, not asserted against a clock (shared CI machines vary)."""
    r = runs["speeds"]
    for key in ("transform_4096_s", "radial_4096_s", "radial_qt_4096_s"):
        record_property(key, round(r[key], 4))
    record_property("live_step_2048_s", [round(s, 4) for s in r["live_steps_s"]])
    record_property("grow_4096_s", [round(s, 3) for s in r["grow_4096_s"]])
    print(f"in Krita: 4096x4096 transform {r['transform_4096_s'] * 1000:.0f} ms, radial pattern "
          f"{r['radial_4096_s']:.2f} s in Python, {r['radial_qt_4096_s'] * 1000:.0f} ms by Qt; grow 8 / 64 px "
          f"{r['grow_4096_s'][0]:.2f} / {r['grow_4096_s'][1]:.2f} s; a live transform step on 2048x2048: "
          + ", ".join(f"{s * 1000:.0f} ms" for s in r["live_steps_s"]))
    assert r["layer"] == "Change Map · gradient" and len(r["live_steps_s"]) == 3
