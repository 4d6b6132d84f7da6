"""Stand-ins for Krita in the plugin's logic tests (no Krita needed; Qt offscreen, PyQt5 or PyQt6).

`FakeCanvas` keeps layers as numpy arrays and offers only krita_io.DocumentCanvas's primitives
(read a layer, read the picture without some layers, add/rewrite/remove a layer); the plugin's
policy runs on top of it unchanged. What Krita itself does (feathering) is checked in
tests/krita/test_plugin_krita.py, inside the real Krita.
`RecordingClient` is a ServerClient without a socket: a real protocol.ClientSession builds the
frames, and the test decodes them with the server's own SubmitCollector.
"""

from __future__ import annotations

import time

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np

from krita_plugin.jobs import DocumentGone, JobInputError, LayerInfo
from krita_plugin.qt import QApplication, QObject, Signal
from krita_plugin.settings import DictStore
from shared import protocol
from shared.protocol import Region


_APP: list[QApplication] = []  # one for the whole test session: never garbage-collected under a test


def qapp() -> QApplication:
    if not _APP:
        _APP.append(QApplication.instance() or QApplication(["plugin-tests"]))
    return _APP[0]


def caps(**values) -> protocol.Capabilities:
    base = dict(models=["tiny-sd", "other"], current_model="tiny-sd", schedulers=["DDIM", "Euler"],
                families=["sd"], native_resolution=64)
    base.update(values)
    return protocol.Capabilities(**base)


class FakeLayer:
    def __init__(self, layer_id: str, name: str, bgra: np.ndarray, visible: bool = True, owner: str = "painter",
                 opacity: int = 255):
        self.id, self.name, self.bgra, self.visible, self.owner = layer_id, name, bgra, visible, owner
        self.opacity = opacity
        self.type, self.parent_id = "paintlayer", None


class FakeCanvas:
    """A document: a stack of BGRA layers (bottom first), an optional selection (gray mask).

    It offers krita_io.DocumentCanvas's primitives and nothing more: which layer a job reads and
    where results go is the plugin's own policy (jobs.py, the controller), tested through these.
    """

    def __init__(self, picture: np.ndarray) -> None:
        self.height, self.width = picture.shape[:2]
        self.layers_: list[FakeLayer] = [FakeLayer("bg", "Background", picture.copy())]
        self.selection: np.ndarray | None = None
        self.active_id = "bg"
        self.writes = 0  # layers rewritten in place (previews)
        self.redraw_s = 0.0  # what redrawing the image costs after a write (Krita recomposes it all)
        self.thumbnails = 0  # layer_thumbnail calls (Live mode's looks)
        self.closed = False
        self.removed: list[FakeLayer] = []  # layers the plugin removed (Krita's undo would bring them back)
        self.key = f"doc{id(self)}"
        self._next = 1

    # -- painter side (the test) --
    def add_painter_layer(self, name: str, bgra: np.ndarray) -> str:
        layer = FakeLayer(f"p{self._next}", name, bgra.copy())
        self._next += 1
        self.layers_.append(layer)
        return layer.id

    def select(self, x: int, y: int, w: int, h: int) -> None:
        self.selection = np.zeros((self.height, self.width), np.uint8)
        self.selection[y:y + h, x:x + w] = 255

    def find(self, layer_id):
        return next((la for la in self.layers_ if la.id == layer_id), None)

    def by_name(self, name: str):
        return [la for la in self.layers_ if la.name == name]

    def plugin_layers(self) -> list[FakeLayer]:
        return [la for la in self.layers_ if la.owner == "plugin"]

    def projection(self, skip=()) -> np.ndarray:
        """Source-over of the visible layers (straight alpha; opaque layers in most tests)."""
        out = np.zeros((self.height, self.width, 4), np.float64)
        for layer in self.layers_:
            if layer.visible and layer.id not in skip:
                a = layer.bgra[..., 3:4] / 255.0 * layer.opacity / 255.0
                out[..., :3] = layer.bgra[..., :3] * a + out[..., :3] * (1 - a)
                out[..., 3:4] = 255 * a + out[..., 3:4] * (1 - a)
        return out.round().astype(np.uint8)

    def close(self) -> None:
        """The painter closes the document: every primitive raises DocumentGone from now on."""
        self.closed = True

    # -- krita_io.DocumentCanvas's primitives --
    def _alive(self) -> None:
        if self.closed:
            raise DocumentGone("The document was closed.")

    def alive(self) -> bool:
        return not self.closed

    @property
    def size(self) -> tuple[int, int]:
        self._alive()
        return self.width, self.height

    def layers(self):
        self._alive()
        return [LayerInfo(la.id, la.name, la.type, la.parent_id, la.visible) for la in self.layers_]

    def active_layer_id(self):
        self._alive()
        return self.active_id

    def selection_box(self):
        self._alive()
        if self.selection is None:
            return None
        ys, xs = np.nonzero(self.selection)
        return Region(int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))

    def soft_selection(self, grow_px: int, softness_px: int):
        """Krita grows and feathers; this stand-in hands the selection back as it is."""
        box = self.selection_box()
        if box is None:
            return None
        return box, self.selection[box.y:box.y + box.height, box.x:box.x + box.width].tobytes()

    def layer_pixels(self, layer_id: str, region: Region) -> bytes:
        self._alive()
        layer = self.find(layer_id)
        if layer is None:
            raise JobInputError("The layer is gone: pick it again.")
        return layer.bgra[region.y:region.y + region.height, region.x:region.x + region.width].tobytes()

    def layer_bands(self, layer_id: str, rows: int):
        for y in range(0, self.height, rows):
            yield y, self.layer_pixels(layer_id, Region(0, y, self.width, min(rows, self.height - y)))

    def layer_thumbnail(self, layer_id: str, max_side: int) -> bytes:
        self._alive()
        layer = self.find(layer_id)
        if layer is None:
            raise JobInputError("The layer is gone: pick it again.")
        self.thumbnails += 1
        scale = min(1.0, max_side / max(self.width, self.height))
        rows = (np.arange(max(1, round(self.height * scale))) / scale).astype(int)
        cols = (np.arange(max(1, round(self.width * scale))) / scale).astype(int)
        return layer.bgra[rows][:, cols].tobytes()  # sampled, as Krita's Node.thumbnail does

    def projection_pixels(self, region: Region, hide_ids):
        self._alive()
        full = self.projection(skip=set(hide_ids))
        return full[region.y:region.y + region.height, region.x:region.x + region.width].tobytes(), ""

    def _paste(self, region: Region, bgra: bytes, into: np.ndarray | None = None) -> np.ndarray:
        full = np.zeros((self.height, self.width, 4), np.uint8) if into is None else into
        full[region.y:region.y + region.height, region.x:region.x + region.width] = np.frombuffer(
            bgra, np.uint8).reshape(region.height, region.width, 4)
        return full

    def add_layer(self, name, region, bgra, above_id=None, below_id=None, visible=True, opacity=255):
        self._alive()
        pixels = self._paste(region, bgra) if region is not None else np.zeros((self.height, self.width, 4), np.uint8)
        layer = FakeLayer(f"r{self._next}", name, pixels, visible, owner="plugin", opacity=opacity)
        self._next += 1
        above, below = self.find(above_id), self.find(below_id)
        if above is not None:
            index = self.layers_.index(above) + 1
        elif below is not None:
            index = self.layers_.index(below)
        else:
            index = len(self.layers_)
        self.layers_.insert(index, layer)
        return layer.id

    def write_layer(self, layer_id, region, bgra):
        self._alive()
        layer = self.find(layer_id)
        if layer is None:
            return False
        assert layer.owner == "plugin", "the plugin rewrote a painter's layer"
        self.writes += 1
        self._paste(region, bgra, layer.bgra)
        time.sleep(self.redraw_s)
        return True

    def blur_layer(self, layer_id, radius_px):
        """Krita blurs with its Gaussian filter; this stand-in box-blurs each channel (edges clamped)."""
        self._alive()
        layer = self.find(layer_id)
        if layer is None:
            return False
        assert layer.owner == "plugin", "the plugin blurred a painter's layer"
        r = int(radius_px)
        padded = np.pad(layer.bgra.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="edge")
        kernel = np.ones(2 * r + 1) / (2 * r + 1)
        for axis in (0, 1):
            padded = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, padded)
        layer.bgra = padded[r:r + self.height, r:r + self.width].round().astype(np.uint8)
        return True

    def layer_exists(self, layer_id):
        self._alive()
        return self.find(layer_id) is not None

    def set_layer_visible(self, layer_id, visible):
        self._alive()
        layer = self.find(layer_id)
        if layer is None:
            return False
        layer.visible = visible
        return True

    def rename_layer(self, layer_id, name):
        self._alive()
        layer = self.find(layer_id)
        if layer is None:
            return False
        layer.name = name
        return True

    def remove_layer(self, layer_id):
        self._alive()
        layer = self.find(layer_id)
        assert layer is None or layer.owner == "plugin", "the plugin removed a painter's layer"
        if layer is None:
            return False
        self.layers_.remove(layer)
        self.removed.append(layer)
        return True

    def replace_layer(self, layer_id, bgra, restore=None):
        """Krita's way: `restore` into the old layer, a new layer like it just above, the old removed."""
        self._alive()
        old = self.find(layer_id)
        if old is None:
            return None
        if restore is not None:
            old.bgra = np.frombuffer(restore, np.uint8).reshape(self.height, self.width, 4).copy()
        new_id = self.add_layer(old.name, Region(0, 0, self.width, self.height), bgra, above_id=layer_id,
                                visible=old.visible, opacity=old.opacity)
        self.remove_layer(layer_id)
        return new_id

    def fill_layer(self, layer_id, bgra_pixel):
        self._alive()
        layer = self.find(layer_id)
        if layer is None:
            return False
        layer.bgra[...] = np.frombuffer(bgra_pixel, np.uint8)
        return True


class FakeHost:
    def __init__(self, canvas: FakeCanvas | None, store: DictStore | None = None) -> None:
        self.canvas = canvas
        self.store = store if store is not None else DictStore()

    def active_canvas(self):
        return self.canvas if self.canvas is not None and not self.canvas.closed else None

    def open_keys(self):
        return {self.canvas.key} if self.canvas is not None and not self.canvas.closed else set()


class RecordingClient(QObject):
    """A connected ServerClient without a socket: frames are recorded, events fed by the test."""

    state_changed = Signal(str, str)
    event = Signal(object)

    def __init__(self, capabilities: protocol.Capabilities | None = None) -> None:
        super().__init__()
        self.session = protocol.ClientSession(client="test")
        self.session.capabilities = capabilities or caps()
        self.frames: list[list[str | bytes]] = []
        self.cancels: list[dict] = []
        self.state = "connected"

    def submit(self, request, image_png, map_gray8):
        png = image_png() if callable(image_png) else image_png  # the real client encodes on its thread
        self.frames.append(self.session.submit(request, png, map_gray8))
        return request.ref

    def make_map(self, request, image_png):  # map makers (krita_plugin.map_tools)
        png = image_png() if callable(image_png) else image_png
        self.frames.append(self.session.make_map(request, png))
        return request.ref

    def cancel(self, job_id=None, ref=None):
        self.cancels.append(protocol.loads(self.session.cancel(job_id=job_id, ref=ref)))

    def connect_to(self, url, token=""):
        pass

    def close(self, timeout_s: float = 2.0):
        pass

    def received(self, index: int = -1) -> protocol.CompleteSubmit:
        """The job as the server would see it: parsed and checked by its SubmitCollector."""
        collector = protocol.SubmitCollector(self.session.capabilities)
        frames = self.frames[index]
        collector.add_submit(protocol.loads(frames[0]))
        complete = None
        for frame in frames[1:]:
            complete = collector.add_frame(protocol.decode_frame(frame))
        assert complete is not None, "the submit's frames were incomplete"
        return complete

    def feed(self, *events) -> None:
        for ev in events:
            self.event.emit(ev)
