"""Shared fixtures. Tiny random-weight models are built once per session (offline, seeded)."""

from __future__ import annotations

import os
import sys

# Tests never reach the Hugging Face hub: set before huggingface_hub is imported (it reads the
# variable once), so a model that is not local fails at once instead of trying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One intra-op thread (read when torch loads): tiny models gain nothing from more, and on a busy
# machine OpenMP's spinning threads made the pipeline tests ~8x slower (111 s vs 13 s for SDXL).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
from PIL import Image

# DIFFDIFF_TEST_QT=PyQt6 runs the plugin's tests the way Krita 6 runs the plugin: importing PyQt5
# raises, so krita_plugin.qt must fall back to PyQt6 (tests/plugin/test_plugin_bindings.py starts this run).
TEST_QT = os.environ.get("DIFFDIFF_TEST_QT", "PyQt5")
if TEST_QT == "PyQt6":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fake_krita"))
    import wrong_pyqt

    wrong_pyqt.refuse("PyQt5")
    sys.path.pop(0)  # only the guard: the fake `krita` stays out of this run


def tiny_model(model: str, scope: str, **kwargs):
    """A fixture that loads the built-in tiny ``model`` once per ``scope``."""

    def load():
        from server.models import load_pipeline

        return load_pipeline(model, **kwargs)

    return pytest.fixture(load, scope=scope)


tiny_sd = tiny_model("tiny-sd", "session")
tiny_sdxl = tiny_model("tiny-sdxl", "session")
tiny_sdxl_refined = tiny_model("tiny-sdxl", "session", refiner="tiny-sdxl-refiner")
# The other families: loaded by each test module that uses them, and let go after it.
tiny_sd3 = tiny_model("tiny-sd3", "module")
tiny_flux = tiny_model("tiny-flux", "module")
tiny_if = tiny_model("tiny-if", "module")
tiny_k22 = tiny_model("tiny-kandinsky22", "module")


def make_test_image(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    """A smooth colourful picture with some texture (not flat, so changes are visible)."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / max(width - 1, 1), y / max(height - 1, 1),
                    0.5 + 0.5 * np.sin((x + y) / 5.0)], axis=-1)
    rgb = np.clip(rgb + rng.normal(0, 0.05, rgb.shape), 0, 1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


@pytest.fixture
def test_image() -> Image.Image:
    return make_test_image()


# PyQt5 aborts the whole process on an exception raised inside a Qt slot (a timer, a queued
# signal) unless sys.excepthook is replaced: record it instead and fail the test it happened in,
# with its traceback, rather than losing the suite to "Fatal Python error: Aborted".
_SLOT_ERRORS: list[str] = []


def _record_slot_error(kind, value, tb) -> None:
    import traceback

    _SLOT_ERRORS.append("".join(traceback.format_exception(kind, value, tb)))


sys.excepthook = _record_slot_error


@pytest.fixture(autouse=True)
def _no_exception_in_qt_slots():
    _SLOT_ERRORS.clear()
    yield
    if _SLOT_ERRORS:
        errors, _SLOT_ERRORS[:] = list(_SLOT_ERRORS), []
        pytest.fail("an exception was raised inside a Qt slot:\n" + "\n".join(errors))
