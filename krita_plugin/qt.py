"""The one place that imports Qt.

Krita 5 embeds PyQt5; Krita 6 will embed PyQt6. Everything else in the plugin imports Qt names
from here, so adding PyQt6 means touching only this file (enum scoping differs between the two,
which is why the few enums the plugin needs are re-exported under one name).
"""

from __future__ import annotations

try:
    from PyQt5.QtCore import (
        QBuffer,
        QByteArray,
        QIODevice,
        QObject,
        QSettings,
        Qt,
        QTimer,
        pyqtSignal,
    )
    from PyQt5.QtGui import QColor, QImage, QPainter
    from PyQt5.QtWidgets import (
        QApplication,
        QCheckBox,
        QComboBox,
        QDoubleSpinBox,
        QFormLayout,
        QGroupBox,
        QHBoxLayout,
        QLabel,
        QLineEdit,
        QListWidget,
        QListWidgetItem,
        QMessageBox,
        QPlainTextEdit,
        QProgressBar,
        QPushButton,
        QScrollArea,
        QSlider,
        QSpinBox,
        QStackedWidget,
        QVBoxLayout,
        QWidget,
    )

    QT_API = "PyQt5"
    FORMAT_ARGB32 = QImage.Format_ARGB32
    FORMAT_RGB32 = QImage.Format_RGB32
    FORMAT_GRAY8 = QImage.Format_Grayscale8
    READ_WRITE = QIODevice.ReadWrite
    ALIGN_TOP = Qt.AlignTop
    HORIZONTAL = Qt.Horizontal
    USER_ROLE = Qt.UserRole
    SMOOTH = Qt.SmoothTransformation
    IGNORE_ASPECT = Qt.IgnoreAspectRatio
    COMPOSITION_SOURCE_OVER = QPainter.CompositionMode_SourceOver
except ImportError:  # pragma: no cover - Krita 6 (PyQt6); kept symmetrical on purpose
    from PyQt6.QtCore import (  # type: ignore[no-redef]
        QBuffer,
        QByteArray,
        QIODevice,
        QObject,
        QSettings,
        Qt,
        QTimer,
        pyqtSignal,
    )
    from PyQt6.QtGui import QColor, QImage, QPainter  # type: ignore[no-redef]
    from PyQt6.QtWidgets import (  # type: ignore[no-redef]
        QApplication,
        QCheckBox,
        QComboBox,
        QDoubleSpinBox,
        QFormLayout,
        QGroupBox,
        QHBoxLayout,
        QLabel,
        QLineEdit,
        QListWidget,
        QListWidgetItem,
        QMessageBox,
        QPlainTextEdit,
        QProgressBar,
        QPushButton,
        QScrollArea,
        QSlider,
        QSpinBox,
        QStackedWidget,
        QVBoxLayout,
        QWidget,
    )

    QT_API = "PyQt6"
    FORMAT_ARGB32 = QImage.Format.Format_ARGB32
    FORMAT_RGB32 = QImage.Format.Format_RGB32
    FORMAT_GRAY8 = QImage.Format.Format_Grayscale8
    READ_WRITE = QIODevice.OpenModeFlag.ReadWrite
    ALIGN_TOP = Qt.AlignmentFlag.AlignTop
    HORIZONTAL = Qt.Orientation.Horizontal
    USER_ROLE = Qt.ItemDataRole.UserRole
    SMOOTH = Qt.TransformationMode.SmoothTransformation
    IGNORE_ASPECT = Qt.AspectRatioMode.IgnoreAspectRatio
    COMPOSITION_SOURCE_OVER = QPainter.CompositionMode.CompositionMode_SourceOver

Signal = pyqtSignal

__all__ = [
    "QT_API",
    "Signal",
    "QApplication",
    "QBuffer",
    "QByteArray",
    "QCheckBox",
    "QColor",
    "QComboBox",
    "QDoubleSpinBox",
    "QFormLayout",
    "QGroupBox",
    "QHBoxLayout",
    "QIODevice",
    "QImage",
    "QLabel",
    "QLineEdit",
    "QListWidget",
    "QListWidgetItem",
    "QMessageBox",
    "QObject",
    "QPainter",
    "QPlainTextEdit",
    "QProgressBar",
    "QPushButton",
    "QScrollArea",
    "QSettings",
    "QSlider",
    "QSpinBox",
    "QStackedWidget",
    "QTimer",
    "QVBoxLayout",
    "QWidget",
    "Qt",
]
