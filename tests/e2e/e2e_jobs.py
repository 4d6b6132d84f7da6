"""End-to-end jobs inside the real Krita (called by tests/e2e/test_e2e_krita.py).

Runs in Krita's embedded Python under kritarunner. It imports the plugin as a painter's Krita
does, `differential_diffusion` from the profile's pykrita folder (with the `websockets` and
`shared` vendored in the zip), and drives its real Controller and websocket client against a
real server. Qt's event loop is pumped while waiting: the client's events reach the controller
as queued signals. Inputs arrive as raw BGRA files, outputs go back as files and JSON, so the
expectations are computed outside Krita.
"""

from __future__ import annotations

import time

from kscript import add_paint_layer, entry, layer_pixels, picture_document, read_input, write_output

CONNECT_TIMEOUT_S = 60
JOB_TIMEOUT_S = 180


def pump_until(predicate, timeout_s: float) -> bool:
    """Run Qt's event loop until `predicate()` holds; False when `timeout_s` passed first."""
    from PyQt5.QtCore import QEventLoop
    from PyQt5.QtWidgets import QApplication

    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        QApplication.processEvents(QEventLoop.AllEvents, 50)
        time.sleep(0.005)
    return True


def _walk(node):
    for child in node.childNodes():
        yield child
        yield from _walk(child)


def _bounds(node) -> list[int]:
    rect = node.bounds()
    return [rect.x(), rect.y(), rect.width(), rect.height()]


class PluginRun:
    """The installed plugin's script controller on one document, connected to the real server."""

    def __init__(self, doc, url: str, settings: dict) -> None:
        from differential_diffusion.jobs import PREVIEW_LAYER_NAME
        from differential_diffusion.krita_host import script_controller

        self.doc = doc
        self.preview_name = PREVIEW_LAYER_NAME
        # The real ServerClient (websocket thread) and DocumentCanvas; settings kept in memory.
        self.controller = script_controller(url, document=doc)
        self.canvas = self.controller.host.active_canvas()
        self.notices: list[list[str]] = []
        self.events: list[str] = []
        self.previews: list[dict] = []  # what the layer stack held after each preview event
        self.controller.notice.connect(lambda level, text: self.notices.append([level, text]))
        self.controller.client.event.connect(self._on_event)
        self.controller.update_settings(**settings)
        if not self.controller.wait_connected(timeout_s=CONNECT_TIMEOUT_S):  # pumps Qt's event loop
            raise RuntimeError(f"never connected to {url}: {self.controller.connection_text}")

    def _on_event(self, ev) -> None:
        # Connected after the controller's own slot, so the layers already reflect this event.
        name = type(ev).__name__
        self.events.append(name)
        if name == "Preview":
            nodes = [n for n in _walk(self.doc.rootNode()) if n.name() == self.preview_name]
            self.previews.append({
                "step": ev.step,
                "region": [ev.region.x, ev.region.y, ev.region.width, ev.region.height],
                "layers": [{"id": n.uniqueId().toString(), "bounds": _bounds(n), "visible": n.visible()}
                           for n in nodes],
            })

    def generate(self, args: dict, job=None) -> dict:
        """Send the job the document makes, wait for its end; the layers and everything seen on the way."""
        doc = self.doc
        before = layer_pixels(doc)
        outcome = self.controller.run_job(timeout_s=JOB_TIMEOUT_S, job=job)  # pumps Qt until done, cancelled or failed
        pump_until(lambda: False, 0.2)  # anything queued right behind 'done'
        after = layer_pixels(doc)
        old_ids = {v["id"] for v in before.values()}
        new_layers = []
        for node in _walk(doc.rootNode()):
            node_id = node.uniqueId().toString()
            if node_id in old_ids:
                continue
            file = f"new{len(new_layers)}.bgra"
            write_output(args, file, node.pixelData(0, 0, doc.width(), doc.height()))
            new_layers.append({"id": node_id, "name": node.name(), "type": node.type(), "visible": node.visible(),
                               "bounds": _bounds(node), "file": file,
                               "color": [node.colorModel(), node.colorDepth()]})
        order = [n.name() for n in doc.rootNode().childNodes()]
        history = []
        for i, e in enumerate(self.controller.history.entries):
            # Each variant shown on the job's one layer in turn, as a click on its thumbnail does.
            self.controller.show_result(e.key)
            doc.waitForDone()
            node = self.canvas.node(e.layer_id)
            write_output(args, f"entry{i}.bgra", node.pixelData(0, 0, doc.width(), doc.height()))
            history.append({"name": e.name, "seed": e.seed, "index": e.index, "layer_id": e.layer_id,
                            "region": [e.region.x, e.region.y, e.region.width, e.region.height],
                            "file": f"entry{i}.bgra", "shown_name": node.name()})
        busy = self.controller.busy
        self.controller.shutdown()
        return {"before": before, "after": after, "new_layers": new_layers, "history": history, "order": order,
                "events": self.events, "previews": self.previews, "notices": self.notices, "busy": busy,
                "outcome": {"state": outcome.state, "message": outcome.message, "previews": outcome.previews,
                            "layer_ids": outcome.layer_ids, "seed": outcome.seed}}


def _modules() -> dict:
    """Where the plugin and its vendored libraries were imported from (the profile, not the repo)."""
    import differential_diffusion
    import shared
    import websockets

    return {"plugin": differential_diffusion.__file__, "shared": shared.__file__,
            "websockets": websockets.__file__}


def _picture_document(args: dict, ink: bool = True):
    doc = picture_document(args, name="e2e")
    if ink:
        add_paint_layer(doc, "Ink", read_input(args, "ink.bgra"))
    return doc


def _settings(args: dict, **mode) -> dict:
    return {"prompt": "a red barn in the snow", "steps": args.get("steps", 8), "guidance": 5.0,
            "random_seed": False, "seed": args.get("seed", 1234), "variants": args.get("variants", 1),
            "preview_every": 1, "source": "projection", "region": "canvas", **mode}


def _crop(job, args: dict) -> list[int]:
    """Where on the canvas the job's picture and map were read (the plugin reads only what the
    server will process)."""
    crop = job.inputs.crop
    return [crop.x, crop.y, crop.width, crop.height] if crop is not None else [0, 0, args["width"], args["height"]]


@entry
def change_map_job(args: dict) -> dict:
    """Picture + Ink + a painted 'Change Map' layer -> previews -> result layer(s)."""
    doc = _picture_document(args)
    map_layer = add_paint_layer(doc, "Change Map", read_input(args, "map_layer.bgra"))
    map_layer.setOpacity(128)  # as the plugin's own 'Create Change Map layer' leaves it
    run = PluginRun(doc, args["url"], _settings(args, mode="change_map"))
    job = run.controller.prepare_job()
    write_output(args, "sent_map.gray", job.map_gray8)
    out = run.generate(args, job)
    out["modules"] = _modules()
    out["crop"] = _crop(job, args)
    doc.close()
    return out


@entry
def soft_inpaint_job(args: dict) -> dict:
    """A rectangular selection, repainted with a soft edge feathered by Krita."""
    from krita import Selection

    doc = _picture_document(args)
    x, y, sw, sh = args["selection"]
    selection = Selection()
    selection.select(x, y, sw, sh, 255)
    doc.setSelection(selection)
    run = PluginRun(doc, args["url"], _settings(args, mode="soft_inpaint", softness_px=args["softness"], grow_px=0))
    # The job as it goes on the wire, so the test can check "map 0 = kept" against the map sent.
    job = run.controller.prepare_job()
    write_output(args, "soft_map.gray", job.map_gray8)
    out = run.generate(args, job)
    s = doc.selection()
    out["selection_after"] = [s.x(), s.y(), s.width(), s.height()] if s is not None else None
    out["map_size"] = [job.request.width, job.request.height]
    out["crop"] = _crop(job, args)
    doc.close()
    return out


@entry
def fan_job(args: dict) -> dict:
    """A strength fan: columns of increasing strength across the whole picture, one result."""
    doc = _picture_document(args, ink=False)
    run = PluginRun(doc, args["url"], _settings(args, mode="fan", fan_columns=args["columns"],
                                                fan_low=args["low"], fan_high=args["high"]))
    out = run.generate(args)
    doc.close()
    return out
