"""The one place that imports Qt.

Krita 5 embeds PyQt5, Krita 6 embeds PyQt6, and the same plugin runs in both: everything else in
the plugin imports Qt names from here. The binding is the one Krita says it was built with
(`pykrita.qt_major_version()`, Krita 5.3 and newer); a Krita that cannot say (5.2 and older, all
Qt 5) or no Krita at all (the tests) gets the first of PyQt5, PyQt6 that imports. Imports go through
`__import__`, so Krita 6's guard (importing PyQt5 raises there) sees them.

Enums: PyQt6 and Krita 6's own bindings only accept the scoped spelling
(``Qt.AlignmentFlag.AlignTop``); PyQt5 5.15 and Krita 5's bindings accept it too. So every enum the
plugin needs is spelled once, scoped, here (Krita's in krita_io) and re-exported under one name;
tests/test_plugin_bindings.py refuses any other spelling in the plugin.
"""

from __future__ import annotations

from types import ModuleType

# Every Qt name the plugin uses, by the module both bindings define it in.
_NAMES: dict[str, tuple[str, ...]] = {
    "QtCore": (
        "QBuffer",
        "QByteArray",
        "QEvent",
        "QIODevice",
        "QObject",
        "QSettings",
        "Qt",
        "QTimer",
        "pyqtSignal",
    ),
    "QtGui": ("QColor", "QIcon", "QImage", "QPainter", "QPixmap", "QRadialGradient"),
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


def _krita_qt_major() -> int | None:
    """The Qt major version Krita says it embeds, or None (no Krita, or one too old to say)."""
    try:
        import pykrita  # Krita's own module, present only inside Krita
    except ImportError:
        return None
    ask = getattr(pykrita, "qt_major_version", None)
    return int(ask()) if callable(ask) else None


def _import_binding() -> tuple[str, dict[str, ModuleType]]:
    """The binding Krita uses (else the first of PyQt5, PyQt6 that imports), with its modules."""
    major = _krita_qt_major()
    apis = (f"PyQt{major}",) if major is not None else ("PyQt5", "PyQt6")
    errors = []
    for api in apis:
        try:
            return api, {module: __import__(f"{api}.{module}", fromlist=[module]) for module in _NAMES}
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
FORMAT_INDEXED8 = _QImage.Format.Format_Indexed8
FORMAT_GRAYSCALE8 = _QImage.Format.Format_Grayscale8
FORMAT_RGB32 = _QImage.Format.Format_RGB32
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
MOUSE_PRESS = _modules["QtCore"].QEvent.Type.MouseButtonPress
MOUSE_RELEASE = _modules["QtCore"].QEvent.Type.MouseButtonRelease
MOUSE_DOUBLE_CLICK = _modules["QtCore"].QEvent.Type.MouseButtonDblClick
KEY_PRESS = _modules["QtCore"].QEvent.Type.KeyPress
LEFT_BUTTON = _Qt.MouseButton.LeftButton
KEY_ESCAPE = _Qt.Key.Key_Escape
COMPOSITION_SOURCE = _modules["QtGui"].QPainter.CompositionMode.CompositionMode_Source
COMPOSITION_LIGHTEN = _modules["QtGui"].QPainter.CompositionMode.CompositionMode_Lighten  # per channel max
COMPOSITION_DARKEN = _modules["QtGui"].QPainter.CompositionMode.CompositionMode_Darken  # per channel min

Signal = _modules["QtCore"].pyqtSignal

__all__ = ["QT_API", "Signal"] + sorted(
    name for names in _NAMES.values() for name in names if name != "pyqtSignal"
)
