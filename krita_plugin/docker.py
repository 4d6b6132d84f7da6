"""The docker's widgets. Krita-free: krita_host wraps this panel in a Krita DockWidget.

Laid out for Krita's default docker slot (about 260 x 300 px): the prompt, Generate/Cancel and
the progress come first and are always in sight; the mode and its one or two controls next;
everything else folds into "Advanced"; the server's address and token live in a small Settings
dialog. Every control writes straight into the controller's settings (which persist them); the
panel re-reads the controller's state when it signals a change.
"""

from __future__ import annotations

from typing import Any

from .controller import Controller
from .live_controls import LiveBox
from .map_panel import MapsSection
from .map_tools import MapTools
from .option_controls import OptionsBox, decimal_box
from .qt import (
    ARROW_DOWN,
    ARROW_RIGHT,
    COMBO_ELIDE,
    DIALOG_ACCEPTED,
    DIALOG_OK_CANCEL,
    ECHO_PASSWORD,
    HORIZONTAL,
    ICON_MODE,
    LEFT_TO_RIGHT,
    TEXT_BESIDE_ICON,
    USER_ROLE,
    WRAP_LONG_ROWS,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QIcon,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPixmap,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QStackedWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)
from .settings import MODE_LABELS, MODES

SERVER_DEFAULT = "(server default)"
THUMB_PX = 56


def _spin(lo: int, hi: int, value: int, suffix: str = "") -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setValue(value)
    if suffix:
        box.setSuffix(suffix)
    return box


def _combo() -> QComboBox:
    combo = QComboBox()
    # Long model names must not make the docker wider than its column: the combo elides instead.
    combo.setSizeAdjustPolicy(COMBO_ELIDE)
    combo.setMinimumContentsLength(6)
    return combo


def _label(text: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)  # a docker is narrow: long lines wrap instead of widening it
    return label


def _form() -> QFormLayout:
    form = QFormLayout()
    form.setRowWrapPolicy(WRAP_LONG_ROWS)
    form.setContentsMargins(0, 0, 0, 0)
    return form


def _slider_row(box, scale: float, hi: float) -> tuple[QHBoxLayout, QSlider]:
    """A slider beside a spin box, kept in step with it (the box holds the value)."""
    slider = QSlider(HORIZONTAL)
    slider.setRange(round(box.minimum() * scale), round(min(box.maximum(), hi) * scale))
    slider.setValue(round(min(box.value(), hi) * scale))
    slider.valueChanged.connect(lambda v: box.setValue(v / scale if scale != 1 else v))

    def follow(value) -> None:  # quietly: a box value beyond the slider's range must stay
        slider.blockSignals(True)
        slider.setValue(round(min(value, hi) * scale))
        slider.blockSignals(False)

    box.valueChanged.connect(follow)
    row = QHBoxLayout()
    row.addWidget(slider, 1)
    row.addWidget(box)
    return row, slider


class ServerDialog(QDialog):
    """The server's address and token: set once, so they stay out of the docker."""

    def __init__(self, url: str, token: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Differential Diffusion server")
        form = QFormLayout(self)
        self.url = QLineEdit(url)
        self.url.setPlaceholderText("ws://127.0.0.1:7860")
        self.token = QLineEdit(token)
        self.token.setEchoMode(ECHO_PASSWORD)
        self.token.setPlaceholderText("only if the server asks for one (--token-file)")
        form.addRow("Address", self.url)
        form.addRow("Token", self.token)
        buttons = QDialogButtonBox(DIALOG_OK_CANCEL)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)


class DiffDiffPanel(QWidget):
    def __init__(self, host: Any, controller: Controller | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller if controller is not None else Controller(host, parent=self)
        c, s, limits = self.controller, self.controller.settings, self.controller.limits()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)

        # Always in sight: prompt, Generate/Cancel, progress, what is going on.
        self.prompt = QPlainTextEdit(s.prompt)
        self.prompt.setPlaceholderText("What the changed parts should show")
        self.prompt.setFixedHeight(46)
        layout.addWidget(self.prompt)
        buttons = QHBoxLayout()
        self.generate = QPushButton("Generate")
        self.cancel = QPushButton("Cancel")
        self.settings_button = QToolButton()
        self.settings_button.setText("⚙")
        self.settings_button.setToolTip("Server address and token")
        buttons.addWidget(self.generate, 1)
        buttons.addWidget(self.cancel)
        buttons.addWidget(self.settings_button)
        layout.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.setFixedHeight(6)
        layout.addWidget(self.progress)
        self.status = _label()  # the job's state, or why Generate is disabled
        self.connection = _label(c.connection_text)  # one line about the server
        self.message = _label()  # the last notice (errors in red)
        for label in (self.status, self.message, self.connection):
            layout.addWidget(label)

        # The mode and its one or two controls.
        self.mode = _combo()
        for mode in MODES:
            self.mode.addItem(MODE_LABELS[mode], mode)
        self.mode.setCurrentIndex(MODES.index(s.mode))
        layout.addWidget(self.mode)
        self.mode_pages = QStackedWidget()
        self.create_map = QPushButton("Create Change Map layer")
        self.mode_pages.addWidget(self.create_map)
        page, form = QWidget(), _form()
        page.setLayout(form)
        self.softness = _spin(0, limits["softness_px"], s.softness_px, " px")
        softness_row, self.softness_slider = _slider_row(self.softness, 1, 128)
        form.addRow("Softness", softness_row)
        self.mode_pages.addWidget(page)
        page, row = QWidget(), QHBoxLayout()
        page.setLayout(row)
        row.setContentsMargins(0, 0, 0, 0)
        self.fan_columns = _spin(2, limits["fan_columns"], s.fan_columns)
        self.fan_low = decimal_box(0.0, 1.0, s.fan_low, 0.05)
        self.fan_high = decimal_box(0.0, 1.0, s.fan_high, 0.05)
        self.fan_columns.setToolTip("Columns, each with its own strength")
        for widget in (self.fan_columns, QLabel("×"), self.fan_low, QLabel("→"), self.fan_high):
            row.addWidget(widget)
        self.mode_pages.addWidget(page)
        page, form = QWidget(), _form()
        page.setLayout(form)
        self.strength = decimal_box(0.0, 1.0, s.strength, 0.05)
        strength_row, self.strength_slider = _slider_row(self.strength, 100, 1.0)
        form.addRow("Strength", strength_row)
        self.mode_pages.addWidget(page)
        self.mode_pages.setCurrentIndex(MODES.index(s.mode))
        layout.addWidget(self.mode_pages)
        self.live_box = LiveBox(c)  # Live mode (issue 16): its toggle, Keep and its settings
        layout.addWidget(self.live_box)

        # Advanced: folded by default.
        self.advanced_toggle = QToolButton()
        self.advanced_toggle.setText("Advanced")
        self.advanced_toggle.setCheckable(True)
        self.advanced_toggle.setToolButtonStyle(TEXT_BESIDE_ICON)
        self.advanced_toggle.setArrowType(ARROW_RIGHT)
        self.advanced_toggle.setAutoRaise(True)
        layout.addWidget(self.advanced_toggle)
        self.advanced = QWidget()
        form = _form()
        self.advanced.setLayout(form)
        self.negative = QLineEdit(s.negative_prompt)
        self.negative.setPlaceholderText("Negative prompt")
        form.addRow(self.negative)
        self.model = _combo()
        self.scheduler = _combo()
        self.steps = _spin(1, limits["steps"], s.steps)
        self.guidance = decimal_box(0.0, limits["guidance"], s.guidance, 0.5)
        self.variants = _spin(1, limits["variants"], s.variants)
        seed_row = QHBoxLayout()
        self.seed = _spin(0, limits["seed"], min(s.seed, limits["seed"]))
        self.random_seed = QCheckBox("random")
        self.random_seed.setChecked(s.random_seed)
        self.seed.setEnabled(not s.random_seed)
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.random_seed)
        self.source = _combo()
        self.source.addItem("Visible picture", "projection")
        self.source.addItem("Active layer", "active_layer")
        self.source.setCurrentIndex(0 if s.source == "projection" else 1)
        self.region = _combo()
        self.region.addItem("Whole canvas", "canvas")
        self.region.addItem("Selection bounds", "selection")
        self.region.setCurrentIndex(0 if s.region == "canvas" else 1)
        self.map_layer = QLineEdit(s.map_layer)
        self.grow = _spin(-limits["grow_px"], limits["grow_px"], s.grow_px, " px")
        for label, widget in (("Model", self.model), ("Scheduler", self.scheduler), ("Steps", self.steps),
                              ("Guidance", self.guidance), ("Seed", seed_row), ("Variants", self.variants),
                              ("Source", self.source), ("Region", self.region), ("Map layer", self.map_layer),
                              ("Grow selection", self.grow)):
            form.addRow(label, widget)
        # The model's own options (SDXL refiner split, IF stages, ...), hidden when it takes none.
        self.options_box = OptionsBox(c)
        form.addRow(self.options_box)
        self.advanced.setVisible(False)
        layout.addWidget(self.advanced)

        # Maps: made from depth, a segment, the selection, a layer's alpha or a pattern (folded).
        self.map_tools = MapTools(self.controller, parent=self)
        self.maps = MapsSection(self.map_tools)
        layout.addWidget(self.maps)

        # Results: thumbnails; click shows a variant on its job's layer, double-click applies it.
        self.history = QListWidget()
        self.history.setViewMode(ICON_MODE)
        self.history.setFlow(LEFT_TO_RIGHT)
        self.history.setWrapping(False)
        self.history.setIconSize(QPixmap(THUMB_PX, THUMB_PX).size())
        self.history.setFixedHeight(THUMB_PX + 26)
        self.history.setToolTip("Click: show on the canvas · double-click: keep as your layer")
        layout.addWidget(self.history)
        results = QHBoxLayout()
        self.apply_button = QPushButton("Apply")
        self.discard_button = QPushButton("Discard")
        results.addWidget(self.apply_button)
        results.addWidget(self.discard_button)
        layout.addLayout(results)
        layout.addStretch(1)

        self._wire()
        self.refresh()
        self.refresh_history()

    @property
    def option_widgets(self) -> dict:
        return self.options_box.widgets

    def _wire(self) -> None:
        c = self.controller
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
        self.advanced_toggle.toggled.connect(self._advanced_toggled)
        self.settings_button.clicked.connect(self.open_server_dialog)
        self.generate.clicked.connect(self._generate)
        self.cancel.clicked.connect(c.cancel)
        self.history.itemClicked.connect(lambda item: c.show_result(item.data(USER_ROLE)))
        self.history.itemDoubleClicked.connect(lambda item: c.apply_result(item.data(USER_ROLE)))
        self.apply_button.clicked.connect(lambda: self._history_action(c.apply_result))
        self.discard_button.clicked.connect(lambda: self._history_action(c.discard_result))
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

    def _advanced_toggled(self, shown: bool) -> None:
        self.advanced.setVisible(shown)
        self.advanced_toggle.setArrowType(ARROW_DOWN if shown else ARROW_RIGHT)

    def server_dialog(self) -> ServerDialog:
        return ServerDialog(self.controller.settings.server_url, self.controller.settings.token, self)

    def open_server_dialog(self) -> None:
        dialog = self.server_dialog()
        if dialog.exec() == DIALOG_ACCEPTED:  # PyQt6 has no exec_()
            self.apply_server_dialog(dialog)

    def apply_server_dialog(self, dialog: ServerDialog) -> None:
        self.controller.update_settings(server_url=dialog.url.text().strip(), token=dialog.token.text().strip())

    def _generate(self) -> None:
        self.message.setText("")
        if self.controller.generate() and self.controller.settings.random_seed:
            self.message.setText(f"Seed {self.controller.last_seed}")

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
        self.controller.check_documents()
        self.refresh()

    # -- state -> widgets ----------------------------------------------------------------------------
    def _fill(self, combo: QComboBox, names: list[str], chosen: str) -> None:
        combo.blockSignals(True)
        combo.clear()
        combo.addItem(SERVER_DEFAULT, "")
        for name in names:
            combo.addItem(name, name)
        combo.setCurrentIndex(max(combo.findData(chosen), 0))
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
        limits = c.limits()  # the server may allow less than the protocol
        self.steps.setMaximum(limits["steps"])
        self.variants.setMaximum(limits["variants"])
        self.options_box.refresh()
        text, value, maximum = c.status()
        self.progress.setRange(0, maximum)
        self.progress.setValue(value)
        blocker = "" if c.busy else c.generate_blocker()
        self.status.setText(text or blocker)
        self.status.setVisible(bool(text or blocker))
        self.generate.setEnabled(not blocker)
        self.generate.setToolTip(blocker)
        self.cancel.setEnabled(c.busy)
        self.live_box.refresh()

    def refresh_history(self) -> None:
        self.history.clear()
        for entry in reversed(self.controller.history.entries):
            item = QListWidgetItem(entry.name)
            if entry.thumbnail is not None:
                item.setIcon(QIcon(QPixmap.fromImage(entry.thumbnail)))
                item.setText(f"#{entry.index + 1}")
            item.setToolTip(entry.name)
            item.setData(USER_ROLE, entry.key)
            self.history.addItem(item)
