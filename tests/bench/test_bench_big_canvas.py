"""bench/big_canvas.py runs end to end (real Krita, installed zip, real tiny-sd server) on small canvases and
prints what scripts read; no time is asserted, only that both canvases sent the same crop around the same edit."""

from __future__ import annotations

import math
import re

import pytest
from krita_support import KRITA_MARKS

from bench import big_canvas
from bench.common import read_summary_line

pytestmark = [*KRITA_MARKS, pytest.mark.timeout(300)]


def test_small_canvases_run_and_print_the_ratio(capsys) -> None:
    assert big_canvas.main(["--sizes", "256", "512", "--area", "64", "--runs", "1", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    values = read_summary_line(out)
    assert {"click_to_layer_256_s", "click_to_layer_512_s", "prepare_256_s", "prepare_512_s", "ratio"} <= set(values)
    assert all(math.isfinite(v) and v > 0 for v in values.values())
    # The same edit at each canvas's centre: the crop sent has the same size, only its place differs.
    crops = re.findall(r"^\d+x\d+\s.*\[(\d+), (\d+), (\d+), (\d+)\]$", out, re.MULTILINE)
    assert len(crops) == 2 and crops[0][2:] == crops[1][2:], out
    assert int(crops[0][2]) < 256  # not the whole canvas
