"""Stand-ins for Krita in the plugin's logic tests (no Krita needed, PyQt5 offscreen).

`FakeCanvas` keeps layers as numpy arrays and reads job inputs with the plugin's own Krita-free
helpers (jobs.job_region, images.change_map_from_bgra, jobs.mode_label), the way krita_io does
with real Krita layers; what Krita itself does (feathering) is checked in test_plugin_krita.py.
`RecordingClient` is a ServerClient without a socket: a real protocol.ClientSession builds the
frames, and the test decodes them with the server's own SubmitCollector.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np

from krita_plugin.images import change_map_from_bgra
from krita_plugin.jobs import JobInputError, JobInputs, job_region, mode_label
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
    def __init__(self, layer_id: str, name: str, bgra: np.ndarray, visible: bool = True, owner: str = "painter"):
        self.id, self.name, self.bgra, self.visible, self.owner = layer_id, name, bgra, visible, owner


class FakeCanvas:
    """A document: a stack of BGRA layers (bottom first), an optional selection (gray mask)."""

    def __init__(self, picture: np.ndarray) -> None:
        self.height, self.width = picture.shape[:2]
        self.layers: list[FakeLayer] = [FakeLayer("bg", "Background", picture.copy())]
        self.selection: np.ndarray | None = None
        self.active_id = "bg"
        self.preview_id: str | None = None
        self.preview_writes = 0
        self._next = 1

    # -- painter side (the test) --
    def add_painter_layer(self, name: str, bgra: np.ndarray) -> str:
        layer = FakeLayer(f"p{self._next}", name, bgra.copy())
        self._next += 1
        self.layers.append(layer)
        return layer.id

    def select(self, x: int, y: int, w: int, h: int) -> None:
        self.selection = np.zeros((self.height, self.width), np.uint8)
        self.selection[y:y + h, x:x + w] = 255

    def find(self, layer_id):
        return next((la for la in self.layers if la.id == layer_id), None)

    def by_name(self, name: str):
        return [la for la in self.layers if la.name == name]

    def projection(self, skip=()) -> np.ndarray:
        """Opaque layers only in these tests: the topmost visible opaque pixel wins."""
        out = np.zeros((self.height, self.width, 4), np.uint8)
        for layer in self.layers:
            if layer.visible and layer.id not in skip:
                a = layer.bgra[..., 3:4] > 0
                out = np.where(a, layer.bgra, out)
        return out

    # -- what the controller calls (krita_io.DocumentCanvas's interface) --
    def read_inputs(self, settings) -> JobInputs:
        settings = settings.validated()
        map_layer = None
        if settings.mode == "change_map":
            found = [la for la in self.by_name(settings.map_layer) if la.owner == "painter"]
            if not found:
                raise JobInputError(f"No layer named '{settings.map_layer}'.")
            map_layer = found[-1]
        sel = None
        if self.selection is not None:
            ys, xs = np.nonzero(self.selection)
            sel = Region(int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
        if settings.mode == "soft_inpaint" and sel is None:
            raise JobInputError("Soft inpaint repaints the selection: select the area to repaint first.")
        region = job_region(self.width, self.height, sel, settings.region == "selection")
        source_id = None
        if settings.source == "active_layer":
            image = self.find(self.active_id).bgra
            source_id = self.active_id
        else:
            image = self.projection(skip={self.preview_id, map_layer.id if map_layer else None})
        change_map = None
        if map_layer is not None:
            change_map = change_map_from_bgra(map_layer.bgra.tobytes(), self.width, self.height)
        elif settings.mode == "soft_inpaint":
            change_map = self.selection.tobytes()
        return JobInputs(self.width, self.height, image.tobytes(), change_map, settings.mode, region, source_id,
                         mode_label(settings))

    def _paste(self, region: Region, bgra: bytes) -> np.ndarray:
        full = np.zeros((self.height, self.width, 4), np.uint8)
        full[region.y:region.y + region.height, region.x:region.x + region.width] = np.frombuffer(
            bgra, np.uint8).reshape(region.height, region.width, 4)
        return full

    def _insert(self, layer: FakeLayer, above_id) -> None:
        above = self.find(above_id)
        index = self.layers.index(above) + 1 if above is not None else len(self.layers)
        self.layers.insert(index, layer)

    def set_preview(self, region, bgra, above_id=None):
        self.preview_writes += 1
        layer = self.find(self.preview_id)
        if layer is None:
            layer = FakeLayer(f"preview{self._next}", "Differential Diffusion preview", self._paste(region, bgra),
                              owner="plugin")
            self._next += 1
            self._insert(layer, above_id)
            self.preview_id = layer.id
        else:
            layer.bgra = self._paste(region, bgra)
        return self.preview_id

    def remove_preview(self):
        layer = self.find(self.preview_id)
        self.preview_id = None
        if layer is not None:
            self.layers.remove(layer)

    def add_result_layer(self, name, region, bgra, above_id=None, visible=True):
        layer = FakeLayer(f"r{self._next}", name, self._paste(region, bgra), visible, owner="plugin")
        self._next += 1
        self._insert(layer, above_id)
        return layer.id

    def layer_exists(self, layer_id):
        return self.find(layer_id) is not None

    def set_layer_visible(self, layer_id, visible):
        layer = self.find(layer_id)
        if layer is None:
            return False
        layer.visible = visible
        return True

    def remove_layer(self, layer_id):
        layer = self.find(layer_id)
        assert layer is None or layer.owner == "plugin", "the plugin removed a painter's layer"
        if layer is None:
            return False
        self.layers.remove(layer)
        return True

    def create_map_layer(self, name):
        layer = FakeLayer(f"m{self._next}", name, np.tile(np.array([0, 0, 0, 255], np.uint8),
                                                           (self.height, self.width, 1)))
        self._next += 1
        self.layers.append(layer)
        return layer.id


class FakeHost:
    def __init__(self, canvas: FakeCanvas | None, store: DictStore | None = None) -> None:
        self.canvas = canvas
        self.store = store if store is not None else DictStore()

    def active_canvas(self):
        return self.canvas


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
