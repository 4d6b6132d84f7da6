"""Live mode (issue 16) without Krita: strokes on the map become live jobs that replace each
other, drawn on one Live layer; Keep makes an ordinary result layer; Live off removes the layer."""

from __future__ import annotations

import numpy as np
import pytest
from plugin_fakes import FakeCanvas, qapp
from test_plugin_controller import H, W, accept, make, picture, result, rgba_png

from krita_plugin.change_watch import LayerWatcher
from krita_plugin.controller import pump_events
from krita_plugin.live import LIVE_LAYER_NAME
from shared import protocol
from shared.protocol import Region


@pytest.fixture(autouse=True)
def _app():
    return qapp()


def map_canvas() -> tuple[FakeCanvas, str]:
    canvas = FakeCanvas(picture(3))
    black = np.zeros((H, W, 4), np.uint8)
    black[..., 3] = 255
    black[4:12, 4:12] = 255  # a first stroke
    return canvas, canvas.add_painter_layer("Change Map", black)


def stroke(canvas: FakeCanvas, map_id: str, x: int) -> None:
    """The painter paints white on the map (as Krita would: the layer's pixels change)."""
    canvas.find(map_id).bgra[10:20, x:x + 6] = 255


def live_layers(canvas: FakeCanvas) -> list:
    return [la for la in canvas.layers_ if la.name == LIVE_LAYER_NAME]


def painter_pixels(canvas: FakeCanvas) -> dict:
    return {la.id: la.bgra.copy() for la in canvas.layers_ if la.owner == "painter"}


def sent(client) -> list[protocol.SubmitRequest]:
    return [protocol.parse_submit(protocol.loads(frames[0])) for frames in client.frames]


def test_live_on_sends_a_few_step_replacing_job_and_draws_on_one_live_layer():
    canvas, _ = map_canvas()
    before = painter_pixels(canvas)
    c, client, _, notices = make(canvas, mode="uniform", steps=30, variants=3, live_steps=5)
    assert c.live.set_enabled(True)
    (req,) = sent(client)
    assert (req.replace, req.mode, req.steps, req.variants, req.seed) == (True, "change_map", 5, 1, 11)
    accept(client, job_id=4)
    region = Region(0, 0, W, H)
    client.feed(protocol.Preview(4, 2, region, rgba_png(np.full((H, W, 4), 90, np.uint8)), W, H))
    assert pump_events(lambda: live_layers(canvas), 5.0)
    (layer,) = live_layers(canvas)
    client.feed(result(4, 0, 11, region, picture(5)[..., [2, 1, 0, 3]]), protocol.Done(4, 1, 5, {}))
    assert live_layers(canvas) == [layer] and canvas.writes >= 1  # the preview's layer, rewritten
    # Transparent where the map keeps the picture, the result where it changes.
    assert not layer.bgra[0, 0].any() and (layer.bgra[5, 5] == picture(5)[5, 5]).all()
    assert not c.history.entries and not notices  # a live job is no history entry, no notice
    assert all((canvas.find(i).bgra == px).all() for i, px in before.items())


def test_strokes_debounce_into_jobs_that_replace_each_other_and_the_last_one_shows():
    canvas, map_id = map_canvas()
    before = painter_pixels(canvas)
    c, client, _, notices = make(canvas, live_debounce_ms=30)
    c.live.set_enabled(True)
    accept(client, job_id=1)
    for n, x in enumerate((14, 24, 34)):  # three strokes, each given time to settle
        stroke(canvas, map_id, x)
        before[map_id] = canvas.find(map_id).bgra.copy()
        assert pump_events(lambda n=n: len(client.frames) == n + 2, 5.0)
        accept(client, job_id=n + 2)
    stroke(canvas, map_id, 40)  # two looks at one stroke while it goes on: still one job
    before[map_id] = canvas.find(map_id).bgra.copy()
    c.live.tick()
    c.live.tick()
    assert pump_events(lambda: len(client.frames) == 5, 5.0)
    assert not pump_events(lambda: len(client.frames) > 5, 0.3)
    accept(client, job_id=5)
    assert all(r.replace for r in sent(client)) and len({r.seed for r in sent(client)}) == 1
    for job_id in (1, 2, 3, 4):  # the server replaced them
        client.feed(protocol.Cancelled(job_id, protocol.REPLACED_REASON))
    full = Region(0, 0, W, H)
    client.feed(result(5, 0, 11, full, picture(8)[..., [2, 1, 0, 3]]), protocol.Done(5, 1, 6, {}))
    (layer,) = live_layers(canvas)
    assert (layer.bgra[15, 41] == picture(8)[15, 41]).all()
    assert not notices and not c.busy
    assert all((canvas.find(i).bgra == px).all() for i, px in before.items())


def test_keep_adds_a_result_layer_and_live_off_removes_the_live_layer():
    canvas, _ = map_canvas()
    c, client, _, _ = make(canvas)
    c.live.set_enabled(True)
    assert c.live.keep() is None  # nothing to keep yet
    accept(client, job_id=3)
    full = Region(0, 0, W, H)
    client.feed(result(3, 0, 11, full, picture(9)[..., [2, 1, 0, 3]]), protocol.Done(3, 1, 6, {}))
    kept_id = c.live.keep()
    kept = canvas.find(kept_id)
    assert kept.owner == "plugin" and kept.name.startswith("a red barn · seed 11")
    assert [e.layer_id for e in c.history.entries] == [kept_id]
    assert (kept.bgra == live_layers(canvas)[0].bgra).all()
    # Live goes on: the next stroke's job is sent; Live off cancels it and removes the Live layer.
    assert c.live.send()
    c.live.set_enabled(False)
    assert not live_layers(canvas) and canvas.find(kept_id) is not None
    assert client.cancels[-1]["ref"] == protocol.loads(client.frames[-1][0])["ref"]


def test_a_preview_or_result_arriving_after_live_off_draws_nothing():
    canvas, _ = map_canvas()
    c, client, _, _ = make(canvas)
    c.live.set_enabled(True)
    accept(client, job_id=3)
    c.live.set_enabled(False)
    region = Region(0, 0, W, H)
    client.feed(protocol.Preview(3, 1, region, rgba_png(np.full((H, W, 4), 90, np.uint8)), W, H))
    pump_events(lambda: False, 0.4)
    client.feed(result(3, 0, 11, region, picture(9)[..., [2, 1, 0, 3]]), protocol.Cancelled(3, "cancelled"))
    assert not live_layers(canvas) and len(canvas.layers_) == 2


def test_an_older_server_without_replace_gets_the_previous_live_job_cancelled():
    canvas, map_id = map_canvas()
    c, client, _, _ = make(canvas)
    c.capabilities.features = []
    c.live.set_enabled(True)
    accept(client, job_id=6)
    stroke(canvas, map_id, 30)
    assert c.live.send()
    assert client.cancels == [{"type": "cancel", "job_id": 6}]


def test_the_live_layer_is_left_out_of_the_next_jobs_picture():
    canvas, _ = map_canvas()
    c, client, _, _ = make(canvas)
    c.live.set_enabled(True)
    accept(client, job_id=2)
    full = Region(0, 0, W, H)
    client.feed(result(2, 0, 11, full, np.full((H, W, 4), 255, np.uint8)), protocol.Done(2, 1, 6, {}))
    assert live_layers(canvas)
    c.live.send()
    picture_sent = client.received().image_png
    from test_plugin_controller import png_bgra
    assert (png_bgra(picture_sent) == picture(3)).all()


def test_looking_at_the_map_reads_a_thumbnail_never_the_full_layer():
    canvas, map_id = map_canvas()
    c, client, _, _ = make(canvas)
    c.live.set_enabled(True)

    def no_full_reads(*args):
        raise AssertionError("a tick read a full layer")

    canvas.layer_pixels = canvas.projection_pixels = no_full_reads
    looks = canvas.thumbnails
    for _ in range(5):
        c.live.tick()
    assert canvas.thumbnails == looks + 5
    watcher = LayerWatcher(thumbnail_px=8)
    assert not watcher.changed(canvas, map_id)  # the first look takes a reference
    assert not watcher.changed(canvas, map_id)
    stroke(canvas, map_id, 20)
    assert watcher.changed(canvas, map_id) and not watcher.changed(canvas, map_id)


def test_closing_the_document_turns_live_off_quietly():
    canvas, _ = map_canvas()
    c, client, _, notices = make(canvas)
    c.live.set_enabled(True)
    canvas.close()
    c.live.tick()
    assert not c.live.enabled and not [n for n in notices if n[0] == "error"]


def test_the_docker_live_toggle_keep_and_settings():
    from krita_plugin.docker import DiffDiffPanel
    from plugin_fakes import FakeHost

    canvas, _ = map_canvas()
    c, client, _, _ = make(canvas)
    c.capabilities.schedulers = ["DDIM", "Euler", "LCM"]
    panel = DiffDiffPanel(FakeHost(canvas), controller=c)
    panel.refresh()
    box = panel.live_box
    assert box.options.isHidden() and not box.keep.isEnabled()
    box.toggle.setChecked(True)
    assert c.live.enabled and len(client.frames) == 1 and not box.options.isHidden()
    assert box.scheduler.itemData(1) == "LCM"  # the few-step scheduler proposed first
    box.steps.setValue(4)
    box.debounce.setValue(400)
    assert (c.settings.live_steps, c.settings.live_debounce_ms) == (4, 400)
    accept(client, job_id=3)
    client.feed(result(3, 0, 11, Region(0, 0, W, H), picture(9)[..., [2, 1, 0, 3]]), protocol.Done(3, 1, 6, {}))
    panel.refresh()
    assert box.keep.isEnabled()
    box.keep.click()
    assert len(c.history.entries) == 1
    box.toggle.setChecked(False)
    assert not c.live.enabled and not live_layers(canvas)
