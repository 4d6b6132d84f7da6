"""Map tools, the later additions: grow/shrink and the radial pattern drawn by Qt (against numpy
references), a map request cancelled, and Segment by a click on the canvas (the widget-to-image
policy, and the click picker on a real Qt widget with synthetic mouse events)."""

from __future__ import annotations

import numpy as np
import pytest
from plugin_fakes import qapp
from test_plugin_maps import W, setup

from krita_plugin import map_pixels
from krita_plugin.canvas_point import CanvasClick, CanvasGeometry, image_point
from krita_plugin.qt import MOUSE_PRESS, QWidget
from shared import map_patterns, protocol


@pytest.fixture(autouse=True)
def _app():
    return qapp()


def reference_grow(a: np.ndarray, r: int, dilate: bool) -> np.ndarray:
    """Max (min) over the (2r + 1)-pixel square around each pixel; outside the map does not count."""
    h, w = a.shape
    pad = np.pad(a, r, constant_values=0 if dilate else 255)
    pick = np.maximum if dilate else np.minimum
    out = pad[0:h, 0:w]
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out = pick(out, pad[dy:dy + h, dx:dx + w])
    return out


@pytest.mark.parametrize("width,height", [(37, 23), (5, 64), (1, 1)])
@pytest.mark.parametrize("px", [1, 2, 3, 5, 8, -1, -4, -7])
def test_grow_and_shrink_equal_a_square_max_min_filter(width, height, px):
    a = np.random.default_rng(width * 100 + px + 50).integers(0, 256, (height, width), dtype=np.uint8)
    got = np.frombuffer(map_pixels.grow(a.tobytes(), width, height, px), np.uint8).reshape(height, width)
    assert np.array_equal(got, reference_grow(a, abs(px), px > 0))


def test_grow_keeps_binary_maps_binary_and_zero_changes_nothing():
    a = np.zeros((20, 30), np.uint8)
    a[8:12, 10:14] = 255
    grown = np.frombuffer(map_pixels.grow(a.tobytes(), 30, 20, 3), np.uint8).reshape(20, 30)
    assert grown[5:15, 7:17].all() and grown.sum() == 255 * 10 * 10
    assert map_pixels.grow(a.tobytes(), 30, 20, 0) == a.tobytes()
    with pytest.raises(ValueError):
        map_pixels.grow(b"\0" * 5, 3, 3, 1)


@pytest.mark.parametrize("width,height", [(333, 217), (64, 64), (1, 1), (2, 7), (1000, 3)])
def test_radial_by_qt_is_within_one_of_the_shared_pattern(width, height):
    ours = np.frombuffer(map_pixels.radial(width, height), np.uint8).astype(int)
    shared = np.frombuffer(map_patterns.radial(width, height), np.uint8).astype(int)
    assert ours.shape == shared.shape and np.abs(ours - shared).max() <= 1


def test_tools_grow_bakes_the_map_on_a_new_layer_in_its_place():
    c, client, canvas, notices, tools, before = setup()
    canvas.select(10, 8, 6, 4)
    made = tools.from_selection()
    old = canvas.find(made.layer_id)
    selected = old.bgra[..., 0].copy()
    assert tools.grow(2)
    layer = canvas.find(tools.current.layer_id)
    assert np.array_equal(layer.bgra[..., 0], reference_grow(selected, 2, True))
    assert canvas.removed == [old] and len(canvas.plugin_layers()) == 1
    assert tools.grow(-2)  # shrinking the grown square gives the selection back
    assert np.array_equal(canvas.find(tools.current.layer_id).bgra[..., 0], selected)


def test_a_map_request_is_cancelled_by_job_id_or_by_ref():
    c, client, canvas, notices, tools, before = setup()
    assert tools.from_depth()
    ref = protocol.loads(client.frames[-1][0])["ref"]
    assert tools.cancel() and client.cancels[-1] == {"type": "cancel", "ref": ref}
    client.feed(protocol.Cancelled(None, "cancelled by the client before it was accepted", ref))
    assert not tools.busy and tuple(notices[-1]) == ("info", "Map cancelled.")
    assert tools.from_depth()
    ref = protocol.loads(client.frames[-1][0])["ref"]
    client.feed(protocol.Accepted(ref, 41, 0, 0), protocol.Progress(41, 1, 2, 0.1, None))
    assert tools.cancel() and client.cancels[-1] == {"type": "cancel", "job_id": 41}
    client.feed(protocol.Cancelled(41, "cancelled by the client"))
    assert not tools.busy and tuple(notices[-1]) == ("info", "Map cancelled.")
    assert not canvas.plugin_layers() and snapshot_same(canvas, before)
    assert not tools.cancel()  # nothing running: nothing sent
    # Cancelled by ref while the server was accepting it: its job's cancellation is the painter's.
    assert tools.from_depth()
    ref = protocol.loads(client.frames[-1][0])["ref"]
    tools.cancel()
    client.feed(protocol.Accepted(ref, 42, 0, 0), protocol.Cancelled(42, "cancelled by the client"))
    assert not tools.busy and tuple(notices[-1]) == ("info", "Map cancelled.")


def snapshot_same(canvas, before) -> bool:
    from test_plugin_maps import snapshot

    return snapshot(canvas) == before


def test_widget_points_map_to_image_pixels_by_scroll_offset_and_zoom():
    # Figures measured in Krita 5.1.5's GUI (a dab painted at the widget point landed there).
    at_100 = CanvasGeometry(-223, -132, 1.0, 72.0)
    assert image_point(622, 431, at_100) == (399, 299) and image_point(472, 331, at_100) == (249, 199)
    at_33 = CanvasGeometry(-468, -323, 0.33, 72.0)
    assert image_point(622, 431, at_33) == (466, 327) and image_point(472, 331, at_33) == (12, 24)
    # A 300 ppi image at 100 %: Krita's zoomLevel() reads 300 / 72 times more.
    assert image_point(100, 50, CanvasGeometry(10, 20, 300 / 72, 300.0)) == (110, 70)
    assert image_point(100, 50, CanvasGeometry(100, 50, 2.0, 72.0)) == (100, 50)
    for unknown in (CanvasGeometry(0, 0, 1.0, 72.0, rotation=15.0), CanvasGeometry(0, 0, 1.0, 72.0, mirrored=True),
                    CanvasGeometry(0, 0, 0.0, 72.0)):
        assert image_point(10, 10, unknown) is None
    assert image_point(10, 10, CanvasGeometry(0, 0, 1.0, 72.0, rotation=360.0)) == (10, 10)


class ClickTarget:
    def __init__(self):
        self.widget = QWidget()
        self.widget.resize(200, 100)
        self.widget.show()
        self.geometry = CanvasGeometry(50, -10, 2.0, 72.0)
        self.presses = 0
        self.widget.mousePressEvent = lambda _event: setattr(self, "presses", self.presses + 1)

    def __call__(self):
        return self.widget, lambda: self.geometry


def _mouse(kind, x, y):
    from krita_plugin.qt import LEFT_BUTTON, QT_API, _modules

    QtCore, QtGui = _modules["QtCore"], __import__(f"{QT_API}.QtGui", fromlist=["QtGui"])
    buttons = LEFT_BUTTON if kind == MOUSE_PRESS else QtCore.Qt.MouseButton.NoButton
    point = QtCore.QPointF(x, y)
    return QtGui.QMouseEvent(kind, point, point, LEFT_BUTTON, buttons, QtCore.Qt.KeyboardModifier.NoModifier)


def test_the_picker_takes_one_click_swallows_it_and_esc_cancels():
    from krita_plugin.qt import MOUSE_RELEASE, QApplication

    target, got, cancelled = ClickTarget(), [], []
    picker = CanvasClick(target, got.append, lambda: cancelled.append(True))
    QApplication.sendEvent(target.widget, _mouse(MOUSE_PRESS, 30, 20))
    assert target.presses == 1 and got == []  # not picking: the click is Krita's
    assert picker.start() and picker.picking
    QApplication.sendEvent(target.widget, _mouse(MOUSE_PRESS, 30, 20))
    assert got == [(40, 5)] and target.presses == 1  # ((30 + 50) / 2, (20 - 10) / 2); Krita never saw it
    QApplication.sendEvent(target.widget, _mouse(MOUSE_RELEASE, 30, 20))
    assert not picker.picking
    QApplication.sendEvent(target.widget, _mouse(MOUSE_PRESS, 30, 20))
    assert target.presses == 2 and len(got) == 1  # the next click is Krita's again
    assert picker.start()
    from krita_plugin.qt import KEY_PRESS, QT_API, _modules

    QtCore, QtGui = _modules["QtCore"], __import__(f"{QT_API}.QtGui", fromlist=["QtGui"])
    QApplication.sendEvent(target.widget, QtGui.QKeyEvent(KEY_PRESS, QtCore.Qt.Key.Key_Escape,
                                                          QtCore.Qt.KeyboardModifier.NoModifier))
    assert cancelled == [True] and not picker.picking
    target.widget.close()


def test_segment_by_click_sends_the_point_and_falls_back_without_a_view():
    c, client, canvas, notices, tools, before = setup()
    canvas.select(4, 4, 20, 10)
    assert tools.segment_by_click()  # no view to click on (the fake host has none): the selection
    request = protocol.MakeMap.from_dict(protocol.loads(client.frames[-1][0]))
    assert request.box == protocol.Region(4, 4, 20, 10) and request.points == [(14, 9)]
    target = ClickTarget()
    target.geometry = CanvasGeometry(0, 0, 1.0, 72.0)
    c.host.canvas_click_target = target
    tools.picker.target = target
    assert tools.segment_by_click() and "Click on the object" in tools.status
    tools.picker.eventFilter(target.widget, _mouse(MOUSE_PRESS, 7, 5))
    request = protocol.MakeMap.from_dict(protocol.loads(client.frames[-1][0]))
    assert request.points == [(7, 5)] and request.box == protocol.Region(4, 4, 20, 10)
    tools.picker.stop()
    assert tools.segment_by_click()
    tools.picker.eventFilter(target.widget, _mouse(MOUSE_PRESS, W + 5, 1))
    assert "outside the canvas" in notices[-1][1]
    tools.picker.stop()
    target.widget.close()
