"""A docs-only Krita plugin for docs/make_maps_picture.py, installed in a throw-away profile
beside the Differential Diffusion plugin: once the main window is up it opens the scene as a
document, grabs it, adds the depth map through the docker's own map tools (as when the server's map
arrives: a new layer "Change Map · depth" on top), reshapes that layer with the docker's
transform code, and grabs Krita's canvas widget after each step.

Environment: DIFFDIFF_MAPS_JOB, a JSON file: {"scene": PNG, "depth": raw gray8 file, "out":
folder, "transforms": [{"name": ..., "fields": {MapTransform fields}}, ...]}. Writes
out/<name>.png per grab and out/report.json (written last: the script waits for it).
"""

import json
import os
import traceback

from krita import Extension, Krita
from PyQt5.QtCore import QTimer
from PyQt5.QtWidgets import QApplication, QDockWidget, QWidget

DOCKER_ID = "differential_diffusion_docker"
SETTLE_MS = 5000  # the window lays out its dockers, the docker builds its panel
DRAW_MS = 1500  # after a layer changes: the projection and the canvas redraw
MAP_OPACITY = 255  # the map shown on its own (the plugin adds it half transparent)


def _window():
    windows = Krita.instance().windows()
    return windows[0] if windows else None


def _canvas_widget(window):
    names = ("KisOpenGLCanvas2", "KisQPainterCanvas")
    found = [w for w in window.qwindow().findChildren(QWidget)
             if w.metaObject().className() in names and w.isVisible()]
    return found[0] if found else None


def _panel(window):
    docks = [d for d in window.qwindow().findChildren(QDockWidget) if d.objectName() == DOCKER_ID]
    return docks[0].panel if docks else None


class MapsPicture(Extension):
    def setup(self):
        pass

    def createActions(self, window):
        job = os.environ.get("DIFFDIFF_MAPS_JOB")
        if job:
            with open(job) as file:
                self.job = json.load(file)
            self.report = {"errors": [], "shots": []}
            QTimer.singleShot(SETTLE_MS, lambda: self._step(self._open))

    def _step(self, fn):
        try:
            fn()
        except Exception:
            self.report["errors"].append(traceback.format_exc())
            self._finish()

    def _open(self):
        window = _window()
        qwindow = window.qwindow()
        qwindow.setGeometry(QApplication.desktop().availableGeometry())
        self.doc = Krita.instance().openDocument(self.job["scene"])
        window.addView(self.doc)
        window.activeView().canvas().setZoomLevel(1.0)
        # The pan tool draws no brush outline on the canvas.
        pan = Krita.instance().action("PanTool")
        if pan is None:
            raise RuntimeError("Krita has no PanTool action")
        pan.trigger()
        QTimer.singleShot(DRAW_MS, lambda: self._step(lambda: self._grab("picture", self._add_depth)))

    def _add_depth(self):
        window = _window()
        self.panel = _panel(window)
        tools = self.panel.map_tools
        canvas = self.panel.controller.host.active_canvas()
        with open(self.job["depth"], "rb") as file:
            gray = file.read()
        # What MapTools does with the server's `map` answer: a new map layer on top.
        made = tools._add_map(canvas, "depth", gray)
        self.report["layer"] = made.name
        node = next(n for n in self.doc.topLevelNodes() if n.name() == made.name)
        self.report["plugin_opacity"] = node.opacity()
        node.setOpacity(MAP_OPACITY)
        self.doc.refreshProjection()
        self.transforms = list(self.job["transforms"])
        QTimer.singleShot(DRAW_MS, lambda: self._step(lambda: self._grab("depth", self._transform)))

    def _grab(self, name, then):
        window = _window()
        widget = _canvas_widget(window)
        path = os.path.join(self.job["out"], name + ".png")
        if not widget.grab().save(path):
            raise RuntimeError("could not save the canvas grab " + path)
        self.report["shots"].append({"name": name, "file": path})
        self.report["canvas_widget"] = widget.metaObject().className()
        self.report["zoom"] = window.activeView().canvas().zoomLevel()
        self.report["layers"] = [n.name() for n in self.doc.topLevelNodes()]
        window.qwindow().grab().save(os.path.join(self.job["out"], name + "-window.png"))
        then()

    def _transform(self):
        if not self.transforms:
            self._finish()
            return
        transform = self.transforms.pop(0)
        from shared.map_transforms import MapTransform  # the plugin's own copy (its vendor/)

        # The docker's transform row calls this as its controls move: only the map layer is rewritten.
        if not self.panel.map_tools.preview_transform(MapTransform(**transform["fields"])):
            raise RuntimeError("the map tools refused the transform " + repr(transform))
        self.doc.refreshProjection()
        QTimer.singleShot(DRAW_MS, lambda: self._step(lambda: self._grab(transform["name"], self._transform)))

    def _finish(self):
        path = os.path.join(self.job["out"], "report.json")
        with open(path + ".tmp", "w") as file:
            json.dump(self.report, file, indent=1)
        os.replace(path + ".tmp", path)


Krita.instance().addExtension(MapsPicture(Krita.instance()))
