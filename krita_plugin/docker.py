"""The docker's widgets. Krita-free: krita_io wraps this panel in a Krita DockWidget.

Every control writes straight into the controller's settings (which persist them); the panel
re-reads the controller's state when it signals a change.
"""

from __future__ import annotations

from typing import Any

from .controller import Controller
from .qt import (
    ALIGN_TOP,
    HORIZONTAL,
    USER_ROLE,
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
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)
from .settings import MODE_LABELS, MODES

SERVER_DEFAULT = "(server default)"


def _spin(lo: int, hi: int, value: int, suffix: str = "") -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setValue(value)
    if suffix:
        box.setSuffix(suffix)
    return box


def _note(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)  # a docker is narrow: long hints wrap instead of widening it
    return label


def _combo() -> QComboBox:
    combo = QComboBox()
    # Long model names must not make the docker wider than its column: the combo elides instead.
    combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(8)
    return combo


def _slider_row(box: QSpinBox, hi: int) -> tuple[QHBoxLayout, QSlider]:
    """A slider beside a spin box, kept in step with it (the box holds the value)."""
    slider = QSlider(HORIZONTAL)
    slider.setRange(box.minimum(), min(box.maximum(), hi))
    slider.setValue(min(box.value(), hi))
    slider.valueChanged.connect(box.setValue)

    def follow(value: int) -> None:  # quietly: a box value beyond the slider's range must stay
        slider.blockSignals(True)
        slider.setValue(min(value, hi))
        slider.blockSignals(False)

    box.valueChanged.connect(follow)
    row = QHBoxLayout()
    row.addWidget(slider, 1)
    row.addWidget(box)
    return row, slider


def _dspin(lo: float, hi: float, value: float, step: float) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setDecimals(2)
    box.setValue(value)
    return box


class DiffDiffPanel(QWidget):
    def __init__(self, host: Any, controller: Controller | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller if controller is not None else Controller(host, parent=self)
        c, s = self.controller, self.controller.settings
        layout = QVBoxLayout(self)
        layout.setAlignment(ALIGN_TOP)

        # Server
        server = QGroupBox("Server")
        form = QFormLayout(server)
        self.url = QLineEdit(s.server_url)
        self.token = QLineEdit(s.token)
        self.token.setEchoMode(QLineEdit.Password)
        self.token.setPlaceholderText("only if the server was started with --token")
        self.connection = QLabel(c.connection_text)
        self.connection.setWordWrap(True)
        form.addRow("URL", self.url)
        form.addRow("Token", self.token)
        form.addRow(self.connection)
        layout.addWidget(server)

        # Prompt and sampling
        self.prompt = QPlainTextEdit(s.prompt)
        self.prompt.setPlaceholderText("Prompt: what the changed parts should show")
        self.prompt.setMaximumHeight(70)
        self.negative = QLineEdit(s.negative_prompt)
        self.negative.setPlaceholderText("Negative prompt")
        layout.addWidget(self.prompt)
        layout.addWidget(self.negative)
        sampling = QFormLayout()
        sampling.setRowWrapPolicy(QFormLayout.WrapLongRows)  # narrow docker: fields go under their labels
        self.model = _combo()
        self.scheduler = _combo()
        self.steps = _spin(1, 500, s.steps)
        self.guidance = _dspin(0.0, 50.0, s.guidance, 0.5)
        self.variants = _spin(1, 16, s.variants)
        seed_row = QHBoxLayout()
        self.seed = _spin(0, 2**31 - 1, min(s.seed, 2**31 - 1))
        self.random_seed = QCheckBox("random")
        self.random_seed.setChecked(s.random_seed)
        self.seed.setEnabled(not s.random_seed)
        seed_row.addWidget(self.seed)
        seed_row.addWidget(self.random_seed)
        sampling.addRow("Model", self.model)
        sampling.addRow("Scheduler", self.scheduler)
        sampling.addRow("Steps", self.steps)
        sampling.addRow("Guidance", self.guidance)
        sampling.addRow("Seed", seed_row)
        sampling.addRow("Variants", self.variants)
        layout.addLayout(sampling)

        # The model's own options (SDXL refiner split, IF stages, ...): built from what the server
        # advertises for the chosen model, hidden when it takes none.
        self.options_box = QGroupBox("Model options")
        self._options_layout = QVBoxLayout(self.options_box)
        self._options_body: QWidget | None = None
        self._options_key: tuple | None = None
        self.option_widgets: dict[str, Any] = {}
        self.options_box.setVisible(False)
        layout.addWidget(self.options_box)

        # What may change
        what = QGroupBox("What may change")
        wl = QVBoxLayout(what)
        self.mode = _combo()
        for mode in MODES:
            self.mode.addItem(MODE_LABELS[mode], mode)
        self.mode.setCurrentIndex(MODES.index(s.mode))
        wl.addWidget(self.mode)
        self.mode_pages = QStackedWidget()
        # change map
        page = QWidget()
        pl = QFormLayout(page)
        self.map_layer = QLineEdit(s.map_layer)
        self.create_map = QPushButton("Create Change Map layer")
        pl.addRow("Map layer", self.map_layer)
        pl.addRow(self.create_map)
        pl.addRow(_note("White = change fully, black = keep."))
        self.mode_pages.addWidget(page)
        # soft inpaint
        page = QWidget()
        pl = QFormLayout(page)
        self.softness = _spin(0, 512, s.softness_px, " px")
        self.grow = _spin(-256, 256, s.grow_px, " px")
        softness_row, self.softness_slider = _slider_row(self.softness, 128)
        pl.addRow("Softness", softness_row)
        pl.addRow("Grow", self.grow)
        pl.addRow(_note("Repaints the selection; strength fades out over the softness."))
        self.mode_pages.addWidget(page)
        # fan
        page = QWidget()
        pl = QFormLayout(page)
        self.fan_columns = _spin(2, 16, s.fan_columns)
        self.fan_low = _dspin(0.0, 1.0, s.fan_low, 0.05)
        self.fan_high = _dspin(0.0, 1.0, s.fan_high, 0.05)
        pl.addRow("Columns", self.fan_columns)
        pl.addRow("From strength", self.fan_low)
        pl.addRow("To strength", self.fan_high)
        self.mode_pages.addWidget(page)
        # uniform
        page = QWidget()
        pl = QFormLayout(page)
        self.strength = _dspin(0.0, 1.0, s.strength, 0.05)
        self.strength_slider = QSlider(HORIZONTAL)
        self.strength_slider.setRange(0, 100)
        self.strength_slider.setValue(round(s.strength * 100))
        self.strength_slider.valueChanged.connect(lambda v: self.strength.setValue(v / 100))
        self.strength.valueChanged.connect(lambda v: self.strength_slider.setValue(round(v * 100)))
        strength_row = QHBoxLayout()
        strength_row.addWidget(self.strength_slider, 1)
        strength_row.addWidget(self.strength)
        pl.addRow("Strength", strength_row)
        self.mode_pages.addWidget(page)
        self.mode_pages.setCurrentIndex(MODES.index(s.mode))
        wl.addWidget(self.mode_pages)
        where = QFormLayout()
        self.source = _combo()
        self.source.addItem("Visible picture", "projection")
        self.source.addItem("Active layer", "active_layer")
        self.source.setCurrentIndex(0 if s.source == "projection" else 1)
        self.region = _combo()
        self.region.addItem("Whole canvas", "canvas")
        self.region.addItem("Selection bounds", "selection")
        self.region.setCurrentIndex(0 if s.region == "canvas" else 1)
        where.addRow("Source", self.source)
        where.addRow("Region", self.region)
        wl.addLayout(where)
        layout.addWidget(what)

        # Generate
        buttons = QHBoxLayout()
        self.generate = QPushButton("Generate")
        self.cancel = QPushButton("Cancel")
        buttons.addWidget(self.generate)
        buttons.addWidget(self.cancel)
        layout.addLayout(buttons)
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.message)

        # History
        history = QGroupBox("Results")
        hl = QVBoxLayout(history)
        self.history = QListWidget()
        self.history.setMaximumHeight(140)
        hl.addWidget(self.history)
        hb = QHBoxLayout()
        self.show_button = QPushButton("Show")
        self.apply_button = QPushButton("Apply")
        self.discard_button = QPushButton("Discard")
        for b in (self.show_button, self.apply_button, self.discard_button):
            hb.addWidget(b)
        hl.addLayout(hb)
        layout.addWidget(history)

        self._wire()
        self.refresh()
        self.refresh_history()

    def _wire(self) -> None:
        c = self.controller
        self.url.editingFinished.connect(lambda: c.update_settings(server_url=self.url.text()))
        self.token.editingFinished.connect(lambda: c.update_settings(token=self.token.text()))
        self.prompt.textChanged.connect(lambda: c.update_settings(prompt=self.prompt.toPlainText()))
        self.negative.textChanged.connect(lambda t: c.update_settings(negative_prompt=t))
        self.model.activated.connect(self._model_picked)
        self.scheduler.activated.connect(lambda _i: c.update_settings(scheduler=self.scheduler.currentData() or ""))
        self.steps.valueChanged.connect(lambda v: c.update_settings(steps=v))
        self.guidance.valueChanged.connect(lambda v: c.update_settings(guidance=v))
        self.variants.valueChanged.connect(lambda v: c.update_settings(variants=v))
        self.seed.valueChanged.connect(lambda v: c.update_settings(seed=v))
        self.random_seed.toggled.connect(self._random_seed_toggled)
        self.mode.currentIndexChanged.connect(self._mode_changed)
        self.map_layer.editingFinished.connect(lambda: c.update_settings(map_layer=self.map_layer.text().strip()))
        self.create_map.clicked.connect(c.create_map_layer)
        self.softness.valueChanged.connect(lambda v: c.update_settings(softness_px=v))
        self.grow.valueChanged.connect(lambda v: c.update_settings(grow_px=v))
        self.fan_columns.valueChanged.connect(lambda v: c.update_settings(fan_columns=v))
        self.fan_low.valueChanged.connect(lambda v: c.update_settings(fan_low=v))
        self.fan_high.valueChanged.connect(lambda v: c.update_settings(fan_high=v))
        self.strength.valueChanged.connect(lambda v: c.update_settings(strength=v))
        self.source.currentIndexChanged.connect(lambda _i: c.update_settings(source=self.source.currentData()))
        self.region.currentIndexChanged.connect(lambda _i: c.update_settings(region=self.region.currentData()))
        self.generate.clicked.connect(self._generate)
        self.cancel.clicked.connect(c.cancel)
        self.show_button.clicked.connect(lambda: self._history_action(c.show_result))
        self.apply_button.clicked.connect(lambda: self._history_action(c.apply_result))
        self.discard_button.clicked.connect(lambda: self._history_action(c.discard_result))
        self.history.itemDoubleClicked.connect(lambda _item: self._history_action(c.show_result))
        c.changed.connect(self.refresh)
        c.history_changed.connect(self.refresh_history)
        c.notice.connect(self.show_notice)

    # -- reactions -------------------------------------------------------------------------------
    def _random_seed_toggled(self, checked: bool) -> None:
        self.seed.setEnabled(not checked)
        self.controller.update_settings(random_seed=checked)

    def _model_picked(self, _index: int) -> None:
        self.controller.update_settings(model=self.model.currentData() or "")
        self.refresh()  # its schedulers and options

    def _mode_changed(self, index: int) -> None:
        self.mode_pages.setCurrentIndex(index)
        self.controller.update_settings(mode=MODES[index])

    def _generate(self) -> None:
        self.message.setText("")
        if self.controller.generate() and self.controller.settings.random_seed:
            self.status.setText(f"Seed {self.controller.last_seed}")

    def _history_action(self, action) -> None:
        item = self.history.currentItem()
        if item is None:
            self.show_notice("warning", "Pick a result in the list first.")
            return
        action(item.data(USER_ROLE))

    def show_notice(self, level: str, text: str) -> None:
        colour = {"error": "#d9534f", "warning": "#e0a000"}.get(level, "")
        self.message.setStyleSheet(f"color: {colour}" if colour else "")
        self.message.setText(text)

    def on_document_changed(self) -> None:
        self.refresh()

    # -- state -> widgets ----------------------------------------------------------------------------
    def _fill(self, combo: QComboBox, names: list[str], chosen: str) -> None:
        combo.blockSignals(True)
        combo.clear()
        combo.addItem(SERVER_DEFAULT, "")
        for name in names:
            combo.addItem(name, name)
        index = combo.findData(chosen)
        combo.setCurrentIndex(max(index, 0))
        combo.blockSignals(False)

    def refresh(self) -> None:
        c = self.controller
        self.connection.setText(c.connection_text)
        caps = c.capabilities
        models = caps.models if caps else []
        schedulers = c.scheduler_names()  # the chosen model's: flow models have their own
        if [self.model.itemData(i) for i in range(1, self.model.count())] != models:
            self._fill(self.model, models, c.settings.model)
        if [self.scheduler.itemData(i) for i in range(1, self.scheduler.count())] != schedulers:
            self._fill(self.scheduler, schedulers, c.settings.scheduler)
        self._refresh_options()
        text, value, maximum = c.status()
        self.progress.setRange(0, maximum)
        self.progress.setValue(value)
        if text or not c.busy:
            self.status.setText(text)
        self.generate.setEnabled(c.connection_state == "connected")
        self.cancel.setEnabled(c.busy)

    def _refresh_options(self) -> None:
        """One control per option of the chosen model; rebuilt only when that list changes."""
        specs = self.controller.option_specs()
        key = tuple(specs)
        if key == self._options_key:
            return
        self._options_key = key
        if self._options_body is not None:
            self._options_layout.removeWidget(self._options_body)
            self._options_body.deleteLater()
        self._options_body = QWidget()
        form = QFormLayout(self._options_body)
        form.setRowWrapPolicy(QFormLayout.WrapLongRows)
        self.option_widgets = {}
        for spec in specs:
            widget, row = self._option_control(spec)
            if spec.help:
                widget.setToolTip(spec.help)
            self.option_widgets[spec.name] = widget
            if spec.type == "bool":
                form.addRow(row)
            else:
                form.addRow(spec.label or spec.name, row)
        self._options_layout.addWidget(self._options_body)
        self.options_box.setVisible(bool(specs))

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
            box = _dspin(lo - step if auto else lo, hi, lo, step)
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

    def refresh_history(self) -> None:
        self.history.clear()
        for entry in reversed(self.controller.history.entries):
            item = QListWidgetItem(entry.name)
            item.setData(USER_ROLE, entry.key)
            self.history.addItem(item)
