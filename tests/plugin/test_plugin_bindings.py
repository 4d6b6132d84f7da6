"""One plugin for Krita 5 (PyQt5) and Krita 6 (PyQt6).

- a scan of the plugin for spellings that exist under one binding only (unscoped enums, exec_,
  QAction in QtWidgets, ...);
- the plugin's own test suite (no Krita) run a second time under PyQt6, as Krita 6 runs it: in a
  second pytest session where importing PyQt5 raises (DIFFDIFF_TEST_QT=PyQt6, see conftest);
- krita_plugin.qt takes the binding Krita names before trying imports.

The built zip under each binding is tests/test_packaging.py's.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from krita_plugin import qt

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "krita_plugin"
FAKE_KRITA = ROOT / "tests" / "fake_krita"
TEST_QT = os.environ.get("DIFFDIFF_TEST_QT", "PyQt5")  # the binding conftest set this session up for

# Gone or renamed in Qt 6 / PyQt6 (the binding-neutral spelling in brackets).
GONE_ATTRIBUTES = {
    "exec_": "exec()", "print_": "print()", "byteCount": "sizeInBytes()", "desktop": "QGuiApplication.screens()",
    "setMargin": "setContentsMargins()", "toTime_t": "toSecsSinceEpoch()",
    "setTabStopWidth": "setTabStopDistance()",
}
GONE_NAMES = {"QRegExp", "QDesktopWidget", "QGLWidget", "QMatrix", "QTextCodec", "QString", "QStringList",
              "QSound", "QStringRef", "sip"}
MOVED_TO_QTGUI = {"QAction", "QActionGroup", "QShortcut", "QUndoCommand", "QUndoStack", "QFileSystemModel"}
BINDINGS = ("PyQt5", "PyQt6", "PySide2", "PySide6", "sip", "qtpy")
_CLASS = re.compile(r"^_?Q[A-Z]\w*$|^_?Qt$")


def _krita_names(tree: ast.AST) -> set[str]:
    return {alias.asname or alias.name for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "krita" for alias in node.names}


def binding_breakers(source: str, filename: str = "<plugin>", owns_qt: bool = False) -> list[str]:
    """What in `source` works under one binding (or one Krita) only, one line per finding."""
    tree = ast.parse(source, filename)
    classes = _krita_names(tree)
    found = []
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import | ast.ImportFrom) and not owns_qt:
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where}: imports {m} (only krita_plugin/qt.py imports Qt)" for m in modules
                      if m.split(".")[0] in BINDINGS]
        elif isinstance(node, ast.Attribute):
            if node.attr in GONE_ATTRIBUTES:
                found.append(f"{where}: .{node.attr} is gone in PyQt6 (use {GONE_ATTRIBUTES[node.attr]})")
            owner = node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", "")
            enum_like = node.attr[:1].isupper() and not node.attr.isupper()
            if id(node) not in inner and enum_like and (_CLASS.match(owner) or owner in classes):
                found.append(f"{where}: {owner}.{node.attr} is an unscoped enum (spell it {owner}.<EnumType>."
                             f"{node.attr}; PyQt6 and Krita 6 know no other spelling)")
        elif isinstance(node, ast.Name) and node.id in GONE_NAMES:
            found.append(f"{where}: {node.id} is gone in PyQt6")
    return found


def test_the_plugin_spells_every_qt_and_krita_name_one_way() -> None:
    found = []
    for path in sorted(PLUGIN.rglob("*.py")):
        found += binding_breakers(path.read_text(), str(path.relative_to(ROOT)), owns_qt=path.name == "qt.py")
    assert not found, "\n".join(found)
    in_widgets = MOVED_TO_QTGUI & set(qt._NAMES["QtWidgets"])
    assert not in_widgets, f"{sorted(in_widgets)} live in QtGui under PyQt6"


def test_only_the_krita_modules_import_krita() -> None:
    """krita_io (documents) and krita_host (docker, settings, canvas widget) call Krita; the rest
    is Krita-free, so it runs under the tests' fakes. __init__ only asks whether Krita is there."""
    importers = set()
    for path in sorted(PLUGIN.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(name.split(".")[0] == "krita" for name in names):
                importers.add(path.name)
    assert importers == {"__init__.py", "krita_io.py", "krita_host.py"}


def test_the_scan_finds_each_kind_of_breaker() -> None:
    source = """
from krita import DockWidgetFactoryBase
from PyQt5.QtWidgets import QAction
from .qt import QDialog, QImage, Qt
DockWidgetFactoryBase.DockRight
QImage.Format_ARGB32
Qt.AlignTop
dialog.exec_()
data.byteCount()
QRegExp("x")
QImage.Format.Format_ARGB32, Qt.AlignmentFlag.AlignTop, DockWidgetFactoryBase.DockPosition.DockRight
QDialog.exec, QImage.fromData, QImage.MAX_SIDE
"""
    found = binding_breakers(source)
    for needle in ("imports PyQt5.QtWidgets", "DockWidgetFactoryBase.DockRight", "QImage.Format_ARGB32",
                   "Qt.AlignTop", ".exec_", ".byteCount", "QRegExp"):
        assert sum(needle in line for line in found) == 1, (needle, found)
    assert len(found) == 7, found  # the scoped spellings, methods and constants pass


def test_the_plugin_runs_on_the_binding_this_session_chose() -> None:
    assert qt.QT_API == TEST_QT
    other = "PyQt6" if TEST_QT == "PyQt5" else "PyQt5"
    assert not [name for name in sys.modules if name.split(".")[0] == other]


@pytest.mark.skipif(TEST_QT != "PyQt5", reason="this is the PyQt6 session itself")
def test_the_plugins_tests_pass_under_pyqt6_as_in_krita6() -> None:
    tests = sorted(str(p) for p in (ROOT / "tests" / "plugin").glob("test_plugin_*.py"))
    env = dict(os.environ, DIFFDIFF_TEST_QT="PyQt6", QT_QPA_PLATFORM="offscreen")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not krita and not gui",
               "-k", "not pass_under_pyqt6", *tests]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in summary and "skipped" not in summary, summary


def _choose(krita_says: str | None, krita6_guard: bool) -> str:
    """The binding krita_plugin.qt picks in a fresh interpreter, with a fake pykrita that says
    `krita_says` (None: a Krita too old to say) and, optionally, Krita 6's PyQt5 guard."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]);"
            + ("import wrong_pyqt; wrong_pyqt.refuse('PyQt5');" if krita6_guard else "")
            + "import pykrita; from krita_plugin import qt; print(qt.QT_API)")
    env = dict(os.environ, DIFFDIFF_NO_REGISTER="1")
    env.pop("FAKE_KRITA_QT", None)
    if krita_says is not None:
        env["FAKE_KRITA_QT"] = krita_says
    proc = subprocess.run([sys.executable, "-c", code, str(FAKE_KRITA)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()[-1]


@pytest.mark.parametrize(("krita_says", "krita6_guard", "binding"), [
    ("6", False, "PyQt6"),  # Krita says 6: PyQt6, though PyQt5 would import (both are installed here)
    ("5", False, "PyQt5"),  # Krita 5.3 says 5
    (None, False, "PyQt5"),  # Krita 5.2 and older cannot say: the first that imports
    (None, True, "PyQt6"),  # a Krita that refuses PyQt5 without saying why: the guard is honoured
])
def test_the_binding_is_the_one_krita_names(krita_says, krita6_guard, binding) -> None:
    assert _choose(krita_says, krita6_guard) == binding


def test_the_change_map_is_the_same_number_under_both_bindings() -> None:
    """Qt 6 converts to gray colour-managed (pure red: 127, Qt 5: 87): the map must not depend on
    the binding, so it is Qt 5's qGray of the colour over black, in both sessions."""
    import numpy as np

    from krita_plugin.images import change_map_from_bgra

    bgra = np.random.default_rng(3).integers(0, 256, (23, 37, 4), dtype=np.uint8)
    bgra[0, :4] = [(0, 0, 255, 255), (255, 255, 255, 255), (255, 255, 255, 0), (255, 255, 255, 128)]
    over_black = (2 * bgra[..., :3].astype(np.int64) * bgra[..., 3:] + 255) // 510
    expected = (5 * over_black[..., 0] + 16 * over_black[..., 1] + 11 * over_black[..., 2]) // 32
    got = np.frombuffer(change_map_from_bgra(bgra.tobytes(), 37, 23), np.uint8).reshape(23, 37)
    np.testing.assert_array_equal(got, expected)
    assert list(got[0, :4]) == [87, 255, 0, 128]
