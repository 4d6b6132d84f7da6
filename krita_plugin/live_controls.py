"""The docker's Live row: the Live toggle, Keep, and Live's own settings (shown while it is on).

Live mode itself (strokes -> jobs -> the Live layer) is live.py; this is widgets only.
"""

from __future__ import annotations

from .live import LIVE_STEPS
from .qt import WRAP_LONG_ROWS, QComboBox, QFormLayout, QHBoxLayout, QPushButton, QSpinBox, QVBoxLayout, QWidget
from .settings import MAX_LIVE_DEBOUNCE_MS

SAME_AS_GENERATE = "(as Generate)"
FEW_STEP_SCHEDULERS = ("LCM", "Euler a", "DPM++ SDE")  # proposed first, for LCM/turbo/lightning models


class LiveBox(QWidget):
    def __init__(self, controller, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = c = controller
        s = c.settings
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.toggle = QPushButton("Live")
        self.toggle.setCheckable(True)
        self.toggle.setToolTip("While on, every stroke on the change map starts a job; its result is "
                               "drawn on one Live layer.")
        self.keep = QPushButton("Keep")
        self.keep.setToolTip("Copy the live result onto a result layer of its own; Live goes on.")
        row.addWidget(self.toggle, 1)
        row.addWidget(self.keep)
        layout.addLayout(row)
        self.options = QWidget()
        form = QFormLayout(self.options)
        form.setContentsMargins(0, 0, 0, 0)
        form.setRowWrapPolicy(WRAP_LONG_ROWS)
        self.debounce = QSpinBox()
        self.debounce.setRange(0, MAX_LIVE_DEBOUNCE_MS)
        self.debounce.setSingleStep(50)
        self.debounce.setSuffix(" ms")
        self.debounce.setValue(s.live_debounce_ms)
        self.debounce.setToolTip("How long after a stroke the job starts")
        self.steps = QSpinBox()
        self.steps.setRange(1, c.limits()["steps"])
        self.steps.setValue(s.live_steps)
        self.steps.setToolTip(f"{LIVE_STEPS[0]}–{LIVE_STEPS[1]} steps with a few-step scheduler (LCM, "
                              "or Euler a / DPM++ SDE for turbo and lightning models)")
        self.scheduler = QComboBox()
        form.addRow("After a stroke", self.debounce)
        form.addRow("Live steps", self.steps)
        form.addRow("Live scheduler", self.scheduler)
        layout.addWidget(self.options)
        self.options.setVisible(False)
        self.toggle.toggled.connect(self._toggled)
        self.keep.clicked.connect(c.live.keep)
        self.debounce.valueChanged.connect(lambda v: c.update_settings(live_debounce_ms=v))
        self.steps.valueChanged.connect(lambda v: c.update_settings(live_steps=v))
        self.scheduler.activated.connect(
            lambda _i: c.update_settings(live_scheduler=self.scheduler.currentData() or ""))

    def _toggled(self, on: bool) -> None:
        if not self.controller.live.set_enabled(on):
            self.toggle.setChecked(False)
        self.refresh()

    def refresh(self) -> None:
        c = self.controller
        on = c.live.enabled
        if self.toggle.isChecked() != on:  # Live stopped by itself (the document was closed)
            self.toggle.blockSignals(True)
            self.toggle.setChecked(on)
            self.toggle.blockSignals(False)
        self.options.setVisible(on)
        self.keep.setEnabled(on and c.live.latest is not None)
        self.toggle.setEnabled(on or not c.generate_blocker())
        self.steps.setMaximum(c.limits()["steps"])
        names = c.scheduler_names()
        names = [n for n in FEW_STEP_SCHEDULERS if n in names] + [n for n in names if n not in FEW_STEP_SCHEDULERS]
        if [self.scheduler.itemData(i) for i in range(1, self.scheduler.count())] != names:
            self.scheduler.blockSignals(True)
            self.scheduler.clear()
            self.scheduler.addItem(SAME_AS_GENERATE, "")
            for name in names:
                self.scheduler.addItem(name, name)
            self.scheduler.setCurrentIndex(max(self.scheduler.findData(c.settings.live_scheduler), 0))
            self.scheduler.blockSignals(False)
