"""Live mode's look at the change map inside the real Krita 5 (kritarunner, offscreen): on a
4096 x 4096 document it costs a small fraction of one full-resolution read, and sees a stroke."""

from __future__ import annotations

import json

import pytest

from krita_support import KRITA_MARKS, harness

pytestmark = KRITA_MARKS


@pytest.fixture(scope="module")
def look(tmp_path_factory):
    return harness.run_in_krita("live_checks", "look_cost", {"side": 4096},
                                home=tmp_path_factory.mktemp("krita-home"))


def test_a_look_at_a_4k_map_is_cheap_and_sees_a_stroke(look):
    print(json.dumps(look))  # the figures for bench/RESULTS.md (pytest -s)
    assert not look["unchanged_look_says_changed"]
    assert look["stroke_seen"]["64"] and look["stroke_seen"]["24"]  # wider than 4096 / 256 = 16 px
    assert look["look_ms"] < 50 and look["look_after_stroke_ms"] < 100
    assert look["look_after_stroke_ms"] * 2 < look["full_read_ms"]
