"""The map tools without Krita (primitive fakes): every maker adds exactly one new layer on top,
named like the map so jobs read it, the painter's layers stay byte-identical, the transform row
rewrites only that new layer, and the job's map curve bends the map sent."""

from __future__ import annotations

import numpy as np
import pytest
from plugin_fakes import FakeCanvas, qapp
from test_plugin_controller import H, W, make, picture, png_bgra, settle

from krita_plugin.docker import DiffDiffPanel
from krita_plugin.jobs import find_map_layer
from krita_plugin.map_tools import MapTools, clip_to_canvas, gray_to_bgra, paste_gray
from shared import map_patterns, protocol
from shared import map_transforms as mt
from shared.map_transforms import MapTransform


@pytest.fixture(autouse=True)
def _app():
    return qapp()


def painter_canvas() -> FakeCanvas:
    canvas = FakeCanvas(picture(3))
    old_map = np.zeros((H, W, 4), np.uint8)
    old_map[:, : W // 2] = 255  # the painter's own map: white on the left half
    canvas.add_painter_layer("Change Map", old_map)
    return canvas


def snapshot(canvas: FakeCanvas) -> dict:
    return {la.id: (la.name, la.visible, la.opacity, la.bgra.tobytes())
            for la in canvas.layers_ if la.owner == "painter"}


def gray_of(layer) -> np.ndarray:
    return layer.bgra[..., 0].copy()


def setup():
    canvas = painter_canvas()
    c, client, canvas, notices = make(canvas, mode="change_map")
    return c, client, canvas, notices, MapTools(c), snapshot(canvas)


def test_a_pattern_goes_on_one_new_top_layer_that_jobs_then_read():
    c, client, canvas, notices, tools, before = setup()
    made = tools.from_pattern("gradient")
    assert made is not None and canvas.layers_[-1].id == made.layer_id
    assert [la.name for la in canvas.plugin_layers()] == ["Change Map · gradient"]
    assert np.array_equal(gray_of(canvas.layers_[-1]).ravel(), np.frombuffer(map_patterns.gradient(W, H), np.uint8))
    assert snapshot(canvas) == before
    assert find_map_layer(canvas.layers(), "Change Map").id == made.layer_id  # the newest map is read
    c.generate()
    sent = client.received()
    assert sent.map_gray8 == map_patterns.gradient(W, H)
    # Neither map is part of the picture sent: the painter's (half white) map would have lightened it.
    assert np.array_equal(png_bgra(sent.image_png)[..., :3], picture(3)[..., :3])


def test_selection_alpha_and_fan_makers():
    c, client, canvas, notices, tools, before = setup()
    assert tools.from_selection() is None and notices[-1][0] == "error"  # nothing selected: said so
    canvas.select(5, 6, 10, 7)
    made = tools.from_selection()
    expected = np.zeros((H, W), np.uint8)
    expected[6:13, 5:15] = 255
    assert np.array_equal(gray_of(canvas.find(made.layer_id)), expected)
    shape = np.zeros((H, W, 4), np.uint8)
    shape[2:9, 3:20, 3] = 200
    canvas.active_id = canvas.add_painter_layer("sketch", shape)
    before = snapshot(canvas)
    made = tools.from_layer_alpha()
    assert np.array_equal(gray_of(canvas.find(made.layer_id)), shape[..., 3])
    c.update_settings(fan_columns=3, fan_low=0.0, fan_high=1.0)
    made = tools.from_pattern("fan")
    assert sorted(set(gray_of(canvas.find(made.layer_id)).ravel().tolist())) == [0, 128, 255]
    assert len(canvas.plugin_layers()) == 3 and snapshot(canvas) == before
    c.update_settings(fan_low=0.9, fan_high=0.1)  # upside down: said, and no layer
    assert tools.from_pattern("fan") is None and "upside down" in notices[-1][1]
    assert len(canvas.plugin_layers()) == 3
    assert canvas.active_id != made.layer_id  # the painter's layer stays active


def test_the_transform_row_rewrites_only_the_new_layer_and_apply_keeps_it():
    c, client, canvas, notices, tools, before = setup()
    made = tools.from_pattern("gradient")
    base = np.frombuffer(map_patterns.gradient(W, H), np.uint8)
    shaped = MapTransform(black=40, white=200, gamma=1.5, invert=True)
    assert tools.preview_transform(shaped)
    layer = canvas.find(made.layer_id)
    assert np.array_equal(gray_of(layer).ravel(), np.frombuffer(shaped.apply(base.tobytes()), np.uint8))
    assert tools.preview_transform(MapTransform(posterise=3))  # from the map as made, not the last preview
    assert set(gray_of(layer).ravel().tolist()) == {0, 128, 255}
    index = canvas.layers_.index(layer)
    assert tools.apply_transform()
    # Kept the Krita way (undoable there): a new layer in the old one's place, like it, holding the
    # shaped map; the old one removed, holding the map as made again (what Ctrl+Z brings back).
    kept_layer = canvas.find(tools.current.layer_id)
    assert canvas.removed == [layer] and np.array_equal(gray_of(layer).ravel(), base)
    assert canvas.layers_.index(kept_layer) == index and kept_layer.name == layer.name
    assert (kept_layer.opacity, kept_layer.visible) == (layer.opacity, layer.visible)
    layer = kept_layer
    kept = gray_of(layer)
    assert set(kept.ravel().tolist()) == {0, 128, 255}
    assert tools.apply_transform() and canvas.find(layer.id) is layer  # nothing shaped since: no new layer
    layer.bgra[0:4, 0:4] = 255  # the painter paints on the new map after Apply
    assert tools.preview_transform(MapTransform(invert=True))
    expected = 255 - kept
    expected[0:4, 0:4] = 0
    assert np.array_equal(gray_of(layer), expected)
    assert snapshot(canvas) == before and len(canvas.plugin_layers()) == 1


def test_a_removed_map_layer_or_closed_document_is_no_error():
    c, client, canvas, notices, tools, before = setup()
    made = tools.from_pattern("radial")
    canvas.remove_layer(made.layer_id)
    assert not tools.preview_transform(MapTransform(invert=True)) and tools.current is None
    tools.from_pattern("radial")
    canvas.close()
    assert not tools.preview_transform(MapTransform(invert=True))
    assert tools.from_pattern("gradient") is None and tools.from_selection() is None


def test_map_from_depth_asks_the_server_and_adds_its_answer():
    c, client, canvas, notices, tools, before = setup()
    assert tools.from_depth() and tools.busy
    text, image = client.frames[-1]
    request = protocol.MakeMap.from_dict(protocol.loads(text))
    assert (request.kind, request.width, request.height) == ("depth", W, H)
    assert protocol.decode_frame(image).kind == protocol.FRAME_IMAGE_PNG
    depth = np.tile(np.arange(W, dtype=np.uint8) * 5, (H, 1)).tobytes()
    client.feed(protocol.Accepted(request.ref, 40, 0, 0), protocol.Progress(40, 1, 2, 0.1, None),
                protocol.MapReady(40, "depth", W, H, depth), protocol.Done(40, 1, 0, {}))
    [layer] = canvas.plugin_layers()
    assert layer.name == "Change Map · depth" and layer.bgra.tobytes() == gray_to_bgra(depth)
    assert not tools.busy and snapshot(canvas) == before
    # A refused request (an old server) is the controller's notice; the tools are idle again.
    assert tools.from_depth()
    ref = protocol.loads(client.frames[-1][0])["ref"]
    client.feed(protocol.Error(protocol.E_UNKNOWN_TYPE, "Unknown message type 'make_map'", ref=ref))
    assert not tools.busy and "update it" in notices[-1][1] and "make_map" in notices[-2][1]
    settle(c)  # the progress' coalesced repaint fires now, not on a controller a later test frees


def test_segment_needs_a_selection_and_sends_its_box():
    c, client, canvas, notices, tools, _ = setup()
    assert not tools.from_segment() and "Select" in notices[-1][1]
    canvas.select(4, 4, 20, 10)
    assert tools.from_segment()
    request = protocol.MakeMap.from_dict(protocol.loads(client.frames[-1][0]))
    assert request.box == protocol.Region(4, 4, 20, 10) and request.points == [(14, 9)]


def test_the_jobs_map_curve_bends_the_map_sent_and_keeps_black_black():
    c, client, canvas, notices, tools, _ = setup()
    c.update_settings(map_gamma=2.0)
    c.generate()
    sent = np.frombuffer(client.received().map_gray8, np.uint8)
    painted = np.zeros((H, W), np.uint8)
    painted[:, : W // 2] = 255
    assert np.array_equal(sent, np.frombuffer(mt.apply(mt.gamma(2.0), painted.tobytes()), np.uint8))
    tools.from_pattern("gradient")
    c.generate()
    sent = client.received().map_gray8
    assert sent == mt.apply(mt.gamma(2.0), map_patterns.gradient(W, H)) and sent[0] == 0


def test_the_maps_section_is_folded_fits_and_drives_the_tools():
    c, client, canvas, notices, *_ = setup()
    panel = DiffDiffPanel(c.host, controller=c)
    panel.resize(260, 300)
    panel.show()
    qapp().processEvents()
    assert panel.minimumSizeHint().width() <= 260 and not panel.maps.body.isVisible()
    panel.maps.toggle.click()
    qapp().processEvents()
    assert panel.maps.body.isVisible() and panel.minimumSizeHint().width() <= 260
    assert not panel.maps.apply.isEnabled()  # nothing to shape yet
    panel.maps.add_pattern.click()  # the first pattern: the gradient
    layer = canvas.layers_[-1]
    assert layer.name == "Change Map · gradient" and panel.maps.apply.isEnabled()
    panel.maps.invert.setChecked(True)
    panel.maps._live.timeout.emit()  # what the timer does 30 ms later
    assert layer.bgra[0, 0, 0] == 255 and layer.bgra[0, -1, 0] == 0
    panel.maps.apply.click()
    layer = canvas.layers_[-1]  # the shaped map, kept on a new layer in the old one's place
    assert layer.name == "Change Map · gradient" and len(canvas.plugin_layers()) == 1
    assert not panel.maps.invert.isChecked() and layer.bgra[0, 0, 0] == 255
    panel.maps.band.setValue(0)  # keep what is black now (the right edge), change the rest
    panel.maps.band_width.setValue(10)
    panel.maps._live.timeout.emit()
    assert layer.bgra[0, -1, 0] == 0 and layer.bgra[0, 0, 0] == 255
    assert panel.maps.transform().band == 0
    panel.maps.map_gamma.setValue(1.5)
    assert c.settings.map_gamma == 1.5
    panel.close()


@pytest.mark.parametrize("width,height", [(7, 3), (64, 5)])
def test_gray_to_bgra_is_opaque_gray_and_reads_back_as_the_same_map(width, height):
    from krita_plugin.images import change_map_from_bgra

    gray = np.random.default_rng(1).integers(0, 256, width * height, dtype=np.uint8).tobytes()
    bgra = np.frombuffer(gray_to_bgra(gray), np.uint8).reshape(-1, 4)
    g = np.frombuffer(gray, np.uint8)
    assert (bgra[:, 0] == g).all() and (bgra[:, 1] == g).all() and (bgra[:, 2] == g).all()
    assert (bgra[:, 3] == 255).all() and change_map_from_bgra(bgra.tobytes(), width, height) == gray


def test_a_selection_reaching_past_the_canvas_is_cut_to_it():
    gray = bytes(range(1, 13))  # a 4 x 3 box
    out = np.frombuffer(paste_gray(protocol.Region(-1, 1, 4, 3), gray, 5, 3), np.uint8).reshape(3, 5)
    assert out.tolist() == [[0, 0, 0, 0, 0], [2, 3, 4, 0, 0], [6, 7, 8, 0, 0]]
    assert not paste_gray(protocol.Region(9, 0, 4, 3), gray, 5, 3).strip(b"\0")
    assert clip_to_canvas(protocol.Region(-5, 2, 10, 10), 8, 6) == protocol.Region(0, 2, 5, 4)
    assert clip_to_canvas(protocol.Region(10, 0, 3, 3), 8, 6) is None


def test_soften_blurs_only_the_new_map_and_shaping_starts_from_it():
    c, client, canvas, notices, tools, before = setup()
    canvas.select(10, 8, 20, 12)
    made = tools.from_selection()
    layer = canvas.find(made.layer_id)
    assert set(gray_of(layer).ravel().tolist()) == {0, 255}
    assert tools.soften(3)
    soft = gray_of(layer)
    assert 0 < soft[14, 8] < 255 and soft[0, 0] == 0 and soft[14, 20] == 255  # the edge, not the rest
    assert tools.preview_transform(MapTransform(invert=True))
    assert np.array_equal(gray_of(layer), 255 - soft)
    assert snapshot(canvas) == before and len(canvas.plugin_layers()) == 1
    canvas.remove_layer(made.layer_id)
    assert not tools.soften(3) and tools.current is None
