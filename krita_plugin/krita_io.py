"""Krita's documents, layers and selections, as primitives (with krita_host.py, the only modules
that call the Krita API; krita_host is the docker, the window's canvas widget and the settings).

No policy lives here (which layer a mode reads, where results go, what to tell the painter: that
is jobs.py and the controller); this module only reads and writes what it is asked to, and:

- a closed document raises DocumentGone from every call, never an AttributeError on None;
- adding a layer never takes the painter's active layer: Krita activates a new layer a moment
  after it is inserted, so the painter's layer is given back once that happens;
- Krita 5.1's undo history (checked in its GUI): addChildNode, remove and startFilter are steps,
  setPixelData is not, and neither is a redraw here (refreshProjection: every setBlendingMode
  is a step, and a redraw through it pushed the painter's strokes out of their history).
"""

from __future__ import annotations

import time

from krita import Krita

from shared.protocol import Region

from .images import image_to_bgra
from .jobs import DocumentGone, JobInputError, LayerInfo
from .qt import QTimer

RGBA8 = ("RGBA", "U8")
SRGB_PROFILE = "sRGB-elle-V2-srgbtrc.icc"
BAND_ROWS = 256  # large fills go in bands so a 4K canvas never needs one 64 MB buffer
ACTIVE_RESTORE_S = 2.0  # how long to watch for Krita activating a layer the plugin just added


def _node_id(node) -> str:
    return node.uniqueId().toString()


def _walk(node):
    for child in node.childNodes():
        yield child
        yield from _walk(child)


def _is_rgba8(thing) -> bool:
    return (thing.colorModel(), thing.colorDepth()) == RGBA8


class DocumentCanvas:
    """One Krita document, as the rest of the plugin sees it: primitives only."""

    def __init__(self, document, active_layer=None) -> None:
        self.document = document
        # Scripts under kritarunner have no view, so Krita reports no active layer: they pin one.
        self.active_layer = active_layer
        self.key = self._root().uniqueId().toString()
        self._created: set[str] = set()  # layers this canvas added (the plugin's own)
        self._last_painter_layer: str | None = None

    # -- guards ------------------------------------------------------------------------------------
    def _root(self):
        try:
            root = self.document.rootNode() if self.document is not None else None
        except RuntimeError:  # the C++ document is gone
            root = None
        if root is None:
            raise DocumentGone("The document was closed.")
        return root

    def alive(self) -> bool:
        try:
            self._root()
        except DocumentGone:
            return False
        return True

    def node(self, node_id: str | None):
        if not node_id:
            return None
        for node in _walk(self._root()):
            if _node_id(node) == node_id:
                return node
        return None

    # -- reading -----------------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int]:
        self._root()
        return self.document.width(), self.document.height()

    def layers(self) -> list[LayerInfo]:
        """Every node, in stack order (later = higher), masks included."""
        out = []
        for node in _walk(self._root()):
            parent = node.parentNode()
            out.append(LayerInfo(_node_id(node), node.name(), node.type(),
                                 _node_id(parent) if parent is not None else None, node.visible()))
        return out

    def active_layer_id(self) -> str | None:
        self._root()
        node = self.active_layer if self.active_layer is not None else self.document.activeNode()
        return _node_id(node) if node is not None else None

    def selection_box(self) -> Region | None:
        self._root()
        selection = self.document.selection()
        if selection is None or selection.width() <= 0 or selection.height() <= 0:
            return None
        return Region(selection.x(), selection.y(), selection.width(), selection.height())

    def soft_selection(self, grow_px: int, softness_px: int) -> tuple[Region, bytes] | None:
        """A copy of the selection grown and feathered with Krita's own operations, as its box
        and one byte per pixel over it (the document's selection itself is left as it is)."""
        self._root()
        selection = self.document.selection()
        if selection is None or selection.width() <= 0:
            return None
        soft = selection.duplicate()
        if grow_px > 0:
            soft.grow(grow_px, grow_px)
        elif grow_px < 0:
            soft.shrink(-grow_px, -grow_px, False)
        if softness_px > 0:  # feather(0) would empty the selection
            soft.feather(softness_px)
        if soft.width() <= 0 or soft.height() <= 0:
            return None
        box = Region(soft.x(), soft.y(), soft.width(), soft.height())
        return box, bytes(soft.pixelData(box.x, box.y, box.width, box.height))

    def layer_pixels(self, node_id: str, region: Region) -> bytes:
        """8-bit BGRA of one layer over `region` (a detached copy is converted when the layer is
        not RGBA 8-bit); groups and other non-paint layers give what they render."""
        return self._read(self._readable(node_id), region)

    def layer_bands(self, node_id: str, rows: int):
        """The layer's 8-bit BGRA over the whole canvas, `rows` rows at a time, as (first row,
        bytes): a 4K map is looked at without one 64 MB copy (converted once, as layer_pixels)."""
        node = self._readable(node_id)
        width, height = self.size
        for y in range(0, height, rows):
            yield y, self._read(node, Region(0, y, width, min(rows, height - y)))

    def _readable(self, node_id: str):
        node = self.node(node_id)
        if node is None:
            raise JobInputError("The layer is gone: pick it again.")
        if not _is_rgba8(node):
            copy = node.duplicate()
            if not copy.setColorSpace(RGBA8[0], RGBA8[1], SRGB_PROFILE):
                raise JobInputError(
                    f"Layer '{node.name()}' is {node.colorModel()}/{node.colorDepth()} and could not be read as "
                    "8-bit RGBA: convert it with Layer > Convert > Convert Layer Color Space."
                )
            node = copy
        return node

    @staticmethod
    def _read(node, region: Region) -> bytes:
        if node.type() == "paintlayer":
            data = node.pixelData(region.x, region.y, region.width, region.height)
        else:
            data = node.projectionPixelData(region.x, region.y, region.width, region.height)
        data = bytes(data)
        if len(data) != region.width * region.height * 4:
            raise JobInputError(f"Could not read the pixels of layer '{node.name()}'.")
        return data

    def layer_thumbnail(self, node_id: str, max_side: int) -> bytes:
        """A small BGRA copy of one layer, `max_side` px on the canvas's long side: Krita samples the
        layer at that size, so it costs the same on a 4K canvas as on a small one (Live mode's look)."""
        node = self.node(node_id)
        if node is None:
            raise JobInputError("The layer is gone: pick it again.")
        width, height = self.size
        scale = min(1.0, max_side / max(width, height))
        return image_to_bgra(node.thumbnail(max(1, round(width * scale)), max(1, round(height * scale))))

    def projection_pixels(self, region: Region, hide_ids: list[str]) -> tuple[bytes, str]:
        """The visible picture over `region` without the layers in `hide_ids`, as 8-bit BGRA, and
        the colour model it was converted from ("" when it was 8-bit RGBA already).

        The painter's document is never touched: when a layer must be left out, or the document is
        not RGBA 8-bit, a clone is cropped to `region`, edited and closed instead.
        """
        doc = self.document
        root = self._root()
        hidden = [n for n in _walk(root) if _node_id(n) in set(hide_ids) and n.visible()]
        if not hidden and _is_rgba8(doc):
            return bytes(doc.pixelData(region.x, region.y, region.width, region.height)), ""
        converted = ""
        clone = doc.clone()
        try:
            for path in sorted((self._path(n) for n in hidden), reverse=True):  # deepest/last first
                node = clone.rootNode()
                for index in path:
                    node = node.childNodes()[index]
                node.remove()
            if (region.width, region.height) != (doc.width(), doc.height()):
                clone.crop(region.x, region.y, region.width, region.height)  # recompose only what is sent
                clone.waitForDone()
            if not _is_rgba8(clone):
                converted = f"{clone.colorModel()}/{clone.colorDepth()}"
                if not clone.setColorSpace(RGBA8[0], RGBA8[1], SRGB_PROFILE):
                    raise JobInputError(
                        f"This document is {converted}; it could not be converted to 8-bit RGBA for the "
                        "server. Convert it with Image > Convert Image Color Space."
                    )
            clone.refreshProjection()
            clone.waitForDone()
            data = bytes(clone.pixelData(0, 0, region.width, region.height))
        finally:
            clone.close()
        return data, converted

    def _path(self, node) -> list[int]:
        path = []
        while node.parentNode() is not None:
            parent = node.parentNode()
            siblings = [_node_id(n) for n in parent.childNodes()]
            path.insert(0, siblings.index(_node_id(node)))
            node = parent
        return path

    # -- writing (the plugin's own layers only; callers pass only ids they created) -------------------
    def add_layer(self, name: str, region: Region | None, bgra: bytes, above_id: str | None = None,
                  below_id: str | None = None, visible: bool = True, opacity: int = 255) -> str:
        """A new paint layer holding `bgra` at `region`: above `above_id`, else just below
        `below_id`, else on top (region None: an empty layer). The painter's active layer stays active."""
        doc = self.document
        root = self._root()
        painter_active = self._painter_layer()
        node = doc.createNode(name, "paintlayer")
        if not _is_rgba8(doc):
            node.setColorSpace(RGBA8[0], RGBA8[1], SRGB_PROFILE)  # results are 8-bit; keep them exact
        # Pixels first: inserting the filled layer refreshes just its extent, not the whole image.
        if region is not None:
            node.setPixelData(bgra, region.x, region.y, region.width, region.height)
        node.setVisible(visible)
        if opacity != 255:
            node.setOpacity(opacity)
        parent, above = root, None
        anchor = self.node(above_id)
        if anchor is None and below_id:
            below = self.node(below_id)
            if below is not None and below.parentNode() is not None:
                parent = below.parentNode()
                siblings = parent.childNodes()
                index = [_node_id(n) for n in siblings].index(below_id)
                above = siblings[index - 1] if index > 0 else below
        elif anchor is not None and anchor.parentNode() is not None:
            parent, above = anchor.parentNode(), anchor
        parent.addChildNode(node, above)  # above None = on top of the stack
        new_id = _node_id(node)
        self._created.add(new_id)
        self._give_back_active(painter_active)
        return new_id

    def _painter_layer(self) -> str | None:
        """The active layer if the painter's (not one this canvas made), else the last one seen."""
        active = self.active_layer_id()
        if active is not None and active not in self._created:
            self._last_painter_layer = active
        return self._last_painter_layer

    def _give_back_active(self, painter_active: str | None) -> None:
        """Krita activates a layer the plugin inserts (at once and again from its event loop) and
        may activate its neighbour when one is removed: whenever, during ACTIVE_RESTORE_S, the
        active layer is one this canvas made, make the painter's layer active again. A painter's
        layer picked meanwhile ends the watch."""
        if painter_active is None or self.active_layer is not None:
            return
        started = time.monotonic()

        def check() -> None:
            try:
                active = self.active_layer_id()
                if active in self._created:
                    node = self.node(painter_active)
                    if node is None:
                        return
                    self.document.setActiveNode(node)
                elif active not in (painter_active, None):
                    return  # the painter chose another layer
            except DocumentGone:
                return
            waited = time.monotonic() - started
            if waited < ACTIVE_RESTORE_S:
                # Krita's switch comes from its event loop: look again at once for a moment, then less often.
                QTimer.singleShot(0 if waited < 0.1 else 10, check)

        check()

    def write_layer(self, node_id: str, region: Region, bgra: bytes) -> bool:
        """Rewrite a layer's pixels in place and redraw the image (see `_refresh_layer`)."""
        node = self.node(node_id)
        if node is None:
            return False
        node.setPixelData(bgra, region.x, region.y, region.width, region.height)
        self._refresh_layer(node)
        return True

    def _refresh_layer(self, node) -> None:
        # Krita 5's scripting API has no "this rectangle changed". Setting a layer's blending mode
        # would mark exactly that layer dirty, but each call is a step in the painter's undo
        # history; setting its opacity, visibility, position or inherit-alpha marks nothing (5.1.5:
        # the image keeps showing the old pixels). Recomposing the image is no step; it costs about
        # 12 ms on a 2048 x 2048 image of two layers, more with each layer (bench/RESULTS.md, maps).
        self.document.refreshProjection()

    def set_layer_visible(self, node_id: str, visible: bool) -> bool:
        node = self.node(node_id)
        if node is None:
            return False
        if node.visible() != visible:
            node.setVisible(visible)
            self._refresh_layer(node)
        return True

    def rename_layer(self, node_id: str, name: str) -> bool:
        node = self.node(node_id)
        if node is None:
            return False
        node.setName(name)
        return True

    def remove_layer(self, node_id: str) -> bool:
        node = self.node(node_id)
        if node is None:
            return False
        painter_active = self._painter_layer()
        node.remove()
        self._give_back_active(painter_active)
        return True

    def replace_layer(self, node_id: str, bgra: bytes, restore: bytes | None = None) -> str | None:
        """A new layer like the old one holding `bgra` (whole canvas) just above it, then the old
        one removed: two undo steps; `restore` goes into the old layer first (what undo shows)."""
        node = self.node(node_id)
        if node is None:
            return None
        width, height = self.size
        if restore is not None:
            node.setPixelData(restore, 0, 0, width, height)
        new_id = self.add_layer(node.name(), Region(0, 0, width, height), bgra, above_id=node_id,
                                visible=node.visible(), opacity=node.opacity())
        self.remove_layer(node_id)
        return new_id

    def blur_layer(self, node_id: str, radius_px: int) -> bool:
        """Krita's own Gaussian blur over one whole layer (the map tools soften their map with it),
        run as Krita runs a filter from its menu: one step of the undo history."""
        node = self.node(node_id)
        if node is None:
            return False
        width, height = self.size
        blur = Krita.instance().filter("gaussian blur")
        config = blur.configuration()
        for key in ("horizRadius", "vertRadius"):
            config.setProperty(key, int(radius_px))
        blur.setConfiguration(config)
        if not blur.startFilter(node, 0, 0, width, height):  # no view to run it in: not undoable then
            blur.apply(node, 0, 0, width, height)
            self._refresh_layer(node)
        self.document.waitForDone()
        return True

    def layer_exists(self, node_id: str | None) -> bool:
        return self.node(node_id) is not None

    def fill_layer(self, node_id: str, bgra_pixel: bytes) -> bool:
        """Fill a layer with one colour, in bands (a 4K canvas never needs one 64 MB buffer)."""
        node = self.node(node_id)
        if node is None:
            return False
        width, height = self.size
        for y in range(0, height, BAND_ROWS):
            rows = min(BAND_ROWS, height - y)
            node.setPixelData(bgra_pixel * (width * rows), 0, y, width, rows)
        self._refresh_layer(node)
        return True
