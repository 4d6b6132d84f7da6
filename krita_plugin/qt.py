"""The one place that imports Qt.

Krita 5 embeds PyQt5; Krita 6 will embed PyQt6. Everything else in the plugin imports Qt names
from here, so adding PyQt6 means touching only this file. The binding is picked once (PyQt5
first, then PyQt6) and the names below are taken from its modules, so the list is written once.

Enums: PyQt6 only accepts the scoped spelling (``Qt.AlignmentFlag.AlignTop``), and PyQt5 5.15
(what Krita 5 ships) accepts it too, so the few enums the plugin needs are written once, in that
spelling, and re-exported under one name.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Every Qt name the plugin uses, by the module both bindings define it in.
_NAMES: dict[str, tuple[str, ...]] = {
    "QtCore": (
        "QBuffer",
        "QByteArray",
        "QIODevice",
        "QObject",
        "QSettings",
        "Qt",
        "QTimer",
        "pyqtSignal",
    ),
    "QtGui": ("QColor", "QIcon", "QImage", "QPainter", "QPixmap"),
    "QtWidgets": (
        "QApplication",
        "QCheckBox",
        "QComboBox",
        "QDialog",
        "QDialogButtonBox",
        "QDoubleSpinBox",
        "QFormLayout",
        "QGroupBox",
        "QHBoxLayout",
        "QLabel",
        "QLineEdit",
        "QListView",
        "QListWidget",
        "QListWidgetItem",
        "QMessageBox",
        "QPlainTextEdit",
        "QProgressBar",
        "QPushButton",
        "QScrollArea",
        "QSlider",
        "QSizePolicy",
        "QSpinBox",
        "QStackedWidget",
        "QToolButton",
        "QVBoxLayout",
        "QWidget",
    ),
}


def _import_binding() -> tuple[str, dict[str, ModuleType]]:
    """The first of PyQt5, PyQt6 whose modules all import, with those modules."""
    errors = []
    for api in ("PyQt5", "PyQt6"):
        try:
            return api, {module: importlib.import_module(f"{api}.{module}") for module in _NAMES}
        except ImportError as exc:
            errors.append(f"{api}: {exc}")
    raise ImportError("no Qt binding: " + "; ".join(errors))


QT_API, _modules = _import_binding()
globals().update(
    {name: getattr(_modules[module], name) for module, names in _NAMES.items() for name in names}
)

_Qt = _modules["QtCore"].Qt
_QImage = _modules["QtGui"].QImage
FORMAT_ARGB32 = _QImage.Format.Format_ARGB32
FORMAT_ARGB32_PREMULTIPLIED = _QImage.Format.Format_ARGB32_Premultiplied
FORMAT_RGB32 = _QImage.Format.Format_RGB32
FORMAT_GRAY8 = _QImage.Format.Format_Grayscale8
FORMAT_INDEXED8 = _QImage.Format.Format_Indexed8
READ_WRITE = _modules["QtCore"].QIODevice.OpenModeFlag.ReadWrite
ALIGN_TOP = _Qt.AlignmentFlag.AlignTop
HORIZONTAL = _Qt.Orientation.Horizontal
USER_ROLE = _Qt.ItemDataRole.UserRole
SMOOTH = _Qt.TransformationMode.SmoothTransformation
IGNORE_ASPECT = _Qt.AspectRatioMode.IgnoreAspectRatio
KEEP_ASPECT = _Qt.AspectRatioMode.KeepAspectRatio
_QtWidgets = _modules["QtWidgets"]
SCROLL_OFF = _Qt.ScrollBarPolicy.ScrollBarAlwaysOff
ECHO_PASSWORD = _QtWidgets.QLineEdit.EchoMode.Password
ICON_MODE = _QtWidgets.QListView.ViewMode.IconMode
LEFT_TO_RIGHT = _QtWidgets.QListView.Flow.LeftToRight
ARROW_RIGHT, ARROW_DOWN = _Qt.ArrowType.RightArrow, _Qt.ArrowType.DownArrow
TEXT_BESIDE_ICON = _Qt.ToolButtonStyle.ToolButtonTextBesideIcon
WRAP_LONG_ROWS = _QtWidgets.QFormLayout.RowWrapPolicy.WrapLongRows
COMBO_ELIDE = _QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
DIALOG_ACCEPTED = _QtWidgets.QDialog.DialogCode.Accepted
DIALOG_OK_CANCEL = (_QtWidgets.QDialogButtonBox.StandardButton.Ok
                    | _QtWidgets.QDialogButtonBox.StandardButton.Cancel)
COMPOSITION_SOURCE_OVER = _modules["QtGui"].QPainter.CompositionMode.CompositionMode_SourceOver
COMPOSITION_DESTINATION_IN = _modules["QtGui"].QPainter.CompositionMode.CompositionMode_DestinationIn

Signal = _modules["QtCore"].pyqtSignal

__all__ = ["QT_API", "Signal"] + sorted(
    name for names in _NAMES.values() for name in names if name != "pyqtSignal"
)
