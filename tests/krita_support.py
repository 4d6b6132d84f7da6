"""What the tests that run Krita share: the harness and the live server (loaded by path: tests/krita
and tests/e2e are folders of scripts for Krita, not packages), the packaging script, and the marks
that skip them where Krita is not installed.

Imported by name, like plugin_fakes (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
E2E_DIR = TESTS / "e2e"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = _load("krita_harness", TESTS / "krita" / "harness.py")
live_server = _load("e2e_live_server", E2E_DIR / "live_server.py")
sys.path.insert(0, str(ROOT / "packaging"))
import build_plugin  # noqa: E402

# For `pytestmark` in the modules that run kritarunner.
KRITA_MARKS = [
    pytest.mark.krita,
    pytest.mark.skipif(not harness.krita_available(), reason="kritarunner (Krita 5) is not installed"),
]

__all__ = ["E2E_DIR", "KRITA_MARKS", "ROOT", "build_plugin", "harness", "live_server"]
