"""Map tools inside the real Krita (called by tests/test_plugin_krita_maps.py): the docker's own
"Depth" button, the server's answer fed by hand, then the transform row."""

from __future__ import annotations

from kscript import add_paint_layer, entry, layer_pixels, new_document, picture_document, read_input
from plugin_checks import _FakeClient


class _MapClient(_FakeClient):
    """plugin_checks' stand-in client, also recording make_map requests; the check feeds the events."""

    def __init__(self):
        super().__init__()
        self.maps = []

    def make_map(self, request, image_png):
        request.ref = len(self.maps) + 1
        self.maps.append((request, image_png()))
        return request.ref


@entry
def map_from_depth(args: dict) -> dict:
    """Picture + the painter's own Change Map and ink; press "Depth", deliver the server's map:
    exactly one new layer, on top, named "Change Map · depth", holding that map; the painter's
    layers byte-identical. Then invert it from the transform row: only that layer changes."""
    from krita_plugin.controller import Controller
    from krita_plugin.docker import DiffDiffPanel
    from krita_plugin.images import png_to_bgra
    from krita_plugin.krita_host import KritaHost
    from krita_plugin.settings import DictStore
    from shared import protocol

    w, h = args["width"], args["height"]
    doc = picture_document(args)
    add_paint_layer(doc, "Ink", read_input(args, "ink.bgra"))
    add_paint_layer(doc, "Change Map", read_input(args, "map_layer.bgra"))
    before = layer_pixels(doc)
    client = _MapClient()
    controller = Controller(KritaHost(document=doc, store=DictStore()), client=client)
    notices = []
    controller.notice.connect(lambda level, text: notices.append([level, text]))
    client.state_changed.emit("connected", "ok")
    panel = DiffDiffPanel(controller.host, controller=controller)
    panel.maps.depth.click()
    assert client.maps, notices
    request, png = client.maps[0]
    depth = bytes((x * 255 // (w - 1)) for x in range(w)) * h
    for ev in (protocol.Accepted(request.ref, 9, 0, 0), protocol.Started(9, w, h, protocol.Region(0, 0, w, h)),
               protocol.Progress(9, 1, 2, 0.1, None), protocol.MapReady(9, "depth", w, h, depth),
               protocol.Done(9, 1, 0, {})):
        client.event.emit(ev)
    made = layer_pixels(doc)
    top = doc.rootNode().childNodes()[-1]
    top_pixels = bytes(top.pixelData(0, 0, w, h))
    panel.maps.invert.setChecked(True)
    panel.maps._live.timeout.emit()  # what its timer does a moment later
    shaped = layer_pixels(doc)
    inverted = bytes(top.pixelData(0, 0, w, h))
    panel.maps.soften_px.setValue(4)
    panel.maps.soften.click()  # Krita's own Gaussian blur, on that layer only
    softened = layer_pixels(doc)
    blurred = bytes(top.pixelData(0, 0, w, h))
    return {
        "request": request.to_dict(), "sent_picture": png_to_bgra(png).hex(), "before": before, "made": made,
        "shaped": shaped, "top_name": top.name(), "top_is_map": top_pixels[0::4] == depth,
        "opaque": set(top_pixels[3::4]) == {255}, "inverted": inverted[0::4] == bytes(255 - v for v in depth),
        "softened": softened, "blur_changed_it": blurred != inverted,
        "blur_opaque_gray": set(blurred[3::4]) == {255} and blurred[0::4] == blurred[1::4] == blurred[2::4],
        "notices": notices,
    }


@entry
def speeds(args: dict) -> dict:
    """Seconds, in Krita's own Python: a 4096 x 4096 map transform (table + translate), a
    4096 x 4096 radial pattern, and one live transform step on a 2048 x 2048 document (the map
    layer rewritten in place and refreshed)."""
    import os
    import time

    from krita_plugin.controller import Controller
    from krita_plugin.krita_host import KritaHost
    from krita_plugin.map_tools import MapTools
    from krita_plugin.settings import DictStore
    from shared import map_patterns
    from shared.map_transforms import MapTransform

    big = os.urandom(4096 * 4096)
    started = time.perf_counter()
    MapTransform(black=10, white=240, gamma=1.5, posterise=6, invert=True).apply(big)
    transform_s = time.perf_counter() - started
    started = time.perf_counter()
    map_patterns.radial(4096, 4096)
    radial_s = time.perf_counter() - started
    from krita_plugin import map_pixels

    started = time.perf_counter()
    map_pixels.radial(4096, 4096)  # what "Radial" draws: Qt's gradient
    radial_qt_s = time.perf_counter() - started
    grow_s = []
    for px in (8, 64):
        started = time.perf_counter()
        map_pixels.grow(big, 4096, 4096, px)
        grow_s.append(time.perf_counter() - started)

    side = args["side"]
    doc = new_document(side, side)
    client = _MapClient()
    controller = Controller(KritaHost(document=doc, store=DictStore()), client=client)
    tools = MapTools(controller)
    made = tools.from_pattern("gradient")
    doc.waitForDone()
    steps = []
    for gamma in (1.5, 2.0, 0.7):  # the first reads the layer back once (it may have been painted)
        started = time.perf_counter()
        assert tools.preview_transform(MapTransform(gamma=gamma))
        doc.waitForDone()
        steps.append(time.perf_counter() - started)
    return {"transform_4096_s": transform_s, "radial_4096_s": radial_s, "radial_qt_4096_s": radial_qt_s,
            "grow_4096_s": grow_s, "live_steps_s": steps,
            "layer": made.name if made else None}


@entry
def both(args: dict) -> dict:
    """Both checks in one Krita start (each start costs seconds)."""
    return {"depth": map_from_depth.__wrapped__(args["depth"]), "speeds": speeds.__wrapped__(args["speeds"])}
