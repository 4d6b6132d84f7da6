"""The Krita side of bench/big_canvas.py: runs in Krita's embedded Python (kritarunner).

For each canvas size: a document whose Background holds a picture, a black half-opaque 'Change
Map' layer (as the plugin's 'Create Change Map layer' makes it) with one white square painted
on it, and the installed plugin's script controller connected to the real server. One warm-up
job, then `runs` timed ones, the sizes taking turns: click (prepare_job: read the map and the picture, crop, encode) ->
result layer written (the job's 'done', the layer in the document). The phases are timed apart,
and one extra run of the largest canvas is profiled (cProfile, the plugin's functions).
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time

from kscript import entry, new_document

BAND = 256  # rows per setPixelData call: a 4096-px canvas never needs one 64 MB buffer


def _fill(node, width: int, height: int, pixel_row) -> None:
    for y in range(0, height, BAND):
        rows = min(BAND, height - y)
        node.setPixelData(b"".join(pixel_row(y + r) for r in range(rows)), 0, y, width, rows)


def _document(size: int, area: int):
    doc = new_document(size, size, name=f"big-{size}")
    background = doc.rootNode().childNodes()[0]
    # A picture with structure (not one colour: the crop's PNG must cost what a picture costs).
    ramp = bytes(range(256)) * (size // 256 + 1)

    def picture_row(y: int) -> bytes:
        row = bytearray(size * 4)
        row[0::4] = ramp[y % 256: y % 256 + size]
        row[1::4] = ramp[(3 * y) % 256: (3 * y) % 256 + size]
        row[2::4] = bytes((x * 7 + y * 13) & 255 for x in range(256)) * (size // 256)
        row[3::4] = b"\xff" * size
        return bytes(row)

    _fill(background, size, size, picture_row)
    map_layer = doc.createNode("Change Map", "paintlayer")
    doc.rootNode().addChildNode(map_layer, None)
    black = b"\x00\x00\x00\xff" * size
    _fill(map_layer, size, size, lambda y: black)
    # The painted area: white, the same place relative to the canvas centre on every size.
    x0 = y0 = size // 2 - area // 2
    map_layer.setPixelData(b"\xff\xff\xff\xff" * (area * area), x0, y0, area, area)
    map_layer.setOpacity(128)
    doc.refreshProjection()
    doc.waitForDone()
    return doc


def _pump(seconds: float) -> None:
    from PyQt5.QtCore import QEventLoop
    from PyQt5.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents(QEventLoop.AllEvents, 20)


def _one_job(controller, doc) -> dict:
    """One click -> result layer; the result layer is removed afterwards (so every run sees the
    same layer stack)."""
    before = {n.uniqueId().toString() for n in doc.rootNode().childNodes()}
    started = time.perf_counter()
    job = controller.prepare_job()
    prepared = time.perf_counter()
    outcome = controller.wait_for(controller.submit_job(job), 600)
    doc.waitForDone()
    done = time.perf_counter()
    if outcome.state != "done":
        raise RuntimeError(f"the job ended {outcome.state}: {outcome.message}")
    crop = job.inputs.crop
    new = [n for n in doc.rootNode().childNodes() if n.uniqueId().toString() not in before]
    if len(new) != 1:
        raise RuntimeError(f"expected one result layer, got {len(new)}")
    bounds = new[0].bounds()
    for node in new:
        node.remove()
    doc.waitForDone()
    return {"total_s": done - started, "prepare_s": prepared - started, "after_prepare_s": done - prepared,
            "crop": [crop.x, crop.y, crop.width, crop.height] if crop is not None else None,
            "layer_bounds": [bounds.x(), bounds.y(), bounds.width(), bounds.height()]}


def _profile(controller, doc, top: int) -> str:
    profile = cProfile.Profile()
    profile.enable()
    _one_job(controller, doc)
    profile.disable()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


@entry
def measure(args: dict) -> dict:
    """Every size's document and controller side by side; after a warm-up job each, the sizes take
    turns (forwards, then backwards), so a load that comes and goes falls on both alike."""
    from differential_diffusion.krita_host import script_controller

    sizes = args["sizes"]
    setups = {}
    for size in sizes:
        doc = _document(size, args["area"])
        controller = script_controller(args["url"], document=doc)
        controller.update_settings(prompt="a lighthouse", steps=args["steps"], guidance=5.0, random_seed=False,
                                   seed=7, variants=1, preview_every=1, source="projection",
                                   region="canvas", mode="change_map")
        if not controller.wait_connected(timeout_s=60):
            raise RuntimeError(f"never connected: {controller.connection_text}")
        _one_job(controller, doc)  # warm-up: first-call costs on both sides
        setups[size] = (controller, doc)
    results = {str(size): {"runs": []} for size in sizes}
    for round_index in range(args["runs"]):
        for size in sizes if round_index % 2 == 0 else sizes[::-1]:
            results[str(size)]["runs"].append(_one_job(*setups[size]))
    if args.get("profile"):
        for size in sizes:
            results[str(size)]["profile"] = _profile(*setups[size], args.get("profile_top", 45))
    for controller, doc in setups.values():
        controller.shutdown()
        _pump(0.2)
        doc.close()
    return results
