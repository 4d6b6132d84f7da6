"""Krita's application side, for the docker and scripts (with krita_io.py, the only modules that
call the Krita API): the docker's registration, KritaHost (what the panel needs from Krita: the
active document's canvas, the open documents, the settings in kritarc, the canvas widget a click
lands on), and the entry points for scripts (docker_controller, script_controller).
"""

from __future__ import annotations

from krita import DockWidget, DockWidgetFactory, DockWidgetFactoryBase, Krita

from .canvas_point import CanvasGeometry
from .krita_io import DocumentCanvas
from .qt import SCROLL_OFF, QApplication, QScrollArea, QWidget
from .settings import SETTINGS_GROUP

DOCKER_ID = "differential_diffusion_docker"
# Krita 6's bindings know only the scoped spelling; Krita 5's accept it too (5.1 checked in kritarunner).
DOCK_RIGHT = DockWidgetFactoryBase.DockPosition.DockRight


class KritaSettingsStore:
    """Settings in Krita's own configuration file (kritarc), group `differential_diffusion`."""

    def read(self, key: str, default: str) -> str:
        return Krita.instance().readSetting(SETTINGS_GROUP, key, default)

    def write(self, key: str, value: str) -> None:
        Krita.instance().writeSetting(SETTINGS_GROUP, key, value)


def active_document():
    return Krita.instance().activeDocument()


CANVAS_WIDGETS = ("KisOpenGLCanvas2", "KisQPainterCanvas")  # Krita 5's canvas widget classes


def canvas_widget():
    """The canvas widget of the active window's view (the visible one), or None."""
    window = Krita.instance().activeWindow()
    if window is None or window.activeView() is None:
        return None
    for widget in window.qwindow().findChildren(QWidget):
        if widget.metaObject().className() in CANVAS_WIDGETS and widget.isVisible():
            return widget
    return None


def canvas_geometry(widget) -> CanvasGeometry | None:
    """What canvas_point needs: the canvas controller's scroll bars (the widget's scroll area),
    the view's zoom, rotation and mirroring, the document's resolution."""
    area = widget.parentWidget()
    while area is not None and not hasattr(area, "horizontalScrollBar"):
        area = area.parentWidget()
    view = Krita.instance().activeWindow().activeView()
    if area is None or view is None or view.canvas() is None or view.document() is None:
        return None
    canvas = view.canvas()
    return CanvasGeometry(area.horizontalScrollBar().value(), area.verticalScrollBar().value(),
                          canvas.zoomLevel(), view.document().resolution(), canvas.rotation(), canvas.mirror())


_DOCKERS: list = []  # every docker Krita built (one per main window), for docker_controller()


def register_docker(panel_factory, title: str = "Differential Diffusion") -> None:
    """Register the docker; `panel_factory(host)` builds the Krita-free panel widget."""

    class DiffDiffDocker(DockWidget):
        def __init__(self) -> None:
            super().__init__()
            self.setWindowTitle(title)
            self.setObjectName(DOCKER_ID)
            self.host = KritaHost()
            self.panel = panel_factory(self.host)
            _DOCKERS.append(self)
            # Laid out for a narrow slot: only "Advanced", when unfolded, may need to scroll (down).
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setHorizontalScrollBarPolicy(SCROLL_OFF)
            scroll.setWidget(self.panel)
            self.setWidget(scroll)
            self.panel.controller.connect_server()  # returns at once; retries in the background
            # Say goodbye to the server when Krita quits (it then cancels this client's jobs at once).
            Krita.instance().notifier().applicationClosing.connect(self.panel.controller.shutdown)
            # Also on Qt's own quit signal, for when Krita skips the above.
            QApplication.instance().aboutToQuit.connect(self.panel.controller.shutdown)

        def canvasChanged(self, canvas) -> None:
            self.panel.on_document_changed()

    Krita.instance().addDockWidgetFactory(DockWidgetFactory(DOCKER_ID, DOCK_RIGHT, DiffDiffDocker))


class KritaHost:
    """What the panel needs from Krita: the active document's canvas, the open documents, the
    settings store. `document` pins one document (scripts under kritarunner have no window, so
    no active one), `active_layer` the layer used when Source is 'Active layer'."""

    def __init__(self, document=None, store=None, active_layer=None) -> None:
        self.store = store if store is not None else KritaSettingsStore()
        self.document = document
        self.active_layer = active_layer
        self._canvases: dict = {}

    def active_canvas(self) -> DocumentCanvas | None:
        document = self.document if self.document is not None else active_document()
        if document is None:
            return None
        try:
            # Krita hands out a new Python wrapper per call; the root node's id is stable per document.
            key = document.rootNode().uniqueId().toString()
        except (AttributeError, RuntimeError):  # a document being closed
            return None
        canvas = self._canvases.get(key)
        if canvas is None:
            canvas = self._canvases[key] = DocumentCanvas(document)
        else:
            canvas.document = document
        if self.active_layer is not None:
            canvas.active_layer = self.active_layer
        return canvas

    def canvas_click_target(self):
        """The active view's canvas widget and a function giving its geometry now (for
        canvas_point.CanvasClick), or None without a view (kritarunner has none)."""
        widget = canvas_widget()
        return None if widget is None else (widget, lambda: canvas_geometry(widget))

    def open_keys(self) -> set[str]:
        """The keys of every document still open (a canvas whose key is missing was closed)."""
        keys = set()
        for document in Krita.instance().documents():
            try:
                keys.add(document.rootNode().uniqueId().toString())
            except (AttributeError, RuntimeError):
                continue
        return keys


def docker_controller():
    """The controller of the docker in Krita's (first) main window, or None when no docker was built.

    Lets a script drive the very panel the painter sees (see controller's module docstring)."""
    for docker in _DOCKERS:
        try:
            return docker.panel.controller
        except RuntimeError:  # the window (and its docker) was closed
            continue
    return None


def script_controller(url: str | None = None, token: str = "", document=None, active_layer=None,
                      persist: bool = False):
    """A Controller for scripts (kritarunner, the scripter, end-to-end tests), without a docker.

    It reads `document` (default: the active one; kritarunner has none, pass it) and, for Source
    'Active layer', `active_layer` (default: Krita's active node). Settings stay in memory unless
    `persist` (then in kritarc, shared with the docker). It does not connect until asked:
    `wait_connected()` connects to `url` and pumps Qt until the server's welcome arrived.
    """
    from .controller import Controller
    from .settings import DictStore

    host = KritaHost(document=document, store=None if persist else DictStore(), active_layer=active_layer)
    controller = Controller(host)
    if url is not None:
        controller.settings.server_url, controller.settings.token = url, token
    return controller
