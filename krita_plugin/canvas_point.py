"""Where a click on Krita's canvas lands in the image, from what Krita 5.1's scripting API and its
canvas widget tell, and the click picker (Krita-free: krita_io finds the widget and reads the
numbers).

Krita 5.1 has no widget-to-image transform in its Python API (Canvas.flakeToImageTransform and
the like came later). What it does give, checked in the real GUI by painting dabs at known widget
points (the brush lands where this says, within a pixel, at 33 %, 100 % and 200 %, scrolled or not):

- the canvas controller's scroll bars hold the document offset: the widget pixel at (0, 0) shows
  the image at (h + 0, v + 0) / scale, (h, v) the scroll bars' values;
- the scale (widget pixels per image pixel) is Canvas.zoomLevel() * 72 / the image's resolution
  in pixels per inch (zoomLevel() counts in points, so a 300 ppi image at 100 % reads 4.17).

A rotated or mirrored view moves pixels in ways these numbers do not say: no point then (the
caller falls back to the selection), rather than a wrong one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .qt import (KEY_ESCAPE, KEY_PRESS, LEFT_BUTTON, MOUSE_DOUBLE_CLICK, MOUSE_PRESS, MOUSE_RELEASE,
                 QApplication, QObject)

POINTS_PER_INCH = 72.0


@dataclass(frozen=True)
class CanvasGeometry:
    offset_x: int  # the canvas controller's horizontal scroll bar value
    offset_y: int  # and its vertical one
    zoom_level: float  # Canvas.zoomLevel()
    resolution: float  # Document.resolution(), pixels per inch
    rotation: float = 0.0  # Canvas.rotation(), degrees
    mirrored: bool = False  # Canvas.mirror()

    @property
    def scale(self) -> float:
        """Widget pixels per image pixel."""
        return self.zoom_level * POINTS_PER_INCH / (self.resolution or POINTS_PER_INCH)


def image_point(widget_x: float, widget_y: float, geometry: CanvasGeometry) -> tuple[int, int] | None:
    """The image pixel under the widget point, or None when the view is rotated or mirrored (or
    its zoom is not a number); the point may lie outside the image (the caller checks)."""
    if geometry.mirrored or geometry.rotation % 360.0 != 0.0:
        return None
    scale = geometry.scale
    if not (math.isfinite(scale) and scale > 0):
        return None
    return (math.floor((widget_x + geometry.offset_x) / scale),
            math.floor((widget_y + geometry.offset_y) / scale))


class CanvasClick(QObject):
    """While picking: the next left click on the canvas widget gives its image pixel to
    `on_point` (None where the view is rotated or mirrored, or its geometry is unknown), and
    neither that press nor its release reach Krita's tool; Esc gives up (`on_cancel`). The event
    filter is on the application only while picking (and until that click's release).

    `target()` is the host's canvas_click_target(): (widget, geometry function) or None."""

    def __init__(self, target, on_point, on_cancel, parent=None) -> None:
        QObject.__init__(self, parent)
        self.target, self.on_point, self.on_cancel = target, on_point, on_cancel
        self.widget = None
        self._geometry = None
        self._swallow_release = False
        self._installed = False

    @property
    def picking(self) -> bool:
        return self.widget is not None

    def start(self) -> bool:
        """False when there is no canvas to click on."""
        found = self.target()
        if found is None:
            return False
        self.widget, self._geometry = found
        self._swallow_release = False
        if not self._installed:
            QApplication.instance().installEventFilter(self)
            self._installed = True
        return True

    def stop(self) -> None:
        if self._installed:
            QApplication.instance().removeEventFilter(self)
            self._installed = False
        self.widget, self._geometry, self._swallow_release = None, None, False

    def eventFilter(self, obj, event) -> bool:
        kind = event.type()
        if self._swallow_release:
            if kind == MOUSE_RELEASE and event.button() == LEFT_BUTTON:
                self.stop()
                return True
            return False
        if self.widget is None:
            return False
        if kind == KEY_PRESS and event.key() == KEY_ESCAPE:
            self.stop()
            self.on_cancel()
            return True
        if obj is self.widget and kind in (MOUSE_PRESS, MOUSE_DOUBLE_CLICK) and event.button() == LEFT_BUTTON:
            where = event.position() if hasattr(event, "position") else event.pos()
            try:
                geometry = self._geometry()
            except RuntimeError:  # the view was closed meanwhile
                geometry = None
            self.widget, self._swallow_release = None, True  # installed until this click's release
            self.on_point(image_point(where.x(), where.y(), geometry) if geometry is not None else None)
            return True
        return False
