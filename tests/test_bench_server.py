"""bench/server.py runs a job through the real websocket server and prints what scripts read (no
timing is asserted: only that the figures are there and the served result equals the direct call)."""

from __future__ import annotations

import math

import pytest
import torch

from bench import server as bench

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_smallest_run_prints_the_table_and_a_parseable_last_line(capsys, restore_threads) -> None:
    code = bench.main(["--size", "64", "--steps", "4", "--repeats", "1", "--preview-every", "1",
                       "--threads", "1"])
    assert code == 0
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    values = {name: float(value) for name, value in (pair.split("=", 1) for pair in last.split())}
    assert {"server_overhead", "first_preview_s", "server_s", "direct_s", "result_max_diff"} <= set(values)
    assert all(math.isfinite(v) and v >= 0 for v in values.values())
    # The server's result is the direct call's picture, pixel for pixel.
    assert values["result_max_diff"] == 0
    assert "server ran the model at 64x64, 3 steps, 2 previews per job" in out  # gradient map: 3 of 4 steps
    assert "job through the websocket server" in out
