"""The chosen model's own options (SDXL's refiner split, IF's stages, ...) as docker controls,
built from what the server advertises for that model; hidden when it takes none."""

from __future__ import annotations

from typing import Any

from .qt import HORIZONTAL, WRAP_LONG_ROWS, QCheckBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QSlider, \
    QSpinBox, QVBoxLayout, QWidget


def decimal_box(lo: float, hi: float, value: float, step: float) -> QDoubleSpinBox:
    """A spin box for a number with two decimals (also the docker's own strengths and guidance)."""
    box = QDoubleSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setDecimals(2)
    box.setValue(value)
    return box


class OptionsBox(QGroupBox):
    def __init__(self, controller, parent: QWidget | None = None) -> None:
        super().__init__("Model options", parent)
        self.controller = controller
        self._layout = QVBoxLayout(self)
        self._options_body: QWidget | None = None
        self._options_key: tuple | None = None
        self.widgets: dict[str, Any] = {}
        self.setVisible(False)

    def refresh(self) -> None:
        """One control per option of the chosen model; rebuilt only when that list changes."""
        specs = self.controller.option_specs()
        key = tuple(specs)
        if key == self._options_key:
            return
        self._options_key = key
        if self._options_body is not None:
            self._layout.removeWidget(self._options_body)
            self._options_body.deleteLater()
        self._options_body = QWidget()
        form = QFormLayout(self._options_body)
        form.setRowWrapPolicy(WRAP_LONG_ROWS)
        self.widgets = {}
        for spec in specs:
            widget, row = self._option_control(spec)
            if spec.help:
                widget.setToolTip(spec.help)
            self.widgets[spec.name] = widget
            if spec.type == "bool":
                form.addRow(row)
            else:
                form.addRow(spec.label or spec.name, row)
        self._layout.addWidget(self._options_body)
        self.setVisible(bool(specs))

    def _option_control(self, spec) -> tuple[Any, Any]:
        """A control for one option (checkbox, spin box, or slider + box for a 0..1 number) and
        what goes in the form. A number whose default is None (the server decides) gets an extra
        lowest value, shown as 'auto', that sends nothing."""
        c, value = self.controller, self.controller.option_value(spec)
        if spec.type == "bool":
            box = QCheckBox(spec.label or spec.name)
            box.setChecked(bool(value))
            box.toggled.connect(lambda checked, n=spec.name: c.set_option(n, bool(checked)))
            return box, box
        auto = spec.default is None
        if spec.type == "int":
            lo = int(spec.min) + (1 if spec.min_exclusive else 0) if spec.min is not None else -(2**31 - 1)
            hi = int(spec.max) if spec.max is not None else 2**31 - 1
            box = QSpinBox()
            box.setRange(lo - 1 if auto else lo, hi)
            floor = box.minimum()

            def changed(v: int, n: str = spec.name) -> None:
                c.set_option(n, None if auto and v == floor else int(v))
        else:
            lo = float(spec.min) if spec.min is not None else -1e6
            hi = float(spec.max) if spec.max is not None else 1e6
            step = 0.05 if hi - lo <= 1.0 else 0.5
            lo += 0.01 if spec.min_exclusive else 0.0
            box = decimal_box(lo - step if auto else lo, hi, lo, step)
            floor = box.minimum()

            def changed(v: float, n: str = spec.name) -> None:
                c.set_option(n, None if auto and v <= floor else round(float(v), 4))
        if auto:
            box.setSpecialValueText("auto")
        box.setValue(floor if value is None else value)
        box.valueChanged.connect(changed)
        if spec.type == "float" and spec.min is not None and spec.max is not None and not auto \
                and spec.max - spec.min <= 1.0:
            # A fraction (e.g. the refiner split): a slider beside the box, in hundredths.
            slider = QSlider(HORIZONTAL)
            slider.setRange(round(box.minimum() * 100), round(box.maximum() * 100))
            slider.setValue(round(box.value() * 100))
            slider.valueChanged.connect(lambda v: box.setValue(v / 100))
            box.valueChanged.connect(lambda v: slider.setValue(round(v * 100)))
            row = QHBoxLayout()
            row.addWidget(slider, 1)
            row.addWidget(box)
            box.slider = slider
            return box, row
        return box, box

