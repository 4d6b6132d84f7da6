"""A test-only Krita plugin for tests/e2e/test_gui.py: once the main window is up, it (optionally)
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

from krita import Extension, Krita, ManagedColor, Selection
from PyQt5.QtCore import QEvent, QPoint, QPointF, Qt, QTimer
from PyQt5.QtGui import QImage, QMouseEvent
from PyQt5.QtWidgets import QApplication, QDialog, QDockWidget, QMessageBox, QWidget

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


# The jobs the probe starts with the docker's Generate button, as a painter would set them up:
# the demo document's Change Map layer; a selection softened by 12 px; a 4-column fan; a long job
# during which the painter paints a stroke; a small change on a 3000 x 2000 canvas; a long job
# whose document the painter closes halfway.
JOBS = [
    ("change_map", {}),
    ("soft_inpaint", {"selection": (560, 120, 240, 160), "widgets": {"softness": 12}}),
    ("fan", {"widgets": {"fan_columns": 4}}),
    ("change_map", {"name": "stroke", "widgets": {"steps": 150}, "during": "stroke"}),
    ("change_map", {"name": "big", "doc": "big", "widgets": {"steps": 30}}),
    ("change_map", {"name": "close", "doc": "big", "widgets": {"steps": 200}, "during": "close"}),
    ("change_map", {"name": "cancel", "widgets": {"steps": 200}, "during": "cancel"}),
]
BIG = (3000, 2000)
TICK_MS = 20  # the event-loop probe: a timer this often; a late tick is a gap the painter feels
GO_WAIT_MS = 60000  # how long the probe waits for the test's go-ahead
JOB_WAIT_S = 90  # and then for the job it started


def _big_document(window):
    """A 3000 x 2000 painting with a small painted change (a 200 x 150 white patch on its map)."""
    w, h = BIG
    doc = Krita.instance().createDocument(w, h, "Big painting", "RGBA", "U8", "", 72.0)
    background = doc.rootNode().childNodes()[0]
    for y in range(0, h, 250):
        rows = min(250, h - y)
        background.setPixelData(bytes((40 + y % 200, 90, 150, 255)) * (w * rows), 0, y, w, rows)
    layer = doc.createNode("Change Map", "paintlayer")
    doc.rootNode().addChildNode(layer, None)
    for y in range(0, h, 250):
        rows = min(250, h - y)
        layer.setPixelData(bytes((0, 0, 0, 255)) * (w * rows), 0, y, w, rows)
    layer.setPixelData(bytes((255, 255, 255, 255)) * (200 * 150), 2100, 1300, 200, 150)
    layer.setOpacity(128)
    doc.setActiveNode(background)
    doc.refreshProjection()
    window.addView(doc)
    return doc


class GapMeter:
    """A timer every TICK_MS: the longest wait between two ticks is the longest freeze."""

    def __init__(self):
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._tick)
        self.last = None
        self.gaps = []

    def start(self):
        self.last = time.monotonic()
        self.gaps = []
        self.timer.start()

    def _tick(self):
        now = time.monotonic()
        self.gaps.append(now - self.last)
        self.last = now

    def stop(self):
        self.timer.stop()
        return round(max(self.gaps, default=0.0) * 1000 - TICK_MS, 1)


def _canvas_widget(window):
    names = ("KisOpenGLCanvas2", "KisQPainterCanvas")
    found = [w for w in window.qwindow().findChildren(QWidget) if w.metaObject().className() in names
             and w.isVisible()]
    return found[0] if found else None


def _paint_stroke(window, dy=0):
    """A short brush stroke across the middle of the canvas (`dy` px lower), with mouse events as
    Krita gets them."""
    Krita.instance().action("KritaShape/KisToolBrush").trigger()
    widget = _canvas_widget(window)
    if widget is None:
        return "no canvas widget"
    c = widget.rect().center()
    points = [QPoint(c.x() - 60 + 10 * i, c.y() + dy) for i in range(13)]
    left, none = Qt.LeftButton, Qt.NoModifier
    QApplication.sendEvent(widget, QMouseEvent(QEvent.MouseButtonPress, QPointF(points[0]), left, left, none))
    for p in points[1:]:
        QApplication.sendEvent(widget, QMouseEvent(QEvent.MouseMove, QPointF(p), left, left, none))
    QApplication.sendEvent(widget, QMouseEvent(QEvent.MouseButtonRelease, QPointF(points[-1]), left, Qt.NoButton,
                                               none))
    return widget.metaObject().className()


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


def _undo_text():
    action = Krita.instance().action("edit_undo")
    return action.text() if action is not None else None


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
        """Press Generate in the docker once per job (JOBS) and follow each job through the
        controller's outcomes; the report lists one entry per job."""
        report = {"errors": [], "jobs": []}
        try:
            (dock,) = _dockers(_window())
            panel = dock.panel
            report["fit"] = _fit_report(dock, panel)
            panel.controller.notice.connect(
                lambda kind, text: report["jobs"][-1]["notices"].append([kind, text]) if report["jobs"] else None)
            self.server_times = {}
            panel.controller.client.event.connect(self._on_server_event)
            self.meter = GapMeter()
            self.docs = {"demo": Krita.instance().activeDocument()}
            self._next_job(path, report, panel, list(JOBS))
        except Exception:
            report["errors"].append(traceback.format_exc())
            _write_json(path, report)

    def _on_server_event(self, ev):
        kind = type(ev).__name__
        if kind == "Done":
            self.server_times[ev.job_id] = ev.timings.get("total_s")
        elif kind == "Progress":
            self.last_step = ev.step
        elif kind == "Cancelled":
            self.stopped_at = (self.last_step, time.monotonic())

    def _next_job(self, path, report, panel, jobs):
        if not jobs:
            report["dialogs"] = [w.windowTitle() for w in QApplication.topLevelWidgets()
                                 if isinstance(w, (QMessageBox, QDialog)) and w.isVisible()]
            try:  # last, the docker's own 'Create Change Map layer' on the demo document
                doc = self.docs["demo"]
                before = _layers(doc)
                active = doc.activeNode().uniqueId().toString() if doc.activeNode() else None
                panel.mode.setCurrentIndex(0)
                panel.create_map.click()
                QTimer.singleShot(800, lambda: self._after_create_map(path, report, doc, before, active))
            except Exception:
                report["errors"].append(traceback.format_exc())
                _write_json(path, report)
            return
        mode, setup = jobs.pop(0)
        job = {"mode": mode, "name": setup.get("name", mode), "notices": []}
        report["jobs"].append(job)
        try:
            from differential_diffusion.settings import MODES  # the installed plugin's own list

            window = _window()
            if setup.get("doc") == "big" and "big" not in self.docs:
                self.docs["big"] = _big_document(window)
                # Krita draws the new 3000 x 2000 view first (seconds): not part of the job's figures.
                jobs.insert(0, (mode, setup))
                report["jobs"].pop()
                QTimer.singleShot(3000, lambda: self._next_job(path, report, panel, jobs))
                return
            doc = self.docs[setup.get("doc", "demo")]
            view = [v for v in window.views() if v.document() == doc]
            if view:
                window.showView(view[0])
            panel.mode.setCurrentIndex(MODES.index(mode))
            for widget, value in setup.get("widgets", {}).items():
                getattr(panel, widget).setValue(value)
            selection = setup.get("selection")
            if selection:
                chosen = Selection()
                chosen.select(*selection, 255)
                doc.setSelection(chosen)
            if setup.get("during") == "stroke":
                Krita.instance().action("deselect").trigger()  # a stroke outside a selection paints nothing
                white = ManagedColor("RGBA", "U8", "")
                white.setComponents([1.0, 1.0, 1.0, 1.0])
                window.activeView().setForeGroundColor(white)
            job["selection_before"] = _selection_box(doc)
            job["before"] = _layers(doc)
            job["active_before"] = doc.activeNode().uniqueId().toString() if doc.activeNode() else None
            known = set(panel.controller.outcomes)
            self.meter.start()
            clicked = time.monotonic()
            panel.generate.click()
            job["message_after_click"] = panel.message.text()
            state = {"clicked": clicked, "during_done": False}
            self._follow(path, report, job, panel, doc, jobs, known, clicked + JOB_WAIT_S, setup, state)
        except Exception:
            report["errors"].append(traceback.format_exc())
            _write_json(path, report)

    def _after_create_map(self, path, report, doc, before, active):
        try:
            after = _layers(doc)
            known = {layer["id"] for layer in before}
            report["create_map"] = {
                "added": [layer["name"] for layer in after if layer["id"] not in known],
                "active_kept": (doc.activeNode().uniqueId().toString() if doc.activeNode() else None) == active,
            }
            self._map_from_depth(path, report, doc)
            return
        except Exception:
            report["errors"].append(traceback.format_exc())
        _write_json(path, report)

    def _map_from_depth(self, path, report, doc):
        """Last of all: Maps > Depth (the real server's depth model), then Invert in the transform
        row; the layers before, once the map came, and after Invert."""
        (dock,) = _dockers(_window())
        panel = dock.panel
        panel.maps.toggle.setChecked(True)
        maps = report["maps"] = {"before": _layers(doc), "notices": []}
        panel.controller.notice.connect(lambda kind, text: maps["notices"].append([kind, text]))
        panel.maps.depth.click()
        deadline = time.monotonic() + JOB_WAIT_S

        def wait():
            try:
                if panel.map_tools.busy and time.monotonic() < deadline:
                    QTimer.singleShot(100, wait)
                    return
                maps["made"] = _layers(doc)
                panel.maps.invert.setChecked(True)  # the transform row redraws that layer a moment later
                QTimer.singleShot(600, shaped)
            except Exception:
                report["errors"].append(traceback.format_exc())
                _write_json(path, report)

        def shaped():
            try:
                maps["shaped"] = _layers(doc)
                maps["undo_text_shaped"] = _undo_text()  # live previews are no undo steps
                panel.maps.apply.click()  # kept: a new layer in the old one's place (undoable)
                maps["applied"] = _layers(doc)
                for name in ("undo1", "undo2"):  # Ctrl+Z, as the painter presses it
                    Krita.instance().action("edit_undo").trigger()
                    QApplication.processEvents()
                    maps[name] = _layers(doc)
                for _ in range(2):
                    Krita.instance().action("edit_redo").trigger()
                    QApplication.processEvents()
                maps["redone"] = _layers(doc)
                self._live(path, report, doc)
                return
            except Exception:
                report["errors"].append(traceback.format_exc())
            _write_json(path, report)

        QTimer.singleShot(100, wait)

    def _live(self, path, report, doc):
        """Then Live (issue 16): the docker's Live toggle, three brush strokes on the map 400 ms
        apart (white, the painter's way), Keep, Live off; the layers at each point and the jobs the
        strokes started."""
        panel = _dockers(_window())[0].panel
        c, live = panel.controller, panel.controller.live
        out = report["live"] = {"notices": [], "results": []}
        c.notice.connect(lambda kind, text: out["notices"].append([kind, text]))
        c.client.event.connect(lambda ev: out["results"].append(ev.job_id) if type(ev).__name__ == "Result" else None)
        panel.live_box.toggle.setChecked(True)
        map_node = live.canvas.node(live._map_id())  # the map Live reads (the topmost: the depth map)
        out["map_name"] = map_node.name()
        deadline = time.monotonic() + JOB_WAIT_S
        state = {"strokes": 0}

        def settled():
            return not c.busy and not live._debounce.isActive()

        def stroke():
            try:
                if state["strokes"] == 0:
                    if not settled() and time.monotonic() < deadline:
                        QTimer.singleShot(100, stroke)
                        return
                    out["before"], out["jobs_before"] = _layers(doc), live.jobs_sent
                map_node.setPixelData(bytes((255, 255, 255, 255)) * (40 * 40), 300 + 60 * state["strokes"], 300, 40, 40)
                state["strokes"] += 1
                QTimer.singleShot(400 if state["strokes"] < 3 else 600, stroke if state["strokes"] < 3 else end)
            except Exception:
                report["errors"].append(traceback.format_exc())
                _write_json(path, report)

        def end():
            try:
                if not settled() and time.monotonic() < deadline:
                    QTimer.singleShot(100, end)
                    return
                out["jobs"] = live.jobs_sent - out["jobs_before"]
                out["latest"] = live.latest.job_id if live.latest else None
                out["at_end"] = _layers(doc)
                panel.live_box.keep.click()
                QTimer.singleShot(500, kept)
            except Exception:
                report["errors"].append(traceback.format_exc())
                _write_json(path, report)

        def kept():
            try:
                out["kept"] = _layers(doc)
                panel.live_box.toggle.setChecked(False)
                QTimer.singleShot(500, off)
            except Exception:
                report["errors"].append(traceback.format_exc())
                _write_json(path, report)

        def off():
            try:
                out["off"] = _layers(doc)
            except Exception:
                report["errors"].append(traceback.format_exc())
            _write_json(path, report)

        QTimer.singleShot(100, stroke)

    def _during(self, job, panel, doc, setup, state):
        """What the painter does while the job runs, once its preview is on the canvas."""
        action = setup.get("during")
        if action is None or state["during_done"]:
            return
        previews = [o for o in panel.controller.outcomes.values() if not o.finished and o.previews > 0]
        if not previews:
            return
        if action == "cancel" and not panel.status.text().startswith("Step "):
            return  # the painter presses Cancel while the docker shows a step
        state["during_done"] = True
        job["status_at_action"] = panel.status.text()
        if action == "stroke":
            job["active_during"] = doc.activeNode().uniqueId().toString() if doc.activeNode() else None
            job["stroke_canvas"] = _paint_stroke(_window())
        elif action == "cancel":
            job["cancel_shown"] = panel.status.text()  # "Step N/T…": what the painter saw when pressing
            job["cancel_server_step"] = getattr(self, "last_step", None)
            self.stopped_at = None
            state["cancel_clicked"] = time.monotonic()
            panel.cancel.click()
        elif action == "close":
            job["max_gap_before_close_ms"] = self.meter.stop()  # closing a view is the painter's own wait
            doc.setModified(False)
            doc.close()
            job["closed"] = True

    def _follow(self, path, report, job, panel, doc, jobs, known, deadline, setup, state):
        try:
            self._during(job, panel, doc, setup, state)
            new = [o for ref, o in panel.controller.outcomes.items() if ref not in known]
            if new and new[0].layer_ids and "click_to_layer_s" not in job:
                job["click_to_layer_s"] = round(time.monotonic() - state["clicked"], 3)
            if (not new or not new[0].finished or panel.controller.busy) and time.monotonic() < deadline:
                QTimer.singleShot(10, lambda: self._follow(path, report, job, panel, doc, jobs, known, deadline,
                                                           setup, state))
                return
            job["max_gap_ms"] = self.meter.stop()
            job["docker_busy_after"] = panel.controller.busy
            if "cancel_clicked" in state and getattr(self, "stopped_at", None):
                step, at = self.stopped_at
                job["cancel_stopped_step"] = step
                job["cancel_reply_ms"] = round((at - state["cancel_clicked"]) * 1000, 1)
            if new:
                outcome = new[0]
                job["outcome"] = {"state": outcome.state, "message": outcome.message,
                                  "previews": outcome.previews, "layer_names": outcome.layer_names}
                job["server_s"] = self.server_times.get(outcome.job_id)
            if job.get("closed"):
                job["history"] = panel.history.count()
                QTimer.singleShot(500, lambda: self._next_job(path, report, panel, jobs))
                return
            if "settled" not in state:  # what the painter finds once the canvas settles after the job
                state["settled"] = True
                QTimer.singleShot(300, lambda: self._follow(path, report, job, panel, doc, jobs, known, deadline,
                                                            setup, state))
                return
            job["after"] = _layers(doc)
            job["active_after"] = doc.activeNode().uniqueId().toString() if doc.activeNode() else None
            job["selection_after"] = _selection_box(doc)
            job["history"] = panel.history.count()
            job["kept_alpha"] = _kept_alpha(doc, job)
        except Exception:
            report["errors"].append(traceback.format_exc())
            _write_json(path, report)
            return
        self._next_job(path, report, panel, jobs)


def _kept_alpha(doc, job):
    """The largest alpha of the job's new layer where the map keeps the picture (its map is black
    there): a result shows only what changed."""
    before = {layer["id"] for layer in job["before"]}
    maps = [n for n in doc.rootNode().childNodes() if n.name() == "Change Map"]
    new = [n for n in doc.rootNode().childNodes() if n.uniqueId().toString() not in before]
    if not maps or not new or job["mode"] != "change_map":
        return None
    w, h = doc.width(), doc.height()
    step = max(w, h) // 200 or 1
    m = bytes(maps[-1].pixelData(0, 0, w, h))
    r = bytes(new[0].pixelData(0, 0, w, h))
    worst = 0
    for y in range(0, h, step):
        for x in range(0, w, step):
            i = (y * w + x) * 4
            if m[i] == 0 and m[i + 1] == 0 and m[i + 2] == 0:
                worst = max(worst, r[i + 3])
    return worst


def _fit_report(dock, panel):
    """The docker floated at 260 x 300 px: what a painter sees without scrolling."""
    from PyQt5.QtWidgets import QScrollArea

    was_floating = dock.isFloating()
    dock.setFloating(True)
    dock.resize(260, 300)
    QApplication.processEvents()
    scroll = dock.widget() if isinstance(dock.widget(), QScrollArea) else None
    viewport = scroll.viewport() if scroll is not None else dock.widget()
    out = {"size": [dock.width(), dock.height()],
           "horizontal_scroll": scroll.horizontalScrollBar().maximum() if scroll is not None else 0,
           "viewport": [viewport.width(), viewport.height()]}
    for name in ("prompt", "generate", "cancel", "progress", "status", "mode"):
        widget = getattr(panel, name)
        top_left = widget.mapTo(viewport, QPoint(0, 0))
        out[name] = [top_left.x(), top_left.y(), widget.width(), widget.height()]
    dock.setFloating(was_floating)
    QApplication.processEvents()
    return out


Krita.instance().addExtension(GuiProbe(Krita.instance()))
