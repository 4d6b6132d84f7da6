"""Live mode end to end inside the real Krita (called by tests/e2e/test_e2e_live.py): the
installed plugin's controller against the real server, strokes painted on the Change Map layer
by pixel writes 400 ms apart while Qt's event loop runs, as under a painter's brush."""

from __future__ import annotations

import time

from e2e_jobs import PluginRun, _picture_document, _settings, pump_until
from kscript import add_paint_layer, entry, layer_pixels, read_input, write_output

STROKE_GAP_S = 0.4


def _plugin_layers(doc, name: str) -> list:
    return [n for n in doc.rootNode().childNodes() if n.name() == name]


@entry
def live_strokes(args: dict) -> dict:
    from differential_diffusion.live import LIVE_LAYER_NAME

    doc = _picture_document(args)
    map_layer = add_paint_layer(doc, "Change Map", read_input(args, "map_layer.bgra"))
    run = PluginRun(doc, args["url"], _settings(args, mode="change_map", live_steps=4, live_scheduler="LCM",
                                                live_debounce_ms=250))
    c, live = run.controller, run.controller.live
    timings: dict = {}
    updated: dict = {}

    def on_event(ev) -> None:  # after the controller's own slot: the Live layer is drawn already
        name = type(ev).__name__
        if name == "Result":
            updated[ev.job_id] = time.monotonic()
        elif name == "Done":
            timings[ev.job_id] = dict(ev.timings)

    c.client.event.connect(on_event)
    assert live.set_enabled(True)
    pump_until(lambda: not c.busy, 60)
    jobs_before_strokes = live.jobs_sent
    white = bytes((255, 255, 255, 255))
    stroke_end = 0.0
    for i in range(3):
        x = 20 + 30 * i
        map_layer.setPixelData(white * (16 * 24), x, 30, 16, 24)  # a 16 x 24 dab of white
        stroke_end = time.monotonic()
        pump_until(lambda: False, STROKE_GAP_S)
    pump_until(lambda: not c.busy and not live._debounce.isActive(), 60)
    pump_until(lambda: False, 0.3)
    last = live.latest
    write_output(args, "live_png.png", last.png)
    write_output(args, "map_final.bgra", map_layer.pixelData(0, 0, doc.width(), doc.height()))
    live_nodes = _plugin_layers(doc, LIVE_LAYER_NAME)
    for i, node in enumerate(live_nodes):
        write_output(args, f"live{i}.bgra", node.pixelData(0, 0, doc.width(), doc.height()))
    at_end = layer_pixels(doc)
    kept_id = live.keep()
    doc.waitForDone()
    kept = [n for n in doc.rootNode().childNodes() if n.uniqueId().toString() == kept_id]
    after_keep = [n.name() for n in doc.rootNode().childNodes()]
    history = len(c.history.entries)
    live.set_enabled(False)
    doc.waitForDone()
    after_off = [n.name() for n in doc.rootNode().childNodes()]
    events = run.events
    c.shutdown()
    doc.close()
    return {
        "jobs_on_toggle": jobs_before_strokes, "jobs_total": live.jobs_sent,
        "accepted": events.count("Accepted"), "done": events.count("Done"), "cancelled": events.count("Cancelled"),
        "last_job": last.job_id, "last_region": [last.region.x, last.region.y, last.region.width,
                                                   last.region.height],
        "max_job": max(updated), "live_layers": len(live_nodes), "at_end": at_end,
        "kept_name": kept[0].name() if kept else None, "after_keep": after_keep, "after_off": after_off,
        "history": history, "notices": run.notices,
        "stroke_to_layer_s": updated[last.job_id] - stroke_end, "server": timings.get(last.job_id, {}),
    }
