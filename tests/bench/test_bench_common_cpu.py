"""bench.common's CPU accounting (Linux /proc): what this process's family used, and what other
processes did, as bench/pool_throughput.py reports it. Work is counted by CPU seconds a process
reports itself, so a loaded machine only makes the test slower."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bench.common import family_cpu_seconds

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# Burns 0.4 s of its own CPU, says so, then waits (alive, so /proc still has its time).
BURN = ("import time, sys\n"
        "while time.process_time() < 0.4: pass\n"
        "print('burnt', flush=True)\n"
        "time.sleep(30)\n")


def test_a_childs_cpu_counts_as_ours_and_an_orphans_does_not(tmp_path):
    before = family_cpu_seconds()
    child = subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "burnt"
        assert family_cpu_seconds() - before >= 0.35  # /proc counts in 10 ms ticks
    finally:
        child.kill()
        child.wait()

    # A process whose parent exited belongs to init: someone else's, as another person's is.
    script = tmp_path / "burn.py"
    script.write_text(BURN)
    flag = tmp_path / "burnt"
    before = family_cpu_seconds()
    subprocess.run(["sh", "-c", f"('{sys.executable}' '{script}' > '{flag}' & echo $! > '{flag}.pid')"],
                   check=True)
    pid = int((tmp_path / "burnt.pid").read_text())
    try:
        deadline = time.monotonic() + 60
        while "burnt" not in flag.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "burnt" in flag.read_text()
        assert family_cpu_seconds() - before < 0.3  # ours: polling a file, not 0.4 s of CPU
    finally:
        subprocess.run(["kill", str(pid)], check=False)
