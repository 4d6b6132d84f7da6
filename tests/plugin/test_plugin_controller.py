"""The docker's logic without Krita (Qt offscreen, under PyQt5 and PyQt6): jobs per mode, settings, history, messages.

Requests are checked the way the server sees them: the recorded frames go through the server's
own protocol.SubmitCollector, and the PNG is decoded with Pillow, not with the plugin's code.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image
from plugin_fakes import FakeCanvas, FakeHost, RecordingClient, caps, qapp

from krita_plugin import results
from krita_plugin.controller import Controller, pump_events
from krita_plugin.docker import DiffDiffPanel
from krita_plugin.jobs import PREVIEW_LAYER_NAME, JobInputError
from krita_plugin.qt import ECHO_PASSWORD
from krita_plugin.settings import MODES, DictStore, Settings, load_settings, save_settings
from shared import protocol
from shared.fan import fan_strengths
from shared.protocol import Region
from shared.regions import context_crop

W, H = 48, 32


@pytest.fixture(autouse=True)
def _app():
    return qapp()


def picture(seed: int = 0) -> np.ndarray:
    bgra = np.random.default_rng(seed).integers(0, 256, (H, W, 4), dtype=np.uint8)
    bgra[..., 3] = 255
    return bgra


def png_bgra(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))[..., [2, 1, 0, 3]]


def rgba_png(rgba: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, "PNG")
    return out.getvalue()


def make(canvas: FakeCanvas | None = None, store: DictStore | None = None, **settings):
    qapp()  # the controller's timers need one, whichever module calls this
    canvas = canvas if canvas is not None else FakeCanvas(picture())
    client = RecordingClient()
    c = Controller(FakeHost(canvas, store), client=client)
    c.capabilities = client.session.capabilities
    c.connection_state = "connected"
    notices: list[tuple[str, str]] = []
    c.notice.connect(lambda level, text: notices.append((level, text)))
    c.update_settings(**{"prompt": "a red barn", "random_seed": False, "seed": 11, "steps": 9, "guidance": 4.5,
                         **settings})
    return c, client, canvas, notices


def settle(c: Controller) -> None:
    """Let the controller's coalescing timers fire (the newest preview, the panel's refresh)."""
    assert pump_events(c.settled, 5.0)


def preview_layers(canvas: FakeCanvas) -> list:
    return [la for la in canvas.layers_ if la.name == PREVIEW_LAYER_NAME]


def accept(client: RecordingClient, job_id: int = 7, position: int = 0, seed: int = 11, index: int = -1) -> None:
    ref = protocol.loads(client.frames[index][0])["ref"]
    client.feed(protocol.Accepted(ref=ref, job_id=job_id, position=position, seed=seed))


def result(job_id: int, index: int, seed: int, region: Region, rgba: np.ndarray) -> protocol.Result:
    return protocol.Result(job_id, index, seed, region, rgba_png(rgba), region.width, region.height, {})


# -- one request per mode --------------------------------------------------------------------------


def test_change_map_mode_sends_picture_and_luminance_map():
    pic = picture(1)
    canvas = FakeCanvas(pic)
    layer = np.zeros((H, W, 4), np.uint8)
    layer[..., 3] = 255
    layer[:, :16] = (255, 255, 255, 255)
    layer[:, 16:24] = (0, 0, 255, 255)  # red: read by luminance
    layer[:, 40:] = (255, 255, 255, 0)  # transparent white: keep
    canvas.add_painter_layer("Change Map", layer)
    c, client, _, notices = make(canvas, mode="change_map", variants=2, scheduler="Euler", model="other")

    assert c.generate(), notices
    got = client.received()
    req = got.request
    assert (req.mode, req.width, req.height, req.region) == ("change_map", W, H, None)
    assert (req.prompt, req.steps, req.guidance, req.seed, req.variants) == ("a red barn", 9, 4.5, 11, 2)
    assert (req.scheduler, req.model) == ("Euler", "other")
    np.testing.assert_array_equal(png_bgra(got.image_png), pic)  # the map layer is not in the picture
    m = np.frombuffer(got.map_gray8, np.uint8).reshape(H, W)
    assert (m[:, :16] == 255).all() and (m[:, 24:40] == 0).all() and (m[:, 40:] == 0).all()
    assert abs(int(m[0, 20]) - round(255 * 11 / 32)) <= 1  # qGray of pure red
    assert c.busy and c.status()[0] == "Sending…"


def test_change_map_region_is_the_selection_bounds():
    canvas = FakeCanvas(picture())
    canvas.add_painter_layer("Change Map", np.full((H, W, 4), 255, np.uint8))
    canvas.select(5, 6, 20, 10)
    c, client, _, notices = make(canvas, mode="change_map", region="selection")
    assert c.generate(), notices
    assert client.received().request.region == Region(5, 6, 20, 10)
    c.update_settings(region="canvas")
    assert c.generate()
    assert client.received().request.region is None


def test_soft_inpaint_sends_the_selection_as_a_map():
    canvas = FakeCanvas(picture())
    canvas.select(10, 4, 12, 8)
    c, client, _, notices = make(canvas, mode="soft_inpaint", softness_px=6)
    assert c.generate(), notices
    got = client.received()
    assert got.request.mode == "change_map"  # the map is soft already (Krita feathers it)
    m = np.frombuffer(got.map_gray8, np.uint8).reshape(H, W)
    assert m.sum() == 255 * 12 * 8 and (m[4:12, 10:22] == 255).all()


def test_fan_sends_columns_and_labels_the_result_with_each_strength():
    c, client, canvas, notices = make(mode="fan", fan_columns=3, fan_low=0.2, fan_high=0.8)
    assert c.generate(), notices
    got = client.received()
    assert got.request.mode == "fan" and got.map_gray8 is None
    assert (got.request.fan.count, got.request.fan.low, got.request.fan.high) == (3, 0.2, 0.8)
    accept(client, job_id=3, seed=11)
    region = Region(0, 0, W, H)
    client.feed(result(3, 0, 11, region, np.full((H, W, 4), 200, np.uint8)),
                protocol.Done(3, 1, 9, {"total_s": 2.0}))
    (layer,) = [la for la in canvas.layers_ if la.owner == "plugin"]
    labels = [f"{s:.2f}" for s in fan_strengths(3, 0.2, 0.8)]
    assert labels == ["0.20", "0.50", "0.80"]
    assert layer.name == "a red barn · seed 11 · fan " + " | ".join(labels)


def test_uniform_sends_one_strength_and_no_map():
    c, client, _, notices = make(mode="uniform", strength=0.35)
    assert c.generate(), notices
    got = client.received()
    assert got.request.mode == "uniform" and got.request.strength == 0.35 and got.map_gray8 is None


def test_active_layer_source_sends_that_layer_and_results_go_above_it():
    pic = picture(2)
    canvas = FakeCanvas(pic)
    ink = picture(3)
    ink_id = canvas.add_painter_layer("Ink", ink)
    canvas.add_painter_layer("Top", picture(4))
    canvas.active_id = ink_id
    c, client, _, notices = make(canvas, mode="uniform", source="active_layer")
    assert c.generate(), notices
    np.testing.assert_array_equal(png_bgra(client.received().image_png), ink)
    accept(client, job_id=4)
    client.feed(result(4, 0, 11, Region(0, 0, W, H), np.full((H, W, 4), 9, np.uint8)))
    assert [la.name for la in canvas.layers_][:3] == ["Background", "Ink", "a red barn · seed 11 · strength 0.60"]


def test_random_seed_differs_per_job_and_is_sent():
    c, client, _, _ = make(mode="uniform")
    c.update_settings(random_seed=True)
    seeds = set()
    for _ in range(3):
        assert c.generate()
        seeds.add(client.received().request.seed)
        assert client.received().request.seed == c.last_seed
    assert len(seeds) == 3


# -- errors the painter sees -----------------------------------------------------------------------


@pytest.mark.parametrize("setup,words", [
    (dict(mode="change_map"), "No layer named 'Change Map'"),
    (dict(mode="soft_inpaint"), "select the area"),
    (dict(mode="uniform", region="selection"), "nothing is selected"),
    (dict(mode="uniform", strength=0.0), "Strength 0"),
])
def test_inputs_that_cannot_make_a_job_show_a_message_and_send_nothing(setup, words):
    c, client, _, _ = make(**setup)
    panel = DiffDiffPanel(c.host, controller=c)
    panel.generate.click()
    assert client.frames == [] and not c.busy
    assert words.lower() in panel.message.text().lower()
    assert "d9534f" in panel.message.styleSheet()  # shown as an error



def _refused(canvas: FakeCanvas, **settings) -> str:
    """generate() on `canvas` sends nothing: the painter's message."""
    c, client, _, notices = make(canvas, **settings)
    assert not c.generate() and client.frames == [] and not c.busy
    return notices[-1][1]


def test_canvases_the_server_would_refuse_get_the_plugins_own_message():
    assert "swap them" in _refused(FakeCanvas(picture()), mode="fan", fan_low=0.9, fan_high=0.1)
    narrow = FakeCanvas(picture())
    narrow.select(4, 4, 10, 20)
    assert "narrower than the number of fan columns" in _refused(narrow, mode="fan", fan_columns=12,
                                                                 region="selection")
    tiny = FakeCanvas(picture())
    tiny.select(4, 4, 6, 20)
    assert "selection is smaller than 8x8" in _refused(tiny, mode="uniform", region="selection")
    small = np.full((6, 40, 4), 255, np.uint8)
    assert "picture is smaller than 8x8" in _refused(FakeCanvas(small), mode="uniform")
    # A map painted only outside the selection changes nothing inside it.
    outside = FakeCanvas(picture())
    layer = np.zeros((H, W, 4), np.uint8)
    layer[..., 3] = 255
    layer[:, 40:, :3] = 255
    outside.add_painter_layer("Change Map", layer)
    outside.select(0, 0, 30, 30)
    text = _refused(outside, mode="change_map", region="selection")
    assert "black inside the selection" in text and "paint white" in text



def test_a_selection_reaching_past_the_canvas_is_clipped_to_it():
    # Krita's feathered selections can reach past the canvas edge; the server takes regions inside it only.
    from krita_plugin.jobs import job_region

    assert job_region(W, H, Region(-5, 20, 30, 30), True) == Region(0, 20, 25, 12)
    assert job_region(W, H, Region(-3, -3, W + 6, H + 6), True) is None  # all of it: the whole canvas
    assert job_region(W, H, Region(4, 4, 8, 8), False) is None  # Region 'Canvas'
    with pytest.raises(JobInputError, match="smaller than 8x8"):
        job_region(W, H, Region(W - 4, 0, 20, 20), True)

def test_result_layer_names_are_one_short_line():
    c, client, canvas, _ = make(mode="soft_inpaint", softness_px=12,
                                prompt="  a   red\nbarn " + "in deep snow " * 6)
    canvas.select(4, 4, 20, 20)
    assert c.generate()
    accept(client, job_id=30)
    client.feed(result(30, 0, 11, Region(0, 0, W, H), np.full((H, W, 4), 9, np.uint8)))
    (layer,) = [la for la in canvas.layers_ if la.owner == "plugin"]
    title = ("a red barn " + "in deep snow " * 6)[:47] + "…"
    assert layer.name == f"{title} · seed 11 · soft 12px"
    c2, client2, canvas2, _ = make(mode="uniform", prompt=" \n ")
    assert c2.generate()
    accept(client2, job_id=31)
    client2.feed(result(31, 0, 11, Region(0, 0, W, H), np.full((H, W, 4), 9, np.uint8)))
    assert [la.name for la in canvas2.layers_][-1] == "(no prompt) · seed 11 · strength 0.60"

def test_black_map_says_what_to_paint():
    canvas = FakeCanvas(picture())
    c, client, _, notices = make(canvas, mode="change_map")
    c.create_map_layer()
    assert not c.generate() and client.frames == []
    assert "paint white" in notices[-1][1]


def test_no_document_and_no_connection_are_messages_not_crashes():
    c, client, _, notices = make(mode="uniform")
    c.host.canvas = None
    assert not c.generate()
    assert notices[-1] == ("error", "Open a document first.")
    c2 = Controller(FakeHost(FakeCanvas(picture())))  # a real client that never connected
    got: list[str] = []
    c2.notice.connect(lambda level, text: got.append(text))
    c2.update_settings(mode="uniform")
    assert not c2.generate() and "Not connected" in got[-1]
    c2.shutdown()


def test_server_errors_are_shown_and_end_the_job():
    c, client, canvas, notices = make(mode="uniform")
    panel = DiffDiffPanel(c.host, controller=c)
    finished = []
    c.finished.connect(finished.append)
    assert c.generate()
    accept(client, job_id=5)
    client.feed(protocol.Preview(5, 1, Region(0, 0, W, H), rgba_png(np.zeros((8, 12, 4), np.uint8)), 12, 8))
    settle(c)
    assert len(preview_layers(canvas)) == 1
    client.feed(protocol.Error("out_of_memory", "The GPU ran out of memory; try a smaller region.", job_id=5))
    assert panel.message.text() == "The GPU ran out of memory; try a smaller region."
    assert not c.busy and preview_layers(canvas) == [] and not panel.cancel.isEnabled()
    assert finished[0].state == "error" and "out of memory" in finished[0].message
    assert [la.name for la in canvas.layers_] == ["Background"]  # the preview went, nothing else came


def test_connection_lost_mid_job_ends_it_with_a_message():
    c, client, canvas, notices = make(mode="uniform")
    c.connection_state = "connected"
    assert c.generate()
    accept(client, job_id=6)
    client.state_changed.emit("disconnected", "Cannot reach the server")
    assert not c.busy and "connection to the server was lost" in notices[-1][1]
    assert c.outcomes[protocol.loads(client.frames[0][0])["ref"]].state == "lost"


# -- progress, queue position, previews ------------------------------------------------------------


def test_progress_text_follows_queue_position_and_steps():
    c, client, canvas, _ = make(mode="uniform")
    panel = DiffDiffPanel(c.host, controller=c)
    assert c.generate()
    assert panel.status.text() == "Sending…"
    accept(client, job_id=8, position=2)
    assert panel.status.text() == "Waiting: 2 job(s) ahead in the server's queue"
    assert (panel.progress.minimum(), panel.progress.maximum()) == (0, 0)  # busy indicator
    client.feed(protocol.QueuePosition(8, 1))
    settle(c)
    assert panel.status.text() == "Waiting: 1 job(s) ahead in the server's queue"
    client.feed(protocol.Started(8, W, H, Region(0, 0, W, H)))
    assert panel.status.text() == "Starting…"
    client.feed(protocol.Progress(8, 3, 10, 1.5, 4.6))
    settle(c)
    assert panel.status.text() == "Step 3/10, about 5 s left"
    assert (panel.progress.value(), panel.progress.maximum()) == (3, 10)
    assert panel.cancel.isEnabled()
    panel.cancel.click()
    assert client.cancels == [{"type": "cancel", "job_id": 8}]
    assert panel.status.text() == "Cancelling…"
    client.feed(protocol.Cancelled(8, "cancelled by the client"))
    assert not c.busy and panel.message.text() == "Cancelled." and not panel.cancel.isEnabled()


def test_previews_are_coalesced_onto_one_layer_and_the_result_replaces_it():
    c, client, canvas, _ = make(mode="uniform", variants=2)
    assert c.generate()
    # The job's layer is there at once, empty: made while the server works, not when the first
    # preview arrives (inserting a layer is long for Krita on a big canvas).
    (made,) = preview_layers(canvas)
    assert not made.bgra.any() and canvas.writes == 0
    accept(client, job_id=9)
    region = Region(4, 2, 24, 16)
    for step, rgb in ((2, (50, 60, 70)), (4, (200, 90, 20))):  # two arrive before the docker draws
        small = np.full((8, 12, 4), (*rgb, 255), np.uint8)  # previews come downscaled, RGBA
        client.feed(protocol.Preview(9, step, region, rgba_png(small), 12, 8))
    settle(c)
    assert preview_layers(canvas) == [made]
    preview = made
    assert canvas.writes == 1  # only the newest was drawn: the older one was skipped, not painted over
    inside = preview.bgra[2:18, 4:28].astype(int)
    # Scaled up smoothly, in Krita's BGRA order.
    assert (abs(inside[..., :3] - (20, 90, 200)) <= 1).all() and (inside[..., 3] == 255).all()
    assert preview.bgra[0].sum() == 0 and preview.bgra[:, :4].sum() == 0  # transparent outside
    client.feed(protocol.Preview(9, 6, region, rgba_png(np.full((8, 12, 4), 90, np.uint8)), 12, 8))
    settle(c)
    assert preview_layers(canvas) == [preview] and canvas.writes == 2  # rewritten in place
    outcome = c.outcomes[protocol.loads(client.frames[0][0])["ref"]]
    pixels = [picture(5)[:16, :24][..., [2, 1, 0, 3]], picture(6)[:16, :24][..., [2, 1, 0, 3]]]  # RGBA
    client.feed(result(9, 0, 11, region, pixels[0]), result(9, 1, 12, region, pixels[1]),
                protocol.Done(9, 2, 9, {"total_s": 3.0}))
    # One layer for the job, showing the first variant; the other waits in the list.
    names = [la.name for la in canvas.layers_]
    assert names == ["Background", "a red barn · seed 11 · strength 0.60"]
    np.testing.assert_array_equal(canvas.layers_[1].bgra[2:18, 4:28], pixels[0][..., [2, 1, 0, 3]])
    assert not canvas.layers_[1].bgra[:2].any() and not canvas.layers_[1].bgra[:, :4].any()
    assert [e.seed for e in c.history.entries] == [11, 12]
    assert outcome.state == "done" and outcome.previews == 2 and len(outcome.layer_ids) == 1
    assert c.notice and "on the server" in c.outcomes[outcome.ref].message


def test_the_layer_made_at_submit_goes_when_the_server_refuses_or_cancels_the_job():
    c, client, canvas, _ = make(mode="uniform")
    painter = [(la.id, la.bgra.copy()) for la in canvas.layers_]
    assert c.generate() and len(preview_layers(canvas)) == 1
    ref = protocol.loads(client.frames[-1][0])["ref"]
    client.feed(protocol.Error(protocol.E_BAD_MESSAGE, "No.", ref=ref))  # refused before any job id
    assert canvas.plugin_layers() == [] and not c.busy
    assert c.generate() and len(preview_layers(canvas)) == 1
    accept(client, job_id=21, index=-1)
    client.feed(protocol.Cancelled(21, "the server is stopping"))
    assert canvas.plugin_layers() == [] and not c.busy
    assert [(la.id, la.bgra.tolist()) for la in canvas.layers_] == [(i, b.tolist()) for i, b in painter]


def test_previews_come_less_often_when_drawing_them_is_slow():
    """A redraw that takes long (a big canvas: Krita recomposes the whole image) stretches the
    interval between previews, so the canvas stays free most of the time."""
    c, client, canvas, _ = make(mode="uniform")
    assert c.generate()
    accept(client, job_id=9)
    region = Region(0, 0, 12, 8)
    drawn: list[float] = []
    write_layer = canvas.write_layer

    def timed_write(*args):
        drawn.append(time.monotonic())
        return write_layer(*args)

    canvas.write_layer = timed_write
    canvas.redraw_s = 0.15  # previews then every 0.6 s at least, not every 0.25 s
    for step in range(1, 5):
        client.feed(protocol.Preview(9, step, region, rgba_png(np.full((8, 12, 4), 20 * step, np.uint8)), 12, 8))
        settle(c)
    # Each preview rewrites the job's layer, each at least 4 redraws after the one before.
    assert len(drawn) == 4 and canvas.writes == 4
    gaps = np.diff(drawn)
    assert c._preview_interval_s >= results.PREVIEW_BUSY_FACTOR * canvas.redraw_s
    # Qt's coarse timers may fire a little early, and decoding comes before the write: a margin.
    assert (gaps >= 0.75 * results.PREVIEW_BUSY_FACTOR * canvas.redraw_s).all(), gaps
    canvas.redraw_s = 0.0
    client.feed(protocol.Preview(9, 5, region, rgba_png(np.full((8, 12, 4), 9, np.uint8)), 12, 8))
    settle(c)  # a quick redraw brings the interval back to the usual one
    assert c._preview_interval_s == results.PREVIEW_INTERVAL_S


def test_the_first_result_removes_the_preview_and_a_late_preview_never_covers_it():
    c, client, canvas, _ = make(mode="uniform", variants=2)
    assert c.generate()
    accept(client, job_id=12)
    region = Region(0, 0, W, H)
    solid = np.full((H, W, 4), 77, np.uint8)
    client.feed(protocol.Preview(12, 1, region, rgba_png(solid), W, H))
    settle(c)
    assert len(preview_layers(canvas)) == 1
    (preview,) = preview_layers(canvas)
    client.feed(result(12, 0, 11, region, np.full((H, W, 4), 5, np.uint8)))
    # The first variant is in: the preview has gone already, before the job is done. Its layer
    # became the result's, rewritten in place: no layer removed and added (Krita redraws its
    # layer box for each, which is long on a big canvas).
    assert preview_layers(canvas) == [] and c.busy
    assert canvas.plugin_layers() == [preview] and (preview.bgra == 5).all() and canvas.writes == 2
    client.feed(protocol.Preview(12, 2, region, rgba_png(solid), W, H))  # overtaken by the result
    settle(c)
    assert preview_layers(canvas) == [] and canvas.writes == 2 and (preview.bgra == 5).all()
    client.feed(result(12, 1, 12, region, np.full((H, W, 4), 6, np.uint8)), protocol.Done(12, 2, 9, {}))
    assert [la.owner for la in canvas.layers_] == ["painter", "plugin"] and not c.busy
    assert c.outcomes[protocol.loads(client.frames[0][0])["ref"]].previews == 1


def test_result_pixels_where_the_map_keeps_the_picture_are_transparent():
    canvas = FakeCanvas(picture(1))
    layer = np.zeros((H, W, 4), np.uint8)
    layer[..., 3] = 255
    layer[:, 10:30] = (255, 255, 255, 255)
    layer[:, 30:34] = (60, 60, 60, 255)  # a little change
    map_id = canvas.add_painter_layer("Change Map", layer)
    c, client, _, notices = make(canvas, mode="change_map")
    assert c.generate(), notices
    accept(client, job_id=40)
    full = Region(0, 0, W, H)
    client.feed(protocol.Preview(40, 1, full, rgba_png(np.full((H, W, 4), (99, 99, 99, 255), np.uint8)), W, H))
    settle(c)
    (preview,) = preview_layers(canvas)
    assert (preview.bgra[:, 10:34, 3] == 255).all() and not preview.bgra[:, :10].any()
    client.feed(result(40, 0, 11, full, np.full((H, W, 4), (200, 200, 200, 255), np.uint8)),
                protocol.Done(40, 1, 9, {}))
    (res,) = canvas.plugin_layers()
    assert (res.bgra[:, 10:34, 3] == 255).all() and (res.bgra[:, 10:34, :3] == 200).all()
    assert not res.bgra[:, :10].any() and not res.bgra[:, 34:].any()  # map 0: nothing, the picture shows
    # Directly below the Change Map layer, so the map's dimming never hides what changed.
    assert [la.id for la in canvas.layers_][-2:] == [res.id, map_id]


# -- history ---------------------------------------------------------------------------------------


def _two_results(c, client, canvas):
    assert c.generate()
    accept(client, job_id=10)
    region = Region(0, 0, W, H)
    client.feed(result(10, 0, 11, region, np.full((H, W, 4), 30, np.uint8)),
                result(10, 1, 12, region, np.full((H, W, 4), 60, np.uint8)),
                protocol.Done(10, 2, 9, {}))
    return c.history.entries


def test_history_show_apply_discard():
    c, client, canvas, _ = make(mode="uniform", variants=2)
    panel = DiffDiffPanel(c.host, controller=c)
    first, second = _two_results(c, client, canvas)
    assert panel.history.count() == 2 and not panel.history.item(0).icon().isNull()  # thumbnails
    painter = [(la.id, la.bgra.copy(), la.visible) for la in canvas.layers_ if la.owner == "painter"]
    (job_layer,) = canvas.plugin_layers()
    assert (job_layer.bgra == 30).all() and job_layer.name == first.name

    item = panel.history.item(0)  # newest first: the second variant
    panel.history.itemClicked.emit(item)  # click: shown on the job's layer, in place
    assert canvas.plugin_layers() == [job_layer] and (job_layer.bgra == 60).all()
    assert job_layer.name == second.name and canvas.writes == 2  # the first variant, then this one

    panel.history.setCurrentRow(0)
    panel.apply_button.click()  # it becomes the painter's: the job leaves the list, its layer stays
    assert c.history.entries == [] and panel.history.count() == 0
    assert canvas.find(job_layer.id) is job_layer and (job_layer.bgra == 60).all()

    third, _fourth = _two_results(c, client, canvas)
    panel.history.setCurrentRow(1)  # the older variant of the new job, the one shown
    panel.discard_button.click()  # the other variant takes its place on the layer
    (new_layer,) = [la for la in canvas.plugin_layers() if la is not job_layer]
    assert (new_layer.bgra == 60).all() and len(c.history.entries) == 1
    panel.history.setCurrentRow(0)
    panel.discard_button.click()  # the last variant: the plugin's layer goes too
    assert c.history.entries == [] and canvas.find(new_layer.id) is None
    assert canvas.find(job_layer.id) is job_layer  # the applied one is never touched again
    assert [(la.id, la.visible) for la in canvas.layers_ if la.owner == "painter"] == [(i, v) for i, _, v in painter]
    for layer_id, pixels, _ in painter:
        np.testing.assert_array_equal(canvas.find(layer_id).bgra, pixels)


def test_history_show_recreates_a_deleted_result_from_its_image():
    c, client, canvas, _ = make(mode="uniform", variants=2)
    first, second = _two_results(c, client, canvas)
    canvas.layers_.remove(canvas.find(first.layer_id))  # the painter deleted it by hand
    c.show_result(second.key)
    (again,) = canvas.plugin_layers()
    assert again.name == second.name and again.visible and (again.bgra == 60).all()


def test_history_keeps_the_newest_results_and_forgets_the_oldest_not_their_layers():
    c, client, canvas, _ = make(mode="uniform")
    c.history.max_entries = 3
    region = Region(0, 0, W, H)
    for job_id in range(20, 25):
        assert c.generate()
        accept(client, job_id=job_id, seed=job_id)
        client.feed(result(job_id, 0, job_id, region, np.full((H, W, 4), job_id, np.uint8)),
                    protocol.Done(job_id, 1, 9, {}))
    assert [e.seed for e in c.history.entries] == [22, 23, 24]
    assert len(canvas.plugin_layers()) == 5  # the old layers stay

def test_history_button_without_a_pick_says_so():
    c, *_ = make(mode="uniform")
    panel = DiffDiffPanel(c.host, controller=c)
    panel.apply_button.click()
    assert panel.message.text() == "Pick a result in the list first."


def test_create_map_layer_button_adds_a_black_change_map():
    c, client, canvas, notices = make(mode="change_map")
    panel = DiffDiffPanel(c.host, controller=c)
    panel.create_map.click()
    (layer,) = canvas.by_name("Change Map")
    assert (layer.bgra == np.array([0, 0, 0, 255], np.uint8)).all()
    assert "paint white" in panel.message.text()


# -- settings --------------------------------------------------------------------------------------


def test_settings_round_trip_through_the_store():
    store = DictStore()
    changed = Settings(server_url="ws://10.0.0.2:9000", token="s3cret", prompt="a cat\non a mat",
                       negative_prompt="blur",
                       model="other", scheduler="Euler", steps=17, guidance=3.25, seed=123456, random_seed=False,
                       variants=3, mode="fan", map_layer="My map", softness_px=20, grow_px=-4, fan_columns=5,
                       fan_low=0.1, fan_high=0.9, strength=0.45, source="active_layer", region="selection",
                       preview_every=3)
    save_settings(changed, store)
    assert load_settings(store) == changed
    assert all(isinstance(v, str) for v in store.values.values())


def test_stale_or_edited_settings_are_clamped_not_fatal():
    store = DictStore()
    store.values.update(steps="9999", mode="nonsense", guidance="abc", random_seed="false", fan_low="-2")
    s = load_settings(store)
    # Clamped to the protocol's own limits (shared/), never to numbers of the docker's.
    assert (s.steps, s.mode, s.guidance, s.random_seed, s.fan_low) == (protocol.MAX_STEPS, "change_map", 7.0,
                                                                       False, 0.0)
    store.values.update(variants="99", fan_high="3", source="elsewhere", region="moon", random_seed=" True ",
                        seed="-5", softness_px="9999", grow_px="-999", preview_every="-1", strength="2")
    s = load_settings(store)
    assert (s.variants, s.fan_high, s.source, s.region, s.random_seed) == (protocol.MAX_VARIANTS, 1.0, "projection",
                                                                           "canvas", True)
    assert (s.seed, s.softness_px, s.grow_px, s.preview_every, s.strength) == (0, 512, -256, 0, 1.0)


def test_panel_edits_persist_into_the_next_session():
    store = DictStore()
    c, *_ = make(store=store, mode="change_map")
    panel = DiffDiffPanel(c.host, controller=c)
    panel.prompt.setPlainText("misty hills")
    panel.steps.setValue(21)
    panel.mode.setCurrentIndex(MODES.index("fan"))
    panel.fan_columns.setValue(6)
    panel.random_seed.setChecked(False)
    panel.seed.setValue(4242)
    panel.source.setCurrentIndex(1)
    panel.region.setCurrentIndex(1)
    c.shutdown()

    # "Restart Krita": a new controller and panel on the same store.
    c2 = Controller(FakeHost(FakeCanvas(picture()), store), client=RecordingClient())
    panel2 = DiffDiffPanel(c2.host, controller=c2)
    assert panel2.prompt.toPlainText() == "misty hills" and panel2.steps.value() == 21
    assert panel2.mode.currentData() == "fan" and panel2.mode_pages.currentIndex() == MODES.index("fan")
    assert panel2.fan_columns.value() == 6 and not panel2.random_seed.isChecked() and panel2.seed.value() == 4242
    assert panel2.source.currentData() == "active_layer" and panel2.region.currentData() == "selection"


def test_panel_lists_the_servers_models_and_schedulers():
    c, client, *_ = make(mode="uniform")
    panel = DiffDiffPanel(c.host, controller=c)
    client.feed(protocol.Welcome(caps(models=["a", "b"], schedulers=["DDIM", "Euler a"])))
    assert [panel.model.itemData(i) for i in range(panel.model.count())] == ["", "a", "b"]
    assert [panel.scheduler.itemText(i) for i in range(panel.scheduler.count())][1:] == ["DDIM", "Euler a"]
    assert panel.generate.isEnabled()



def test_generate_is_enabled_only_while_connected_and_a_random_seed_is_shown():
    c, client, *_ = make(mode="uniform")
    panel = DiffDiffPanel(c.host, controller=c)
    assert panel.generate.isEnabled()
    client.state_changed.emit("disconnected", "Cannot reach the server")
    assert not panel.generate.isEnabled() and "Cannot reach" in panel.connection.text()
    client.state_changed.emit("connected", "Connected again")
    assert panel.generate.isEnabled()
    c.update_settings(random_seed=True)
    panel.generate.click()
    assert c.last_seed is not None and client.received().request.seed == c.last_seed
    assert panel.message.text() == f"Seed {c.last_seed}"
    panel.apply_button.click()  # nothing picked: a warning, in the warning colour (not the error one)
    assert "e0a000" in panel.message.styleSheet()

def test_softness_and_strength_sliders_follow_their_boxes():
    c, *_ = make(mode="soft_inpaint")
    panel = DiffDiffPanel(c.host, controller=c)
    panel.softness_slider.setValue(40)
    assert panel.softness.value() == 40 and c.settings.softness_px == 40
    panel.softness.setValue(300)  # beyond the slider's range: the box still takes it
    assert c.settings.softness_px == 300 and panel.softness.value() == 300
    assert panel.softness_slider.value() == panel.softness_slider.maximum()
    panel.strength_slider.setValue(25)
    assert c.settings.strength == 0.25 and panel.strength.value() == 0.25
    panel.strength.setValue(0.8)
    assert panel.strength_slider.value() == 80


def test_panel_fits_a_260_by_300_docker_slot():
    # Long hints wrap and combos elide: an unwrapped sentence made the panel 580 px wide once.
    c, client, *_ = make(mode="change_map", prompt="a very long prompt " * 20)
    client.feed(protocol.Welcome(caps(models=["a-model-with-a-very-long-name/and-a-path"])))
    c.notice.emit("error", "A long error message that has to wrap inside the narrow docker " * 3)
    panel = DiffDiffPanel(c.host, controller=c)
    assert panel.minimumSizeHint().width() <= 260
    panel.resize(260, 300)
    panel.show()
    qapp().processEvents()
    for widget in (panel.prompt, panel.generate, panel.cancel, panel.progress, panel.mode):
        g = widget.geometry()
        assert g.x() >= 0 and g.right() < 260 and g.bottom() < 300, (widget, g)
    assert not panel.advanced.isVisible()  # folded until asked for
    panel.advanced_toggle.click()
    assert panel.advanced.isVisible() and panel.steps.isVisible()
    panel.close()


def test_the_server_dialog_sets_address_and_token():
    c, client, *_ = make(mode="uniform")
    calls: list[tuple[str, str]] = []
    client.connect_to = lambda url, token="": calls.append((url, token))
    panel = DiffDiffPanel(c.host, controller=c)
    dialog = panel.server_dialog()
    assert dialog.url.text() == c.settings.server_url and dialog.token.echoMode() == ECHO_PASSWORD
    dialog.url.setText(" ws://10.0.0.5:7860 ")
    dialog.token.setText("s3cret")
    panel.apply_server_dialog(dialog)
    assert (c.settings.server_url, c.settings.token) == ("ws://10.0.0.5:7860", "s3cret")
    assert calls[-1] == ("ws://10.0.0.5:7860", "s3cret")


def test_confirming_the_url_reconnects_only_when_not_connected():
    c, client, *_ = make(mode="uniform")
    calls: list[str] = []
    client.connect_to = lambda url, token="": calls.append(url)
    c.update_settings(server_url=c.settings.server_url)  # connected: nothing to do
    assert calls == []
    c.connection_state = "disconnected"
    c.update_settings(server_url=c.settings.server_url)  # Enter in the URL box: try now
    assert calls == [c.settings.server_url]
    c.connection_state = "connected"
    c.update_settings(server_url="ws://127.0.0.1:9999")
    assert calls[-1] == "ws://127.0.0.1:9999"


# -- limits, closed documents, large canvases -----------------------------------------------------


def test_no_box_offers_more_than_the_protocol_and_the_server_lowers_them():
    c, client, *_ = make(mode="uniform")
    panel = DiffDiffPanel(c.host, controller=c)
    assert panel.steps.maximum() == protocol.MAX_STEPS and panel.variants.maximum() == protocol.MAX_VARIANTS
    assert panel.guidance.maximum() == protocol.MAX_GUIDANCE and panel.seed.maximum() <= protocol.MAX_SEED
    assert panel.fan_columns.maximum() <= protocol.MAX_FAN_COUNT
    client.feed(protocol.Welcome(caps(max_steps=50, max_variants=2)))  # a server that allows less
    assert (panel.steps.maximum(), panel.variants.maximum()) == (50, 2)
    panel.steps.setValue(120)
    assert c.settings.steps == 50


def test_steps_over_the_servers_limit_are_refused_before_sending():
    c, client, _, notices = make(mode="uniform", steps=120)
    c.capabilities = client.session.capabilities = caps(max_steps=50)
    assert not c.generate() and client.frames == []
    assert "steps" in notices[-1][1]


def test_generate_says_why_it_is_disabled():
    c, client, canvas, _ = make(mode="uniform")
    panel = DiffDiffPanel(c.host, controller=c)
    client.state_changed.emit("disconnected", "Cannot reach the server")
    assert not panel.generate.isEnabled() and "Not connected" in panel.status.text()
    client.state_changed.emit("connected", "Connected")
    c.host.canvas = None
    panel.refresh()
    assert not panel.generate.isEnabled() and panel.status.text() == "Open a document first."


def test_closing_the_document_mid_job_cancels_it_quietly_and_drops_its_results():
    c, client, canvas, notices = make(mode="uniform", variants=2)
    panel = DiffDiffPanel(c.host, controller=c)
    _two_results(c, client, canvas)
    assert panel.history.count() == 2
    assert c.generate()
    accept(client, job_id=41, index=-1)
    canvas.close()
    client.feed(protocol.Preview(41, 1, Region(0, 0, W, H), rgba_png(np.full((H, W, 4), 9, np.uint8)), W, H))
    settle(c)  # drawing it finds the document gone: no exception, the job is cancelled
    assert client.cancels[-1] == {"type": "cancel", "job_id": 41}
    assert not c.busy and panel.history.count() == 0 and c.history.entries == []
    assert notices[-1] == ("info", "The document was closed; its job was stopped.")
    outcome = c.outcomes[protocol.loads(client.frames[-1][0])["ref"]]
    assert outcome.state == "cancelled" and outcome.message == "The document was closed."
    client.feed(protocol.Cancelled(41, "cancelled by the client"), protocol.Error(
        protocol.E_UNKNOWN_JOB, "No job 41 of yours is queued or running.", job_id=41))
    assert notices[-1] == ("info", "The document was closed; its job was stopped.")  # nothing red after it


def test_a_cancel_that_crosses_the_jobs_end_is_not_an_error():
    c, client, canvas, notices = make(mode="uniform")
    assert c.generate()
    accept(client, job_id=42)
    c.cancel()
    client.feed(result(42, 0, 11, Region(0, 0, W, H), np.full((H, W, 4), 9, np.uint8)), protocol.Done(42, 1, 9, {}),
                protocol.Error(protocol.E_UNKNOWN_JOB, "No job 42 of yours is queued or running.", job_id=42))
    assert notices[-1][0] == "info" and notices[-1][1].startswith("Done in")


def test_a_job_cancelled_before_it_was_accepted_ends_on_the_servers_answer():
    c, client, canvas, notices = make(mode="uniform")
    assert c.generate()
    ref = protocol.loads(client.frames[0][0])["ref"]
    c.cancel()
    assert client.cancels == [{"type": "cancel", "ref": ref}]
    client.feed(protocol.Cancelled(None, "cancelled by the client before it was accepted", ref=ref))
    assert not c.busy and c.outcomes[ref].state == "cancelled" and notices[-1] == ("info", "Cancelled.")


def test_the_servers_stop_is_told_as_such():
    c, client, canvas, notices = make(mode="uniform")
    assert c.generate()
    accept(client, job_id=43)
    client.feed(protocol.Cancelled(43, "the server is shutting down"))
    assert notices[-1] == ("warning", "The server stopped the job: the server is shutting down.")


def test_a_large_canvas_sends_only_the_change_and_its_context():
    big_w, big_h = 400, 300
    pic = np.random.default_rng(7).integers(0, 256, (big_h, big_w, 4), dtype=np.uint8)
    pic[..., 3] = 255
    canvas = FakeCanvas(pic)
    layer = np.zeros((big_h, big_w, 4), np.uint8)
    layer[..., 3] = 255
    layer[200:230, 300:340] = (255, 255, 255, 255)
    canvas.add_painter_layer("Change Map", layer)
    c, client, _, notices = make(canvas, mode="change_map")
    c.capabilities = client.session.capabilities = caps(native_resolution=64)
    assert c.generate(), notices
    got = client.received()
    crop = context_crop(Region(300, 200, 40, 30), (big_w, big_h), 64)  # what the server would process
    assert (got.request.width, got.request.height) == (crop.width, crop.height) < (big_w, big_h)
    np.testing.assert_array_equal(png_bgra(got.image_png), pic[crop.y:crop.y + crop.height,
                                                               crop.x:crop.x + crop.width])
    m = np.frombuffer(got.map_gray8, np.uint8).reshape(crop.height, crop.width)
    assert m.sum() == 255 * 40 * 30 and m[200 - crop.y, 300 - crop.x] == 255
    accept(client, job_id=44)
    local = Region(0, 0, crop.width, crop.height)
    client.feed(result(44, 0, 11, local, np.full((crop.height, crop.width, 4), 255, np.uint8)),
                protocol.Done(44, 1, 9, {}))
    (res,) = canvas.plugin_layers()  # back where it came from on the canvas
    changed = np.argwhere(res.bgra[..., 3] > 0)
    assert changed.min(axis=0).tolist() == [200, 300] and changed.max(axis=0).tolist() == [229, 339]
