"""A test-only Krita plugin for tests/test_gui.py: once the main window is up, it (optionally)
opens a demo document and then reports, as JSON, how the Differential Diffusion docker is shown.

It first only reads the docker: that report is what a painter sees on Krita's first start with
the plugin enabled. Then, when the test creates the file DIFFDIFF_GUI_GO (after its screenshot),
it sets up one job per mode in the docker (JOBS) and presses the docker's own Generate button, as
a painter would, waits for each job and writes a second report (DIFFDIFF_GUI_REPORT +
".generate.json"): per job, the layers before and after (with a hash of each layer's pixels), the
selection before and after, and how the job ended. Installed only into throw-away test profiles.

Environment: DIFFDIFF_GUI_REPORT (the JSON file to write), DIFFDIFF_GUI_PICTURE and
DIFFDIFF_GUI_MAP (optional 8-bit RGBA PNGs: the demo document's picture and its Change Map layer),
DIFFDIFF_GUI_GO (optional: the file that starts the Generate stage).
"""

import hashlib
import json
import os
import time
import traceback

from krita import Extension, Krita, Selection
from PyQt5.QtCore import Qt, QTimer
from PyQt5.QtGui import QImage
from PyQt5.QtWidgets import QApplication, QDockWidget

DOCKER_ID = "differential_diffusion_docker"
SETTLE_MS = 4000  # let the window lay out its dockers first
REPORT_AFTER_MS = 4000  # the docker's client connects in the background meanwhile
CONNECT_WAIT_MS = 30000  # then up to this much longer while it is not connected yet
ZOOM = 1.0  # the demo document at 100 %


def _bgra(path):
    image = QImage(path).convertToFormat(QImage.Format_ARGB32)
    bits = image.constBits()
    bits.setsize(image.byteCount())
    return image.width(), image.height(), bytes(bits)


def _open_demo(window):
    picture, change_map = os.environ.get("DIFFDIFF_GUI_PICTURE"), os.environ.get("DIFFDIFF_GUI_MAP")
    if not picture:
        return None
    w, h, pixels = _bgra(picture)
    doc = Krita.instance().createDocument(w, h, "Differential Diffusion demo", "RGBA", "U8", "", 72.0)
    doc.rootNode().childNodes()[0].setPixelData(pixels, 0, 0, w, h)
    if change_map:
        _, _, map_pixels = _bgra(change_map)
        layer = doc.createNode("Change Map", "paintlayer")
        doc.rootNode().addChildNode(layer, None)
        layer.setPixelData(map_pixels, 0, 0, w, h)
        layer.setOpacity(150)
        doc.setActiveNode(layer)
    doc.refreshProjection()
    window.addView(doc)
    return doc


# The jobs the probe starts with the docker's Generate button, one per mode, as a painter would
# set them up: the demo document's Change Map layer; a selection softened by 12 px; a 4-column fan.
JOBS = [
    ("change_map", {}),
    ("soft_inpaint", {"selection": (560, 120, 240, 160), "widgets": {"softness": 12}}),
    ("fan", {"widgets": {"fan_columns": 4}}),
]
GO_WAIT_MS = 60000  # how long the probe waits for the test's go-ahead
JOB_WAIT_S = 90  # and then for the job it started


def _write_json(path, data):
    with open(path + ".tmp", "w") as f:
        json.dump(data, f)
    os.replace(path + ".tmp", path)


def _selection_box(doc):
    selection = doc.selection()
    if selection is None:
        return None
    return [selection.x(), selection.y(), selection.width(), selection.height()]


def _layers(doc):
    """Every layer of the document, top-level first: name, id, size and a hash of its pixels."""
    doc.waitForDone()  # layer additions and removals are applied by the image's own queue
    out = []

    def walk(node, depth):
        for child in node.childNodes():
            bounds = child.bounds()
            data = bytes(child.pixelData(bounds.x(), bounds.y(), bounds.width(), bounds.height()))
            out.append({"name": child.name(), "id": child.uniqueId().toString(), "depth": depth,
                        "type": child.type(), "visible": child.visible(), "opacity": child.opacity(),
                        "bounds": [bounds.x(), bounds.y(), bounds.width(), bounds.height()],
                        "sha256": hashlib.sha256(data).hexdigest()})
            walk(child, depth + 1)

    walk(doc.rootNode(), 0)
    return out


def _window():
    # The Window passed to createActions is a short-lived wrapper: ask Krita for it each time.
    windows = Krita.instance().windows()
    return windows[0] if windows else None


def _dockers(window):
    return [d for d in window.qwindow().findChildren(QDockWidget) if d.objectName() == DOCKER_ID]


def _docker_report(window):
    out = []
    for dock in _dockers(window):
        top_left = dock.mapToGlobal(dock.rect().topLeft())
        panel = getattr(dock, "panel", None)
        out.append({
            "title": dock.windowTitle(),
            "visible": dock.isVisible(),
            "floating": dock.isFloating(),
            "geometry": [top_left.x(), top_left.y(), dock.width(), dock.height()],
            "connection": panel.connection.text() if panel is not None else None,
            "generate_enabled": panel.generate.isEnabled() if panel is not None else None,
        })
    return out


def _arrange_for_screenshot(window):
    """Demo only: fill the screen and give the docker room (the painter would drag it so too)."""
    qwindow = window.qwindow()
    qwindow.setGeometry(QApplication.desktop().availableGeometry())
    ours = _dockers(window)
    for dock in qwindow.findChildren(QDockWidget):
        if dock.isVisible() and dock not in ours and dock.objectName() != "KisLayerBox":
            dock.hide()
    layers = [d for d in qwindow.findChildren(QDockWidget) if d.objectName() == "KisLayerBox"]
    if ours and layers:
        qwindow.resizeDocks([layers[0], ours[0]], [110, 900], Qt.Vertical)
        qwindow.resizeDocks([ours[0]], [380], Qt.Horizontal)
    view = window.activeView()
    if view is not None and view.canvas() is not None:
        view.canvas().setZoomLevel(ZOOM)


class GuiProbe(Extension):
    def setup(self):
        pass

    def createActions(self, window):
        QTimer.singleShot(SETTLE_MS, self._start)

    def _start(self):
        report = {"errors": []}
        try:
            window = _window()
            report["first_look"] = _docker_report(window)  # before anything is moved
            if _open_demo(window) is not None:
                _arrange_for_screenshot(window)
        except Exception:
            report["errors"].append(traceback.format_exc())
        QTimer.singleShot(REPORT_AFTER_MS, lambda: self._report(report, CONNECT_WAIT_MS))

    def _report(self, report, wait_left_ms):
        try:
            window = _window()
            geometry = window.qwindow().frameGeometry()
            report["window"] = [geometry.x(), geometry.y(), geometry.width(), geometry.height()]
            report["dockers"] = _docker_report(window)
        except Exception:
            report["errors"].append(traceback.format_exc())
        connected = any((d["connection"] or "").startswith("Connected") for d in report.get("dockers", []))
        if not connected and not report["errors"] and wait_left_ms > 0:
            # A loaded machine: give the docker's background connection more time, then report anyway.
            QTimer.singleShot(500, lambda: self._report(report, wait_left_ms - 500))
            return
        path = os.environ.get("DIFFDIFF_GUI_REPORT")
        if path:
            _write_json(path, report)
            if os.environ.get("DIFFDIFF_GUI_GO"):
                QTimer.singleShot(500, lambda: self._wait_for_go(path + ".generate.json", GO_WAIT_MS))

    def _wait_for_go(self, path, wait_left_ms):
        if os.path.exists(os.environ["DIFFDIFF_GUI_GO"]):
            self._generate(path)
        elif wait_left_ms > 0:
            QTimer.singleShot(500, lambda: self._wait_for_go(path, wait_left_ms - 500))

    def _generate(self, path):
        """Press Generate in the docker once per mode (JOBS) and follow each job through the
        controller's outcomes; the report lists one entry per job."""
        report = {"errors": [], "jobs": []}
        try:
            (dock,) = _dockers(_window())
            panel = dock.panel
            panel.controller.notice.connect(
                lambda kind, text: report["jobs"][-1]["notices"].append([kind, text]) if report["jobs"] else None)
            self._next_job(path, report, panel, Krita.instance().activeDocument(), list(JOBS))
        except Exception:
            report["errors"].append(traceback.format_exc())
            _write_json(path, report)

    def _next_job(self, path, report, panel, doc, jobs):
        if not jobs:
            _write_json(path, report)
            return
        mode, setup = jobs.pop(0)
        job = {"mode": mode, "notices": []}
        report["jobs"].append(job)
        try:
            from differential_diffusion.settings import MODES  # the installed plugin's own list

            panel.mode.setCurrentIndex(MODES.index(mode))
            for widget, value in setup.get("widgets", {}).items():
                getattr(panel, widget).setValue(value)
            selection = setup.get("selection")
            if selection:
                chosen = Selection()
                chosen.select(*selection, 255)
                doc.setSelection(chosen)
            job["selection_before"] = _selection_box(doc)
            job["before"] = _layers(doc)
            known = set(panel.controller.outcomes)
            panel.generate.click()
            job["message_after_click"] = panel.message.text()
            self._follow(path, report, job, panel, doc, jobs, known, time.monotonic() + JOB_WAIT_S)
        except Exception:
            report["errors"].append(traceback.format_exc())
            _write_json(path, report)

    def _follow(self, path, report, job, panel, doc, jobs, known, deadline):
        try:
            new = [o for ref, o in panel.controller.outcomes.items() if ref not in known]
            if (not new or not new[0].finished) and time.monotonic() < deadline:
                QTimer.singleShot(200, lambda: self._follow(path, report, job, panel, doc, jobs, known, deadline))
                return
            if new:
                outcome = new[0]
                job["outcome"] = {"state": outcome.state, "message": outcome.message,
                                  "previews": outcome.previews, "layer_names": outcome.layer_names}
            job["after"] = _layers(doc)
            job["selection_after"] = _selection_box(doc)
            job["history"] = panel.history.count()
        except Exception:
            report["errors"].append(traceback.format_exc())
            _write_json(path, report)
            return
        self._next_job(path, report, panel, doc, jobs)


Krita.instance().addExtension(GuiProbe(Krita.instance()))
