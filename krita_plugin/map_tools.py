"""Change maps made for the painter (Krita-free policy; the canvas through krita_io's primitives).

Each maker puts its map on a NEW layer named "<map layer> · <what>" ("Change Map · depth") on
top of the stack, so it is the map the next job reads (jobs.find_map_layer takes the topmost
layer named like the setting). Nothing of the painter's is touched: an older Change Map keeps its
pixels, name and visibility (hiding or renaming it would be editing the painter's layer), and it
is never part of the picture a job sends (jobs.maps_left_out). A transform then rewrites only
that new layer, in place, as the controls move; "Apply" keeps the result as the map to shape next.

Makers: the server's `depth` and `segments` (a make_map request; the selection's bounds are the
box to segment), the selection, the active layer's alpha, and the paper's fixed patterns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared import map_patterns, protocol
from shared.map_transforms import MapTransform
from shared.protocol import Region

from .canvas_point import CanvasClick
from .client import NotConnected
from .images import ImageError, bgra_to_png, change_map_from_bgra
from .jobs import MAP_NAME_SEPARATOR, DocumentGone, JobInputError, find_map_layer, maps_left_out
from .map_pixels import MAX_GROW_PX, gray_to_bgra, grow, radial
from .qt import QObject, Signal

MAP_OPACITY = 128  # like "Create Change Map layer": the picture shows through while painting
PATTERNS = ("gradient", "radial", "fan")
MAKER_LABELS = {"depth": "depth", "segments": "segment", "selection": "selection",
                "alpha": "layer alpha", "gradient": "gradient", "radial": "radial", "fan": "fan"}


def paste_gray(box: Region, gray: bytes, width: int, height: int) -> bytes:
    """`gray` (box-sized) on a black canvas of `width` x `height`; what lies outside it (a Krita
    selection may reach past the canvas) is dropped."""
    out = bytearray(width * height)
    x0, x1 = max(box.x, 0), min(box.x + box.width, width)
    if x0 >= x1:
        return bytes(out)
    for row in range(max(0, -box.y), min(box.height, height - box.y)):
        source = row * box.width + (x0 - box.x)
        start = (box.y + row) * width + x0
        out[start:start + x1 - x0] = gray[source:source + x1 - x0]
    return bytes(out)


def clip_to_canvas(box: Region, width: int, height: int) -> Region | None:
    x0, y0 = max(box.x, 0), max(box.y, 0)
    x1, y1 = min(box.x + box.width, width), min(box.y + box.height, height)
    return Region(x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


@dataclass
class MadeMap:
    """The last map layer made: the transform row rewrites it (and only it)."""

    canvas: Any
    layer_id: str
    name: str
    width: int
    height: int
    base: bytes | None  # the map the transform applies to; None: read the layer again first
    transform: MapTransform = field(default_factory=MapTransform)


class MapTools(QObject):
    changed = Signal()  # status or the current map changed: the panel re-reads
    made = Signal(object)  # a MadeMap, once its layer is on the canvas (scripts, tests)

    def __init__(self, controller: Any, parent: QObject | None = None) -> None:
        QObject.__init__(self, parent)
        self.controller = controller
        self.current: MadeMap | None = None
        self.status = ""
        self._by_ref: dict[int, tuple[Any, str]] = {}  # requests sent, until accepted
        self._by_job: dict[int, tuple[Any, str]] = {}
        self._cancelling: set[int] = set()  # job ids the painter cancelled
        self._cancelled_refs: set[int] = set()
        target = getattr(controller.host, "canvas_click_target", lambda: None)
        self.picker = CanvasClick(target, self._picked, self._pick_cancelled, self)
        controller.client.event.connect(self._on_event)
        controller.client.state_changed.connect(self._on_state)

    @property
    def busy(self) -> bool:
        return bool(self._by_ref or self._by_job)

    def _notice(self, level: str, text: str) -> None:
        self.controller.notice.emit(level, text)

    def _canvas(self):
        canvas = self.controller.host.active_canvas()
        if canvas is None:
            self._notice("error", "Open a document first.")
        return canvas

    # -- makers on this side ---------------------------------------------------------------------
    def from_selection(self) -> MadeMap | None:
        canvas = self._canvas()

        def read() -> bytes:
            width, height = canvas.size
            soft = canvas.soft_selection(0, 0)  # a copy of the selection, as it is
            if soft is None:
                raise JobInputError("Select something first: the map is white inside the selection.")
            return paste_gray(soft[0], soft[1], width, height)

        return self._make(canvas, "selection", read)

    def from_layer_alpha(self) -> MadeMap | None:
        canvas = self._canvas()

        def read() -> bytes:
            width, height = canvas.size
            layer_id = canvas.active_layer_id()
            if layer_id is None:
                raise JobInputError("Click the layer whose shape should change first.")
            return canvas.layer_pixels(layer_id, Region(0, 0, width, height))[3::4]

        return self._make(canvas, "alpha", read)

    def from_pattern(self, pattern: str) -> MadeMap | None:
        canvas = self._canvas()
        s = self.controller.settings.validated()

        def draw() -> bytes:
            width, height = canvas.size
            try:
                if pattern == "fan":
                    return map_patterns.fan(width, height, s.fan_columns, s.fan_low, s.fan_high)
                if pattern == "radial":  # Qt's gradient: tens of ms on 4K, where Python takes seconds
                    return radial(width, height)
                return map_patterns.PATTERNS[pattern](width, height)
            except ValueError as exc:  # e.g. more fan columns than pixels: a sentence, not a traceback
                raise JobInputError(str(exc)) from None

        return self._make(canvas, pattern, draw)

    def _make(self, canvas, what: str, read) -> MadeMap | None:
        if canvas is None:
            return None
        gray = self.controller._safely(read, canvas)
        return None if gray is None else self._add_map(canvas, what, gray)

    def _add_map(self, canvas, what: str, gray: bytes) -> MadeMap | None:
        name = f"{self.controller.settings.map_layer}{MAP_NAME_SEPARATOR}{MAKER_LABELS.get(what, what)}"

        def add() -> MadeMap:
            width, height = canvas.size
            if len(gray) != width * height:
                raise ImageError("The map is not the document's size any more (was it resized?).")
            layer_id = canvas.add_layer(name, Region(0, 0, width, height), gray_to_bgra(gray),
                                        opacity=MAP_OPACITY)  # on top: the map jobs read
            # base None: the first transform reads the layer, so painting on it first is kept.
            return MadeMap(canvas, layer_id, name, width, height, None)

        made = self.controller._safely(add, canvas)
        if made is not None:
            self.current = made
            self._notice("info", f"Added '{name}' on top: jobs read it. Shape it below or paint on it.")
            self.made.emit(made)
            self.changed.emit()
        return made

    # -- makers on the server --------------------------------------------------------------------
    def from_depth(self) -> bool:
        return self._ask_server("depth")

    def segment_by_click(self) -> bool:
        """Pick mode: the next left click on the canvas is the point to segment (Esc cancels).
        Without a canvas view to click on (scripts), the selection's bounds as before."""
        if self._canvas() is None:
            return False
        if self.picker.picking:  # pressed again: stop picking
            self.picker.stop()
            self._pick_cancelled()
            return False
        if not self.picker.start():
            return self.from_segment()
        self.status = "Click on the object to cut out (Esc cancels)."
        self.changed.emit()
        return True

    def _picked(self, point: tuple[int, int] | None) -> None:
        self.status = ""
        self.changed.emit()
        if point is None:
            self._notice("warning", "The view is rotated or mirrored, so the click's place in the picture "
                                    "is unknown: the selection's bounds are used instead.")
        self.from_segment(point)

    def _pick_cancelled(self) -> None:
        self.status = ""
        self.changed.emit()

    def from_segment(self, point: tuple[int, int] | None = None) -> bool:
        """The object under `point` (image pixels: where the painter clicked; with a selection,
        inside its bounds too), else the one inside the selection's bounds (its middle as the
        click)."""
        canvas = self._canvas()
        if canvas is None:
            return False
        if point is not None:
            def where() -> tuple[tuple[int, int], Region | None]:
                box = canvas.selection_box()
                return canvas.size, (None if box is None else clip_to_canvas(box, *canvas.size))

            (width, height), box = self.controller._safely(where, canvas) or ((0, 0), None)
            if not (0 <= point[0] < width and 0 <= point[1] < height):
                self._notice("error", "Click on the picture itself: that point is outside the canvas.")
                return False
            if box is not None and not (box.x <= point[0] < box.x + box.width
                                        and box.y <= point[1] < box.y + box.height):
                box = None  # a selection elsewhere says nothing about this object
            return self._ask_server("segments", canvas, points=[tuple(point)], box=box)

        def read() -> Region | None:
            box = canvas.selection_box()
            return None if box is None else clip_to_canvas(box, *canvas.size)

        box = self.controller._safely(read, canvas)
        if box is None:
            self._notice("error", "Select a rectangle around the object first: it is segmented inside it.")
            return False
        middle = (box.x + box.width // 2, box.y + box.height // 2)
        return self._ask_server("segments", canvas, points=[middle], box=box)

    def _ask_server(self, kind: str, canvas=None, **fields) -> bool:
        canvas = canvas if canvas is not None else self._canvas()
        if canvas is None:
            return False
        hide = [job.preview_id for job in self.controller.jobs.values() if job.preview_id]

        def read() -> tuple[int, int, bytes]:
            width, height = canvas.size
            layers, name = canvas.layers(), self.controller.settings.map_layer
            maps = maps_left_out(layers, name, find_map_layer(layers, name, set(hide)))
            bgra, _converted = canvas.projection_pixels(Region(0, 0, width, height), hide + maps)
            return width, height, bgra

        picture = self.controller._safely(read, canvas)
        if picture is None:
            return False
        width, height, bgra = picture
        request = protocol.MakeMap(0, kind, width, height, **fields)
        try:
            ref = self.controller.client.make_map(request, lambda: bgra_to_png(bgra, width, height))
        except NotConnected as exc:
            self._notice("error", str(exc))
            return False
        except protocol.ProtocolError as exc:
            self._notice("error", exc.message)
            return False
        self._by_ref[ref] = (canvas, kind)
        self.status = f"Making a {MAKER_LABELS[kind]} map…"
        self.changed.emit()
        return True

    def _on_event(self, ev: protocol.Event) -> None:
        # In order and one at a time with the controller's own handling (adding a layer may run
        # Qt's event loop).
        self.controller._one_at_a_time(lambda: self._handle(ev))

    def _handle(self, ev: protocol.Event) -> None:
        if isinstance(ev, protocol.Accepted) and ev.ref in self._by_ref:
            self._by_job[ev.job_id] = self._by_ref.pop(ev.ref)
            if ev.ref in self._cancelled_refs:  # cancelled by ref while on its way: the server ends it
                self._cancelled_refs.discard(ev.ref)
                self._cancelling.add(ev.job_id)
            return
        job_id = getattr(ev, "job_id", None)
        if isinstance(ev, protocol.Cancelled) and job_id is None and ev.ref in self._by_ref:
            self._by_ref.pop(ev.ref)  # cancelled before the server queued it
            self._notice("info", "Map cancelled.")
            self._settle()
            return
        if isinstance(ev, protocol.Error) and job_id is None and ev.ref in self._by_ref:
            self._by_ref.pop(ev.ref)  # refused before it was queued (the controller says why)
            if ev.code == protocol.E_UNKNOWN_TYPE:
                self._notice("error", "This server makes no maps (it is older than the plugin): update it.")
            self._settle()
            return
        if job_id not in self._by_job:
            return
        canvas, kind = self._by_job[job_id]
        if isinstance(ev, protocol.Progress):
            self.status = f"Making a {MAKER_LABELS[kind]} map… {ev.step}/{ev.total}"
            self.changed.emit()
        elif isinstance(ev, protocol.MapReady):
            self._add_map(canvas, kind, ev.gray8)
        elif isinstance(ev, (protocol.Done, protocol.Cancelled, protocol.Error)):
            del self._by_job[job_id]
            if isinstance(ev, protocol.Cancelled):
                self._notice("info", "Map cancelled." if job_id in self._cancelling else
                             f"The server stopped the map: {ev.reason}.")
            self._cancelling.discard(job_id)
            self._settle()

    def cancel(self) -> bool:
        """Cancel every map request still running (by job id once accepted, else by ref)."""
        if not self.busy:
            return False
        for job_id in self._by_job:
            self._cancelling.add(job_id)
            self.controller.client.cancel(job_id=job_id)
        for ref in self._by_ref:
            self._cancelled_refs.add(ref)
            self.controller.client.cancel(ref=ref)
        self.status = "Cancelling the map…"
        self.changed.emit()
        return True

    def _settle(self) -> None:
        self.status = "Making a map…" if self.busy else ""
        self.changed.emit()

    def _on_state(self, state: str, _text: str) -> None:
        if state != "connected" and self.busy:  # requests in flight will never be answered
            self.controller._one_at_a_time(self._forget_requests)

    def _forget_requests(self) -> None:
        self._by_ref.clear()
        self._by_job.clear()
        self._cancelling.clear()
        self._cancelled_refs.clear()
        self._settle()

    # -- the transform row -----------------------------------------------------------------------
    def preview_transform(self, transform: MapTransform) -> bool:
        """Rewrite the current map layer with `transform` applied to its map (only that layer)."""
        made = self.current
        if made is None:
            return False

        def write() -> bool:
            if made.base is None:  # the painter may have painted on it since the last Apply
                pixels = made.canvas.layer_pixels(made.layer_id, Region(0, 0, made.width, made.height))
                made.base = change_map_from_bgra(pixels, made.width, made.height)
            made.transform = transform
            return made.canvas.write_layer(made.layer_id, Region(0, 0, made.width, made.height),
                                           gray_to_bgra(transform.apply(made.base)))

        if not self.controller._safely(write, made.canvas):  # the layer or its document is gone
            self._forget_current()
            return False
        return True

    def soften(self, radius_px: int) -> bool:
        """Blur the current map layer with Krita's own filter (a step of Krita's undo history);
        transforms then start from it."""
        made = self.current
        if made is None or radius_px <= 0:
            return False
        if not self.controller._safely(lambda: made.canvas.blur_layer(made.layer_id, radius_px), made.canvas):
            self._forget_current()
            return False
        made.base, made.transform = None, MapTransform()
        self.changed.emit()
        return True

    def grow(self, px: int) -> bool:
        """Dilate (`px` > 0) or erode (`px` < 0) the current map by |px| pixels (a square: each
        pixel the max / min of the (2|px| + 1)-pixel square around it), kept like Apply."""
        made = self.current
        if made is None or px == 0:
            return False
        px = max(-MAX_GROW_PX, min(MAX_GROW_PX, px))

        def shaped() -> bytes:
            return grow(self._layer_map(made), made.width, made.height, px)

        return self._bake(made, shaped)

    def apply_transform(self) -> bool:
        """Keep what the layer shows: the next transform starts from it (and from any painting).

        The shaped map goes on a new layer in the old one's place (Krita's undo history gets an
        "Add Layer" and a "Remove Layer" step: two Ctrl+Z bring back the map as it was before
        shaping; the previews in between are not steps of their own)."""
        made = self.current
        if made is None:
            return False
        if made.transform.is_identity or made.base is None:  # nothing shaped: nothing to keep
            if not self._layer_alive(made):
                self._forget_current()
                return False
            made.base, made.transform = None, MapTransform()
            self.changed.emit()
            return True
        return self._bake(made, lambda: made.transform.apply(made.base))

    def _layer_map(self, made: MadeMap) -> bytes:
        pixels = made.canvas.layer_pixels(made.layer_id, Region(0, 0, made.width, made.height))
        return change_map_from_bgra(pixels, made.width, made.height)

    def _bake(self, made: MadeMap, shaped) -> bool:
        """Replace the map layer by one holding `shaped()` (undoable in Krita); the old layer gets
        back the map it had before the previews, so undoing brings back that."""

        def replace() -> str | None:
            gray = shaped()
            restore = gray_to_bgra(made.base) if made.base is not None else None
            return made.canvas.replace_layer(made.layer_id, gray_to_bgra(gray), restore)

        new_id = self.controller._safely(replace, made.canvas)
        if new_id is None:
            self._forget_current()
            return False
        made.layer_id, made.base, made.transform = new_id, None, MapTransform()
        self.changed.emit()
        return True

    def _layer_alive(self, made: MadeMap) -> bool:
        try:
            return bool(made.canvas.layer_exists(made.layer_id))
        except DocumentGone:
            return False

    def _forget_current(self) -> None:
        self.current = None
        self.changed.emit()
