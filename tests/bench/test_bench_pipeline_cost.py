"""bench/pipeline_cost.py runs end to end on tiny-sd and prints what scripts read (no timing is asserted:
the ratios depend on the machine; only their presence, the step counts and the exactness check are)."""

from __future__ import annotations

import math
import re

import pytest
import torch

from bench import pipeline_cost as bench
from bench.common import read_summary_line

pytestmark = pytest.mark.timeout(300)


def test_smallest_run_prints_the_table_and_a_parseable_last_line(capsys) -> None:
    threads = torch.get_num_threads()
    code = bench.main(["--size", "40", "--steps", "10", "--repeats", "1", "--threads", "1"])
    assert code == 0
    assert torch.get_num_threads() == threads  # --threads holds for the run only
    out = capsys.readouterr().out
    values = read_summary_line(out)
    expected = {"overhead", "skip_vs_img2img", "fan5", "mem_overhead_mb", "step_s", "fixed_s"}
    assert expected | {f"skip_{v:g}" for v in bench.SKIP_LEVELS} <= set(values)
    assert all(math.isfinite(v) for v in values.values())
    assert values["skip_1"] == 1.0  # the reference of the skipping table
    # A uniform map reproduces diffusers' img2img exactly: same steps, same noise, same pixels.
    assert "max pixel difference 0.00e+00" in out
    # Algorithm 2: a map whose largest strength is m runs floor(m * k) steps (k = 10 here), as img2img at m.
    table = out[out.index("Skipping"):out.index("Strength fan")]
    for level in bench.SKIP_LEVELS:
        for who in ("img2img", "differential"):
            row = re.search(rf"^{level:g} {who}\s+(\d+)\s", table, re.MULTILINE)
            assert row is not None and int(row.group(1)) == math.floor(level * 10 + 1e-4), (level, who)
    assert "fit, differential:" in table and "fit, img2img:" in table
    # 40 px: five 8-px columns, one latent cell each, the last at strength 1.0 -> all 10 steps.
    assert re.search(r"^one 5-column fan run\s+10\s", out, re.MULTILINE)
    assert re.search(r"^five img2img runs \(sum\)\s+30\s", out, re.MULTILINE)  # 2 + 4 + 6 + 8 + 10


def test_full_size_models_default_to_sizes_this_machine_can_run() -> None:
    quick = bench.default_settings("sd15-size", "cpu", quick=True)
    assert (quick.size, quick.steps, quick.repeats) == (96, 10, 1)
    assert bench.default_settings("sd15-size", "cpu", quick=False).size == 256
    assert bench.default_settings("sdxl-size", "cuda", quick=False).size == 0  # native, once loaded


def test_ramp_holds_its_maximum_on_whole_latent_cells() -> None:
    m = bench.ramp(64, 0.3)
    assert m.shape == (64, 64) and m.min() == 0.0
    assert m.max() == pytest.approx(0.3)
    # The last two 8-px latent cells are at the maximum, so the map really asks for floor(0.3 k) steps.
    assert (m[:, -16:] == m.max()).all()
    assert (m[:, 1:] >= m[:, :-1]).all()
