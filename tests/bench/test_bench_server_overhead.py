"""bench/server_overhead.py runs a job through the real websocket server and prints what scripts read (no
timing is asserted: only that the figures are there and the served result equals the direct call)."""

from __future__ import annotations

import math

import pytest
import torch

from bench import server_overhead as bench
from bench.common import read_summary_line

pytestmark = pytest.mark.timeout(300)


def test_smallest_run_prints_the_table_and_a_parseable_last_line(capsys) -> None:
    threads = torch.get_num_threads()
    code = bench.main(["--size", "64", "--steps", "4", "--repeats", "1", "--preview-every", "1",
                       "--threads", "1"])
    assert code == 0
    assert torch.get_num_threads() == threads  # --threads holds for the run only
    out = capsys.readouterr().out
    values = read_summary_line(out)
    assert {"server_overhead", "first_preview_s", "server_s", "direct_s", "result_max_diff"} <= set(values)
    assert all(math.isfinite(v) and v >= 0 for v in values.values())
    # The server's result is the direct call's picture, pixel for pixel.
    assert values["result_max_diff"] == 0
    assert "server ran the model at 64x64, 3 steps, 2 previews per job" in out  # gradient map: 3 of 4 steps
    assert "job through the websocket server" in out
