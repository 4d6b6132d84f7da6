"""Live mode's look at the change map inside the real Krita (called by test_plugin_krita_live.py):
what one look costs on a 4096 x 4096 document, against one full-resolution read, and whether it
sees a stroke."""

from __future__ import annotations

import time

from kscript import add_paint_layer, entry, new_document

BAND_ROWS = 256


def _fill(node, width: int, height: int, pixel: bytes) -> None:
    band = pixel * (width * BAND_ROWS)
    for y in range(0, height, BAND_ROWS):
        rows = min(BAND_ROWS, height - y)
        node.setPixelData(band[: width * rows * 4], 0, y, width, rows)


def _median_ms(action, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return sorted(times)[len(times) // 2]


@entry
def look_cost(args: dict) -> dict:
    from krita_plugin.change_watch import THUMBNAIL_PX, LayerWatcher
    from krita_plugin.krita_io import DocumentCanvas
    from shared.protocol import Region

    side = args["side"]
    doc = new_document(side, side, name="live")
    node = add_paint_layer(doc, "Change Map")
    _fill(node, side, side, bytes((0, 0, 0, 255)))
    doc.waitForDone()
    canvas = DocumentCanvas(doc)
    layer_id = canvas.layers()[-1].id
    watcher = LayerWatcher()
    watcher.changed(canvas, layer_id)
    look_ms = _median_ms(lambda: watcher.changed(canvas, layer_id), args.get("runs", 15))
    full_ms = _median_ms(lambda: canvas.layer_pixels(layer_id, Region(0, 0, side, side)), 3)
    unchanged = watcher.changed(canvas, layer_id)
    seen, after_ms = {}, []
    for width in (64, 24, 8):  # a stroke of this many pixels, somewhere in the middle
        x = side // 2 + width * 7
        node.setPixelData(bytes((255, 255, 255, 255)) * (width * width), x, x, width, width)
        doc.waitForDone()
        started = time.perf_counter()  # Krita caches a layer's thumbnail: this look makes it again
        seen[width] = watcher.changed(canvas, layer_id)
        after_ms.append((time.perf_counter() - started) * 1000)
    doc.close()
    return {"look_ms": look_ms, "look_after_stroke_ms": max(after_ms), "full_read_ms": full_ms,
            "unchanged_look_says_changed": unchanged,
            "stroke_seen": seen, "thumbnail_px": THUMBNAIL_PX}
