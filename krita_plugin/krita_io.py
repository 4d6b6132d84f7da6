"""The only module that calls the Krita API: documents, layers, selections, settings, registration.

Everything Krita-specific is here so the rest of the plugin runs (and is tested) without Krita.
The plugin adds layers and rewrites only layers it created itself (the preview, its unapplied
results); it never changes or removes a layer the painter made.
"""

from __future__ import annotations

from krita import DockWidget, DockWidgetFactory, DockWidgetFactoryBase, Krita

from shared.protocol import Region

from .images import change_map_from_bgra
from .qt import QScrollArea
from .jobs import PREVIEW_LAYER_NAME, JobInputError, JobInputs, job_region, mode_label, region_area
from .settings import SETTINGS_GROUP, Settings

RGBA8 = ("RGBA", "U8")
SRGB_PROFILE = "sRGB-elle-V2-srgbtrc.icc"
DOCKER_ID = "differential_diffusion_docker"
BAND_ROWS = 256  # large fills go in bands so a 4K canvas never needs one 64 MB buffer


class KritaSettingsStore:
    """Settings in Krita's own configuration file (kritarc), group `differential_diffusion`."""

    def read(self, key: str, default: str) -> str:
        return Krita.instance().readSetting(SETTINGS_GROUP, key, default)

    def write(self, key: str, value: str) -> None:
        Krita.instance().writeSetting(SETTINGS_GROUP, key, value)


def active_document():
    return Krita.instance().activeDocument()


def _node_id(node) -> str:
    return node.uniqueId().toString()


def _walk(node):
    for child in node.childNodes():
        yield child
        yield from _walk(child)


def _is_rgba8(thing) -> bool:
    return (thing.colorModel(), thing.colorDepth()) == RGBA8


def _node_bgra(node, region: Region) -> bytes:
    """8-bit BGRA pixels of one node, converting a detached copy when the node is not RGBA 8-bit."""
    if not _is_rgba8(node):
        copy = node.duplicate()
        if not copy.setColorSpace(RGBA8[0], RGBA8[1], SRGB_PROFILE):
            raise JobInputError(
                f"Layer '{node.name()}' is {node.colorModel()}/{node.colorDepth()} and could not be read as "
                "8-bit RGBA: convert it with Layer > Convert > Convert Layer Color Space."
            )
        node = copy
    # Paint layers: their own pixels; groups and other layers: what they render (their projection).
    if node.type() == "paintlayer":
        data = node.pixelData(region.x, region.y, region.width, region.height)
    else:
        data = node.projectionPixelData(region.x, region.y, region.width, region.height)
    data = bytes(data)
    if len(data) != region_area(region) * 4:
        raise JobInputError(f"Could not read the pixels of layer '{node.name()}'.")
    return data


class DocumentCanvas:
    """One Krita document, as the rest of the plugin sees it."""

    def __init__(self, document, active_layer=None) -> None:
        self.document = document
        self.preview_id: str | None = None
        # Scripts under kritarunner have no view, so Krita reports no active layer: they pin one.
        self.active_layer = active_layer

    # -- reading -----------------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int]:
        return self.document.width(), self.document.height()

    def find_node(self, node_id: str | None):
        if not node_id:
            return None
        for node in _walk(self.document.rootNode()):
            if _node_id(node) == node_id:
                return node
        return None

    def find_layer(self, name: str):
        """The topmost layer called `name` (the plugin's own preview never counts)."""
        found = None
        for node in _walk(self.document.rootNode()):
            if node.name() == name and _node_id(node) != self.preview_id and node.type() != "selectionmask":
                found = node  # later in the walk = higher in the stack
        return found

    def selection_region(self) -> Region | None:
        selection = self.document.selection()
        if selection is None or selection.width() <= 0 or selection.height() <= 0:
            return None
        return Region(selection.x(), selection.y(), selection.width(), selection.height())

    def soft_selection(self, settings: Settings):
        """A copy of the selection grown and feathered with Krita's own operations (the document's
        selection itself is left as it is)."""
        selection = self.document.selection()
        if selection is None or selection.width() <= 0:
            return None
        soft = selection.duplicate()
        if settings.grow_px > 0:
            soft.grow(settings.grow_px, settings.grow_px)
        elif settings.grow_px < 0:
            soft.shrink(-settings.grow_px, -settings.grow_px, False)
        if settings.softness_px > 0:  # feather(0) would empty the selection
            soft.feather(settings.softness_px)
        return soft

    def projection_bgra(self, region: Region, hide_ids: list[str]) -> tuple[bytes, list[str]]:
        """The visible picture without the change map and the plugin's preview, as 8-bit BGRA.

        The painter's document is never touched: when a layer must be left out, or the document is
        not RGBA 8-bit, a clone is edited and closed instead.
        """
        doc = self.document
        notes: list[str] = []
        hidden = [n for n in (self.find_node(i) for i in hide_ids) if n is not None and n.visible()]
        if not hidden and _is_rgba8(doc):
            doc.refreshProjection()
            return bytes(doc.pixelData(region.x, region.y, region.width, region.height)), notes
        clone = doc.clone()
        try:
            paths = [self._path(n) for n in hidden]
            for path in sorted(paths, reverse=True):  # deepest/last first keeps earlier paths valid
                node = clone.rootNode()
                for index in path:
                    node = node.childNodes()[index]
                node.remove()
            if not _is_rgba8(clone):
                model, depth = clone.colorModel(), clone.colorDepth()
                if not clone.setColorSpace(RGBA8[0], RGBA8[1], SRGB_PROFILE):
                    raise JobInputError(
                        f"This document is {model}/{depth}; it could not be converted to 8-bit RGBA for the "
                        "server. Convert it with Image > Convert Image Color Space."
                    )
                notes.append(f"The {model}/{depth} picture was sent as 8-bit sRGB; results come back as 8-bit layers.")
            clone.refreshProjection()
            clone.waitForDone()
            data = bytes(clone.pixelData(region.x, region.y, region.width, region.height))
        finally:
            clone.close()
        return data, notes

    def _path(self, node) -> list[int]:
        path = []
        while node.parentNode() is not None:
            parent = node.parentNode()
            siblings = [_node_id(n) for n in parent.childNodes()]
            path.insert(0, siblings.index(_node_id(node)))
            node = parent
        return path

    def read_inputs(self, settings: Settings, active_node=None) -> JobInputs:
        """Everything a job needs from this document, for the settings' mode, source and region.

        Image and map cover the whole document; `region` (the selection's bounds, or None for the
        whole canvas) confines the change and lets the server take context from around it.
        """
        settings = settings.validated()
        width, height = self.size
        whole = Region(0, 0, width, height)
        map_node = None
        if settings.mode == "change_map":
            map_node = self.find_layer(settings.map_layer)
            if map_node is None:
                raise JobInputError(
                    f"No layer named '{settings.map_layer}': press 'Create Change Map layer' and paint white "
                    "where the picture may change."
                )
        soft = None
        if settings.mode == "soft_inpaint":
            soft = self.soft_selection(settings)
            if soft is None:
                raise JobInputError("Soft inpaint repaints the selection: select the area to repaint first.")

        # For soft inpaint the region is the feathered copy's bounds, so the soft edge is not cut off.
        if soft is not None:
            selection = Region(soft.x(), soft.y(), soft.width(), soft.height())
        else:
            selection = self.selection_region()
        region = job_region(width, height, selection, settings.region == "selection")

        source_node_id = None
        notes: list[str] = []
        if settings.source == "active_layer":
            node = next((n for n in (active_node, self.active_layer) if n is not None), None)
            node = node if node is not None else self.document.activeNode()
            if node is None:
                raise JobInputError("Source is 'Active layer' but no layer is active: click a layer first.")
            if map_node is not None and _node_id(node) == _node_id(map_node):
                raise JobInputError(
                    "The active layer is the change map itself: click the picture layer, or set Source to "
                    "'Visible picture'."
                )
            image = _node_bgra(node, whole)
            source_node_id = _node_id(node)
        else:
            hide = [i for i in (self.preview_id, _node_id(map_node) if map_node else None) if i]
            image, notes = self.projection_bgra(whole, hide)

        change_map = None
        if map_node is not None:
            change_map = change_map_from_bgra(_node_bgra(map_node, whole), width, height)
        elif soft is not None:
            change_map = bytes(soft.pixelData(0, 0, width, height))
        return JobInputs(width, height, image, change_map, settings.mode, region, source_node_id,
                         mode_label(settings), notes)

    # -- writing (only the plugin's own layers) ------------------------------------------------------
    def _new_layer(self, name: str, region: Region, bgra: bytes, above_id: str | None):
        doc = self.document
        node = doc.createNode(name, "paintlayer")
        if not _is_rgba8(doc):
            node.setColorSpace(RGBA8[0], RGBA8[1], SRGB_PROFILE)  # results are 8-bit; keep them exact
        above = self.find_node(above_id)
        if above is not None and above.parentNode() is not None:
            above.parentNode().addChildNode(node, above)
        else:
            doc.rootNode().addChildNode(node, None)  # None = on top of the stack
        node.setPixelData(bgra, region.x, region.y, region.width, region.height)
        return node

    def _refresh(self) -> None:
        self.document.refreshProjection()

    def set_preview(self, region: Region, bgra: bytes, above_id: str | None = None) -> str:
        """Create the preview layer, or rewrite it in place: there is only ever one."""
        node = self.find_node(self.preview_id)
        if node is None:
            node = self._new_layer(PREVIEW_LAYER_NAME, region, bgra, above_id)
            self.preview_id = _node_id(node)
        else:
            node.setPixelData(bgra, region.x, region.y, region.width, region.height)
        self._refresh()
        return self.preview_id

    def remove_preview(self) -> None:
        node = self.find_node(self.preview_id)
        self.preview_id = None
        if node is not None:
            node.remove()
            self._refresh()

    def add_result_layer(
        self, name: str, region: Region, bgra: bytes, above_id: str | None = None, visible: bool = True
    ) -> str:
        node = self._new_layer(name, region, bgra, above_id)
        node.setVisible(visible)
        self._refresh()
        return _node_id(node)

    def layer_exists(self, node_id: str) -> bool:
        return self.find_node(node_id) is not None

    def set_layer_visible(self, node_id: str, visible: bool) -> bool:
        node = self.find_node(node_id)
        if node is None:
            return False
        node.setVisible(visible)
        self._refresh()
        return True

    def rename_layer(self, node_id: str, name: str) -> bool:
        node = self.find_node(node_id)
        if node is None:
            return False
        node.setName(name)
        return True

    def remove_layer(self, node_id: str) -> bool:
        """Remove a layer the plugin created (an unapplied result); callers pass only their own ids."""
        node = self.find_node(node_id)
        if node is None:
            return False
        node.remove()
        self._refresh()
        return True

    def create_map_layer(self, name: str) -> str:
        """A new black paint layer on top, half opaque so the picture shows through while painting.

        Only its pixels count as the map (its opacity and visibility are ignored when reading).
        """
        doc = self.document
        width, height = self.size
        node = doc.createNode(name, "paintlayer")
        if not _is_rgba8(doc):
            node.setColorSpace(RGBA8[0], RGBA8[1], SRGB_PROFILE)
        doc.rootNode().addChildNode(node, None)
        for y in range(0, height, BAND_ROWS):
            rows = min(BAND_ROWS, height - y)
            node.setPixelData(bytes((0, 0, 0, 255)) * (width * rows), 0, y, width, rows)
        node.setOpacity(128)
        doc.setActiveNode(node)
        self._refresh()
        return _node_id(node)


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
            scroll = QScrollArea()  # the panel is taller than most docker areas
            scroll.setWidgetResizable(True)
            scroll.setWidget(self.panel)
            self.setWidget(scroll)
            self.panel.controller.connect_server()  # returns at once; retries in the background
            # Say goodbye to the server when Krita quits (it then cancels this client's jobs at once).
            Krita.instance().notifier().applicationClosing.connect(self.panel.controller.shutdown)

        def canvasChanged(self, canvas) -> None:
            self.panel.on_document_changed()

    Krita.instance().addDockWidgetFactory(
        DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockRight, DiffDiffDocker)
    )


class KritaHost:
    """What the panel needs from Krita: the active document's canvas and the settings store.

    `document` pins one document (scripts under kritarunner have no window, so no active one),
    `active_layer` the layer used when Source is 'Active layer'.
    """

    def __init__(self, document=None, store=None, active_layer=None) -> None:
        self.store = store if store is not None else KritaSettingsStore()
        self.document = document
        self.active_layer = active_layer
        self._canvases: dict = {}

    def active_canvas(self) -> DocumentCanvas | None:
        document = self.document if self.document is not None else active_document()
        if document is None:
            return None
        # Krita hands out a new Python wrapper per call; the document's root node is stable per document.
        key = document.rootNode().uniqueId().toString()
        canvas = self._canvases.get(key)
        if canvas is None or canvas.document is None:
            canvas = self._canvases[key] = DocumentCanvas(document)
        else:
            canvas.document = document
        if self.active_layer is not None:
            canvas.active_layer = self.active_layer
        return canvas


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
