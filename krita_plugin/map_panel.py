"""The docker's "Maps" section (folded by default, like "Advanced"): the map makers and a compact
transform row that reshapes the map layer just made, live, then "Apply" keeps it.

Widgets only; what the buttons do is map_tools.MapTools.
"""

from __future__ import annotations

from shared.map_transforms import MapTransform

from .map_tools import PATTERNS, MapTools
from .option_controls import decimal_box
from .qt import (
    ARROW_DOWN,
    ARROW_RIGHT,
    TEXT_BESIDE_ICON,
    WRAP_LONG_ROWS,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QTimer,
    QToolButton,
    QVBoxLayout,
    QWidget,
)
from .settings import MAX_MAP_GAMMA, MIN_MAP_GAMMA

LIVE_DELAY_MS = 30  # controls moving faster than this rewrite the layer once


def _byte_box(value: int, tip: str) -> QSpinBox:
    box = QSpinBox()
    box.setRange(0, 255)
    box.setValue(value)
    box.setToolTip(tip)
    return box


def _pair(*widgets) -> QHBoxLayout:
    row = QHBoxLayout()
    row.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        row.addWidget(widget, 1)
    return row


class MapsSection(QWidget):
    def __init__(self, tools: MapTools, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.tools = tools
        settings = tools.controller.settings
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(2)
        self.toggle = QToolButton()
        self.toggle.setText("Maps")
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(TEXT_BESIDE_ICON)
        self.toggle.setArrowType(ARROW_RIGHT)
        self.toggle.setAutoRaise(True)
        outer.addWidget(self.toggle)
        self.body = QWidget()
        layout = QVBoxLayout(self.body)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        outer.addWidget(self.body)

        # Makers: each adds a new "Change Map · …" layer on top.
        self.depth = QPushButton("Depth")
        self.depth.setToolTip("The server estimates depth: near = white (change), far = black")
        self.segment = QPushButton("Segment")
        self.segment.setToolTip("Then click on an object in the canvas: the server cuts it out "
                                "(Esc cancels; a rotated or mirrored view uses the selection's bounds)")
        self.cancel_map = QPushButton("Cancel")
        self.cancel_map.setToolTip("Stop the depth or segment map the server is making")
        self.selection = QPushButton("Selection")
        self.selection.setToolTip("White inside the selection")
        self.alpha = QPushButton("Layer alpha")
        self.alpha.setToolTip("The active layer's opacity: its painted shape changes")
        self.pattern = QComboBox()
        for name in PATTERNS:
            self.pattern.addItem(name.capitalize(), name)
        self.pattern.setToolTip("The paper's fixed maps (the fan uses the fan mode's columns and strengths)")
        self.add_pattern = QPushButton("Add")
        layout.addLayout(_pair(self.depth, self.segment))
        layout.addLayout(_pair(self.selection, self.alpha))
        layout.addLayout(_pair(self.pattern, self.add_pattern))

        # The transform row: shapes the map layer just made, live.
        form = QFormLayout()
        form.setRowWrapPolicy(WRAP_LONG_ROWS)
        form.setContentsMargins(0, 0, 0, 0)
        self.black = _byte_box(0, "Black point: at or below it, keep")
        self.white = _byte_box(255, "White point: at or above it, change fully")
        self.band = QSpinBox()
        self.band.setRange(-1, 255)
        self.band.setValue(-1)
        self.band.setSpecialValueText("off")
        self.band.setToolTip("Focus band: keep the values near this one (a depth), change the rest; "
                             "Invert changes only the band")
        self.band_width = QSpinBox()
        self.band_width.setRange(0, 128)
        self.band_width.setValue(32)
        self.band_width.setToolTip("How far from the band's value is kept (the ramp is half as wide)")
        self.gamma = decimal_box(0.1, 10.0, 1.0, 0.1)
        self.gamma.setToolTip("Above 1: more change; below 1: gentler. Black stays black.")
        self.posterise = QSpinBox()
        self.posterise.setRange(1, 16)
        self.posterise.setSpecialValueText("off")
        self.posterise.setToolTip("Flat zones: this many strengths from black to white")
        self.low = _byte_box(0, "Least change anywhere")
        self.high = _byte_box(255, "Most change anywhere")
        self.invert = QCheckBox("Invert")
        self.soften_px = QSpinBox()
        self.soften_px.setRange(1, 256)
        self.soften_px.setValue(8)
        self.soften_px.setSuffix(" px")
        self.soften = QPushButton("Blur")
        self.soften.setToolTip("Soften the map's edges with Krita's Gaussian blur (keeps the shaping so far)")
        self.grow = QPushButton("Grow")
        self.grow.setToolTip("Widen the white (change) areas: each pixel the lightest of the square around it")
        self.shrink = QPushButton("Shrink")
        self.shrink.setToolTip("Narrow the white (change) areas: each pixel the darkest of the square around it")
        self.apply = QPushButton("Apply")
        self.apply.setToolTip("Keep the shaped map (paint on it, or shape it again)")
        self.reset = QPushButton("Reset")
        form.addRow("Levels", _pair(self.black, self.white))
        form.addRow("Band", _pair(self.band, self.band_width))
        form.addRow("Gamma", _pair(self.gamma, self.posterise))
        form.addRow("Clamp", _pair(self.low, self.high))
        layout.addLayout(form)
        layout.addLayout(_pair(self.invert, self.apply, self.reset))
        layout.addLayout(_pair(self.soften_px, self.soften))
        layout.addLayout(_pair(self.grow, self.shrink))
        self.map_gamma = decimal_box(MIN_MAP_GAMMA, MAX_MAP_GAMMA, settings.map_gamma, 0.1)
        self.map_gamma.setToolTip("Each job's map curve: above 1 every grey changes more, below 1 less "
                                  "(the layer is left as it is)")
        curve = QFormLayout()
        curve.setContentsMargins(0, 0, 0, 0)
        curve.addRow("Job map gamma", self.map_gamma)
        layout.addLayout(curve)
        self.status = QLabel()
        self.status.setWordWrap(True)
        status_row = QHBoxLayout()
        status_row.setContentsMargins(0, 0, 0, 0)
        status_row.addWidget(self.status, 1)
        status_row.addWidget(self.cancel_map)  # beside "Making a depth map…"
        layout.addLayout(status_row)
        self.body.setVisible(False)

        self._live = QTimer(self)
        self._live.setSingleShot(True)
        self._live.timeout.connect(self._preview)
        self._wire()
        self.refresh()

    def _wire(self) -> None:
        t = self.tools
        self.toggle.toggled.connect(self._toggled)
        self.depth.clicked.connect(t.from_depth)
        self.segment.clicked.connect(t.segment_by_click)
        self.cancel_map.clicked.connect(t.cancel)
        self.selection.clicked.connect(lambda: self._made(t.from_selection()))
        self.alpha.clicked.connect(lambda: self._made(t.from_layer_alpha()))
        self.add_pattern.clicked.connect(lambda: self._made(t.from_pattern(self.pattern.currentData())))
        for box in (self.black, self.white, self.band, self.band_width, self.gamma, self.posterise, self.low,
                    self.high):
            box.valueChanged.connect(self._schedule)
        self.invert.toggled.connect(self._schedule)
        self.apply.clicked.connect(self._apply)
        self.reset.clicked.connect(self._reset)
        self.soften.clicked.connect(self._soften)
        self.grow.clicked.connect(lambda: self._grow(self.soften_px.value()))
        self.shrink.clicked.connect(lambda: self._grow(-self.soften_px.value()))
        self.map_gamma.valueChanged.connect(lambda v: t.controller.update_settings(map_gamma=v))
        t.changed.connect(self.refresh)
        t.made.connect(lambda _made: self._set_controls(MapTransform()))

    def _toggled(self, shown: bool) -> None:
        self.body.setVisible(shown)
        self.toggle.setArrowType(ARROW_DOWN if shown else ARROW_RIGHT)

    def transform(self) -> MapTransform:
        low, high = sorted((self.low.value(), self.high.value()))
        return MapTransform(black=self.black.value(), white=self.white.value(), band=self.band.value(),
                            band_width=self.band_width.value(), gamma=round(self.gamma.value(), 2),
                            posterise=self.posterise.value(), low=low, high=high, invert=self.invert.isChecked())

    def _set_controls(self, transform: MapTransform) -> None:
        """Show `transform` without rewriting the layer."""
        widgets = (self.black, self.white, self.band, self.band_width, self.gamma, self.posterise, self.low,
                   self.high, self.invert)
        for widget in widgets:
            widget.blockSignals(True)
        self.black.setValue(transform.black)
        self.white.setValue(transform.white)
        self.band.setValue(transform.band)
        self.band_width.setValue(transform.band_width)
        self.gamma.setValue(transform.gamma)
        self.posterise.setValue(max(transform.posterise, 1))
        self.low.setValue(transform.low)
        self.high.setValue(transform.high)
        self.invert.setChecked(transform.invert)
        for widget in widgets:
            widget.blockSignals(False)

    def _made(self, _made) -> None:
        self.refresh()

    def _schedule(self, *_args) -> None:
        if not self._live.isActive():
            self._live.start(LIVE_DELAY_MS)

    def _preview(self) -> None:
        self.tools.preview_transform(self.transform())

    def _apply(self) -> None:
        self._live.stop()
        self._preview()  # what the controls say, written before it is kept
        if self.tools.apply_transform():
            self._set_controls(MapTransform())

    def _soften(self) -> None:
        self._apply()  # what the controls show is kept first, then blurred
        self.tools.soften(self.soften_px.value())

    def _grow(self, px: int) -> None:
        self._apply()  # what the controls show is kept first, then grown
        self.tools.grow(px)

    def _reset(self) -> None:
        self._set_controls(MapTransform())
        self._live.stop()
        self._preview()

    def refresh(self) -> None:
        current = self.tools.current
        has_map = current is not None
        for widget in (self.black, self.white, self.band, self.band_width, self.gamma, self.posterise, self.low,
                       self.high, self.invert, self.apply, self.reset, self.soften_px, self.soften, self.grow,
                       self.shrink):
            widget.setEnabled(has_map)
        for button in (self.depth, self.segment):
            button.setEnabled(not self.tools.busy)
        self.cancel_map.setEnabled(self.tools.busy)
        text = self.tools.status or (f"Shaping '{current.name}'." if has_map else
                                     "Make a map: it goes on a new layer on top.")
        self.status.setText(text)
