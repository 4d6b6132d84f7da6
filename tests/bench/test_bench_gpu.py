"""bench/gpu.sh --cpu-smoke: the GPU script's code end to end on the CPU with tiny models (the table's
shape and that every figure is there; no timing is asserted)."""

from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys

import pytest

from bench import gpu_table

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(400)


def test_cpu_smoke_writes_one_markdown_table(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "gpu.md"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--cpu-smoke", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=380)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = out.read_text().strip().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| " + " | ".join(gpu_table.COLUMNS) + " |"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [row[0] for row in rows] == [case.label for case in gpu_table.CPU_SMOKE_CASES]
    for row, case in zip(rows, gpu_table.CPU_SMOKE_CASES, strict=True):
        figures = dict(zip(gpu_table.COLUMNS, row, strict=True))
        for name in ("overhead", "skip_vs_img2img", "skip_0.1", "fan5"):
            assert float(figures[name]) > 0, (case.label, name)
        # Least-squares slopes: one noisy round on a loaded CPU may even give a negative one.
        assert all(math.isfinite(float(figures[name])) for name in ("img2img s/step", "ours s/step"))
        if case.server:
            assert float(figures["server_overhead"]) > 0
    assert "CPU smoke run" in lines[0]
    assert done.stdout.strip().endswith(table[-1])


def test_gpu_run_refuses_without_cuda(monkeypatch, capsys) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        gpu_table.main([])
    assert "--cpu-smoke" in capsys.readouterr().err
