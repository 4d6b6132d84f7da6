"""Checks of the plugin that run inside the real Krita (called by tests/krita/test_plugin_krita.py).

Inputs come as files written by the test (raw BGRA / gray bytes), outputs go back as files and
JSON, so the expectations are computed outside Krita, independently of the plugin's code.
"""

from __future__ import annotations

from kscript import add_paint_layer, entry, layer_pixels, new_document, picture_document, read_input, write_output


def _settings(**values):
    from krita_plugin.settings import Settings

    return Settings(**values).validated()


def _frames(request, inputs):
    from krita_plugin.images import bgra_to_png
    from shared import protocol

    png = bgra_to_png(inputs.image_bgra, inputs.width, inputs.height)
    frames = protocol.submit_frames(request, png, inputs.change_map if request.needs_map else None)
    return [protocol.loads(frames[0])] + [protocol.decode_frame(f) for f in frames[1:]]


@entry
def job_from_map_layer(args: dict) -> dict:
    """Picture + a visible, painted 'Change Map' layer -> the frames a submit would send."""
    from krita_plugin.images import png_to_bgra
    from krita_plugin.jobs import build_submit, read_job_inputs
    from krita_plugin.krita_io import DocumentCanvas

    doc = picture_document(args)
    add_paint_layer(doc, "Change Map", read_input(args, "map_layer.bgra"))
    before = layer_pixels(doc)

    canvas = DocumentCanvas(doc)
    settings = _settings(mode="change_map", prompt="a red barn", steps=12, guidance=5.0, variants=2,
                         random_seed=False, seed=77, region=args.get("region", "canvas"))
    if args.get("selection"):
        from krita import Selection

        x, y, sw, sh = args["selection"]
        selection = Selection()
        selection.select(x, y, sw, sh, 255)
        doc.setSelection(selection)
    inputs = read_job_inputs(canvas, settings)
    request = build_submit(settings, inputs, seed=77, ref=5)
    message, image_frame, map_frame = _frames(request, inputs)
    write_output(args, "sent_image.bgra", png_to_bgra(image_frame.payload))
    write_output(args, "sent_map.gray", map_frame.payload)
    after = {k: v for k, v in layer_pixels(doc).items() if "Selection" not in k}
    return {
        "message": message,
        "image_frame": [image_frame.kind, image_frame.ref, image_frame.width, image_frame.height],
        "map_frame": [map_frame.kind, map_frame.ref, map_frame.width, map_frame.height],
        "unchanged": {k: v for k, v in before.items()} == after,
        "layers": len(after),
    }



@entry
def two_maps_and_a_preview(args: dict) -> dict:
    """Two layers called 'Change Map' (the lower one is just a painter's layer) and the plugin's own
    preview on top: the map is the topmost one, the picture leaves out that map and the preview."""
    from krita_plugin.images import png_to_bgra
    from krita_plugin.jobs import PREVIEW_LAYER_NAME, build_submit, read_job_inputs
    from krita_plugin.krita_io import DocumentCanvas
    from shared.protocol import Region

    w, h = args["width"], args["height"]
    doc = picture_document(args)
    add_paint_layer(doc, "Change Map", read_input(args, "ink.bgra"))  # older, lower: part of the picture
    add_paint_layer(doc, "Change Map", read_input(args, "map_layer.bgra"))
    canvas = DocumentCanvas(doc)
    preview_id = canvas.add_layer(PREVIEW_LAYER_NAME, Region(0, 0, w, h), bytes((0, 255, 0, 255)) * (w * h))
    before = layer_pixels(doc)
    settings = _settings(mode="change_map", prompt="two maps", random_seed=False, seed=3)
    inputs = read_job_inputs(canvas, settings, hide_ids=(preview_id,))
    request = build_submit(settings, inputs, seed=3, ref=1)
    _message, image_frame, map_frame = _frames(request, inputs)
    write_output(args, "sent_image.bgra", png_to_bgra(image_frame.payload))
    write_output(args, "sent_map.gray", map_frame.payload)
    return {"unchanged": layer_pixels(doc) == before, "layers": len(before)}

@entry
def soft_inpaint_map(args: dict) -> dict:
    """A rectangular selection with softness -> the gray map read back from Krita's feathered copy."""
    from krita import Selection

    from krita_plugin.jobs import build_submit, read_job_inputs
    from krita_plugin.krita_io import DocumentCanvas

    w, h = args["width"], args["height"]
    doc = picture_document(args)
    x, y, sw, sh = args["selection"]
    selection = Selection()
    selection.select(x, y, sw, sh, 255)
    doc.setSelection(selection)
    settings = _settings(mode="soft_inpaint", softness_px=args["softness"], grow_px=args.get("grow", 0),
                         region=args.get("region", "canvas"))
    inputs = read_job_inputs(DocumentCanvas(doc), settings)
    request = build_submit(settings, inputs, seed=1)
    message, _image, map_frame = _frames(request, inputs)
    write_output(args, "soft_map.gray", map_frame.payload)
    s = doc.selection()
    return {"message": message, "selection_after": [s.x(), s.y(), s.width(), s.height()],
            "map_size": [map_frame.width, map_frame.height], "w": w, "h": h}


class _FakeClient:
    """Stands in for client.ServerClient: the test feeds server events by hand."""

    def __init__(self):
        from krita_plugin.qt import QObject, Signal

        class Signals(QObject):
            state_changed = Signal(str, str)
            event = Signal(object)

        self.signals = Signals()
        self.state_changed = self.signals.state_changed
        self.event = self.signals.event
        self.submitted = []

    def submit(self, request, image_png, map_gray8):
        request.ref = len(self.submitted) + 1
        png = image_png() if callable(image_png) else image_png  # the real client encodes on its thread
        self.submitted.append((request, png, map_gray8))
        return request.ref

    def cancel(self, job_id=None, ref=None):
        pass

    def connect_to(self, url, token=""):
        pass

    def close(self):
        pass


class _Host:
    def __init__(self, canvas):
        from krita_plugin.settings import DictStore

        self.canvas = canvas
        self.store = DictStore()

    def active_canvas(self):
        return self.canvas


@entry
def preview_then_result(args: dict) -> dict:
    """Drive the real controller with server events: previews rewrite one layer in place, the
    result adds exactly one layer, and the painter's layers stay byte-identical."""
    from krita_plugin.controller import Controller, pump_events
    from krita_plugin.jobs import PREVIEW_LAYER_NAME
    from krita_plugin.krita_io import DocumentCanvas
    from shared import protocol
    from shared.protocol import Region

    w, h = args["width"], args["height"]
    doc = picture_document(args)
    root = doc.rootNode()
    add_paint_layer(doc, "Ink", read_input(args, "ink.bgra"))
    add_paint_layer(doc, "Change Map", read_input(args, "map_layer.bgra"))
    before = layer_pixels(doc)

    canvas = DocumentCanvas(doc)
    client = _FakeClient()
    controller = Controller(_Host(canvas), client=client)
    notices = []
    controller.notice.connect(lambda level, text: notices.append([level, text]))
    controller.update_settings(mode="change_map", prompt="storm clouds", random_seed=False, seed=40, variants=1)
    client.state_changed.emit("connected", "ok")
    assert controller.generate(), notices
    request = client.submitted[0][0]
    rx, ry, rw, rh = args["region"]
    region = Region(rx, ry, rw, rh)
    client.event.emit(protocol.Accepted(ref=request.ref, job_id=9, position=0, seed=40))
    snapshots = []
    for i, name in enumerate(["preview1.png", "preview2.png"]):
        png = read_input(args, name)
        client.event.emit(protocol.Preview(job_id=9, step=i + 1, region=region, png=png, width=0, height=0))
        assert pump_events(controller.settled, 10)  # previews are drawn from a timer, the newest only
        layers = layer_pixels(doc)
        previews = {k: v for k, v in layers.items() if PREVIEW_LAYER_NAME in k}
        node = canvas.node(next(iter(previews.values()))["id"])
        write_output(args, f"preview_layer{i + 1}.bgra", node.pixelData(0, 0, w, h))
        snapshots.append({"layers": len(layers), "previews": list(previews.values())})
    client.event.emit(protocol.Result(job_id=9, index=0, seed=40, region=region, png=read_input(args, "result.png"),
                                      width=rw, height=rh, timings={}))
    client.event.emit(protocol.Done(job_id=9, images=1, steps_run=5, timings={"total_s": 1.0}))
    after = layer_pixels(doc)
    new = {k: v for k, v in after.items() if v["id"] not in {b["id"] for b in before.values()}}
    new_nodes = [n for n in root.childNodes() if n.uniqueId().toString() in {v["id"] for v in new.values()}]
    if new_nodes:
        write_output(args, "result_layer.bgra", new_nodes[0].pixelData(0, 0, w, h))
    order = [n.name() for n in root.childNodes()]
    history = [[e.name, e.seed] for e in controller.history.entries]

    # History: discard removes the plugin's own layer; the painter's layers are still untouched.
    key = controller.history.entries[0].key
    controller.discard_result(key)
    after_discard = layer_pixels(doc)
    return {
        "sent": request.to_message(),
        "snapshots": snapshots,
        "before": before,
        "after": after,
        "new": new,
        "order": order,
        "history": history,
        "notices": notices,
        "after_discard": after_discard,
        "jobs_left": len(controller.jobs) + len(controller.pending),
    }


@entry
def create_map_layer(args: dict) -> dict:
    doc = picture_document(args)
    active_before = doc.activeNode().uniqueId().toString() if doc.activeNode() else None
    before = layer_pixels(doc)
    controller, _client, _notices = _fake_controller(doc)
    controller.create_map_layer()
    after = layer_pixels(doc)
    node = [n for n in doc.rootNode().childNodes() if n.name() == "Change Map"][-1]
    data = bytes(node.pixelData(0, 0, args["width"], args["height"]))
    return {
        "before": before,
        "after": after,
        "name": node.name(),
        "type": node.type(),
        "all_black_opaque": data == bytes((0, 0, 0, 255)) * (args["width"] * args["height"]),
        "opacity": node.opacity(),
        "on_top": doc.rootNode().childNodes()[-1].uniqueId() == node.uniqueId(),
        "active_kept": (doc.activeNode().uniqueId().toString() if doc.activeNode() else None) == active_before,
    }


@entry
def deep_document(args: dict) -> dict:
    """A 16-bit RGBA document: the job is built from a converted copy, the result layer is 8-bit."""
    from krita_plugin.jobs import build_submit, read_job_inputs
    from krita_plugin.krita_io import DocumentCanvas
    from shared.protocol import Region

    w, h = args["width"], args["height"]
    doc = new_document(w, h, model=args["model"], depth=args["depth"])
    before = layer_pixels(doc)
    canvas = DocumentCanvas(doc)
    settings = _settings(mode="uniform", strength=0.5)
    inputs = read_job_inputs(canvas, settings)
    request = build_submit(settings, inputs, seed=3)
    layer_id = canvas.add_layer("result", Region(0, 0, w, h), bytes((10, 20, 30, 255)) * (w * h))
    node = canvas.node(layer_id)
    after = layer_pixels(doc)
    # The other readers: the active layer alone (converted copy) and a change map drawn on the
    # plugin's own map layer (made 8-bit RGBA whatever the document is).
    canvas.active_layer = doc.rootNode().childNodes()[0]
    active = read_job_inputs(canvas, _settings(mode="uniform", strength=0.5, source="active_layer"))
    map_id = canvas.add_layer("Change Map", None, b"")
    canvas.fill_layer(map_id, bytes((0, 0, 0, 255)))
    map_node = canvas.node(map_id)
    map_node.setPixelData(bytes((255, 255, 255, 255)) * (w * 4), 0, 0, w, 4)  # the top 4 rows: change
    mapped = read_job_inputs(canvas, _settings(mode="change_map"))
    return {
        "active_len": len(active.image_bgra),
        "map_cs": [map_node.colorModel(), map_node.colorDepth()],
        "map_rows": [sum(mapped.change_map[y * w:(y + 1) * w]) // w for y in range(h)],
        "doc": [doc.colorModel(), doc.colorDepth()],
        "notes": inputs.notes,
        "image_len": len(inputs.image_bgra),
        "message": request.to_message(),
        "result_cs": [node.colorModel(), node.colorDepth()],
        "result_px": list(bytes(node.pixelData(0, 0, 1, 1))),
        "before_same": all(after.get(k) == v for k, v in before.items()),
    }


@entry
def batch(args: dict) -> list:
    """Several checks in one Krita start (each start costs seconds): args["checks"] is a list of
    [function name, its args]; returns one {"ok", "value" | "error"} per check, in order."""
    import traceback

    out = []
    for name, check_args in args["checks"]:
        fn = globals()[name]
        fn = getattr(fn, "__wrapped__", fn)  # the undecorated check
        try:
            out.append({"ok": True, "value": fn(check_args)})
        except Exception:
            out.append({"ok": False, "error": traceback.format_exc()})
    return out


def _fake_controller(doc, active_layer=None):
    from krita_plugin.controller import Controller
    from krita_plugin.krita_host import KritaHost
    from krita_plugin.settings import DictStore

    host = KritaHost(document=doc, store=DictStore(), active_layer=active_layer)
    client = _FakeClient()
    controller = Controller(host, client=client)
    notices = []
    controller.notice.connect(lambda level, text: notices.append([level, text]))
    client.state_changed.emit("connected", "ok")
    return controller, client, notices


def _deliver(client, request, png: bytes, job_id: int, seed: int, w: int, h: int) -> None:
    from shared import protocol
    from shared.protocol import Region

    region = request.region or Region(0, 0, w, h)
    client.event.emit(protocol.Accepted(ref=request.ref, job_id=job_id, position=0, seed=seed))
    client.event.emit(protocol.Result(job_id=job_id, index=0, seed=seed, region=region, png=png,
                                      width=region.width, height=region.height, timings={}))
    client.event.emit(protocol.Done(job_id=job_id, images=1, steps_run=4, timings={}))


def fan_result_applied(args: dict) -> dict:
    """Strength fan through the docker's controller: the request, the result layer's name (each
    column's strength), then Apply: exactly one new layer, every other layer untouched."""
    w, h = args["width"], args["height"]
    doc = picture_document(args)
    add_paint_layer(doc, "Ink", read_input(args, "ink.bgra"))
    before = layer_pixels(doc)
    controller, client, notices = _fake_controller(doc)
    if args.get("selection"):
        from krita import Selection

        selection = Selection()
        selection.select(*args["selection"], 255)
        doc.setSelection(selection)
    controller.update_settings(mode="fan", fan_columns=args["columns"], fan_low=args["low"], fan_high=args["high"],
                               prompt="dunes", random_seed=False, seed=21, region=args.get("region", "canvas"))
    assert controller.generate(), notices
    request, image_png, map_gray8 = client.submitted[0]
    _deliver(client, request, read_input(args, "result.png"), 31, 21, w, h)
    outcome = controller.outcomes[request.ref]
    after_result = layer_pixels(doc)
    key = controller.history.entries[0].key
    controller.apply_result(key)
    after = {k: v for k, v in layer_pixels(doc).items() if "Selection" not in k}
    node = controller.host.active_canvas().node(outcome.layer_ids[0])
    return {
        "message": request.to_message(), "has_map": map_gray8 is not None, "state": outcome.state,
        "names": [n.name() for n in doc.rootNode().childNodes()], "before": before, "after_result": after_result,
        "after": after, "history_left": len(controller.history.entries), "applied_visible": node.visible(),
        "applied_pixels": bytes(node.pixelData(0, 0, w, h)).hex() if args.get("return_pixels") else None,
    }


def sources(args: dict) -> dict:
    """Source 'Active layer' sends that layer alone (results go right above it); 'Visible
    picture' sends the composite. Through script_controller, the scripting entry point."""
    from krita_plugin.images import png_to_bgra
    from krita_plugin.krita_host import script_controller

    w, h = args["width"], args["height"]
    doc = picture_document(args)
    root = doc.rootNode()
    ink = add_paint_layer(doc, "Ink", read_input(args, "ink.bgra"))
    top = add_paint_layer(doc, "Notes", bytes((0, 0, 255, 255)) * (w * h))
    top.setVisible(False)
    before = layer_pixels(doc)

    c = script_controller("ws://127.0.0.1:1", document=doc, active_layer=ink)
    c.update_settings(mode="uniform", strength=0.5, source="active_layer", random_seed=False, seed=3)
    job = c.prepare_job()
    write_output(args, "active.bgra", png_to_bgra(job.image_png))
    above = job.inputs.source_node_id == ink.uniqueId().toString()
    c.update_settings(source="projection")
    job2 = c.prepare_job()
    write_output(args, "projection.bgra", png_to_bgra(job2.image_png))

    controller, client, notices = _fake_controller(doc, active_layer=ink)
    controller.update_settings(mode="uniform", strength=0.5, source="active_layer", random_seed=False, seed=3,
                               prompt="ink")
    assert controller.generate(), notices
    _deliver(client, client.submitted[0][0], read_input(args, "result.png"), 5, 3, w, h)
    return {"source_is_ink": above, "message": job.request.to_message(),
            "names": [n.name() for n in root.childNodes()], "before": before,
            "after": layer_pixels(doc), "source2": job2.inputs.source_node_id}


def panel_create_map(args: dict) -> dict:
    """The docker's panel inside Krita: its 'Create Change Map layer' button adds one black,
    opaque paint layer called 'Change Map' and changes nothing else."""
    from krita_plugin.docker import DiffDiffPanel

    w, h = args["width"], args["height"]
    doc = picture_document(args)
    before = layer_pixels(doc)
    controller, client, notices = _fake_controller(doc)
    panel = DiffDiffPanel(controller.host, controller=controller)
    panel.create_map.click()
    after = layer_pixels(doc)
    nodes = [n for n in doc.rootNode().childNodes() if n.name() == "Change Map"]
    data = bytes(nodes[0].pixelData(0, 0, w, h)) if nodes else b""
    # Generating from it at once: the layer is black, so the painter is told to paint white first.
    panel.generate.click()
    return {"before": before, "after": after, "count": len(nodes), "type": nodes[0].type() if nodes else None,
            "all_black_opaque": data == bytes((0, 0, 0, 255)) * (w * h), "message": panel.message.text(),
            "submitted": len(client.submitted)}


def settings_write(args: dict) -> dict:
    """Save every setting through Krita's own configuration (what the docker does on each edit)."""
    from krita_plugin.krita_host import KritaSettingsStore
    from krita_plugin.settings import load_settings, save_settings

    settings = _settings(**args["values"])
    save_settings(settings, KritaSettingsStore())
    return {"same_session": load_settings(KritaSettingsStore()) == settings}


def settings_read(args: dict) -> dict:
    """In a later Krita session: what the docker would load."""
    import dataclasses

    from krita_plugin.krita_host import KritaSettingsStore
    from krita_plugin.settings import load_settings

    return dataclasses.asdict(load_settings(KritaSettingsStore()))
