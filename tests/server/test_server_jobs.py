"""A job through the real websocket server on loopback (tiny-sd in-process): what streams back,
and that the result is the pipeline called directly, pixel for pixel, in every mode and on a
region of a large canvas.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from tests.server.server_harness import (
    Client,
    async_test,
    decode,
    direct,
    gradient_map,
    of,
    serving,
)

from server import regions
from server.maps import fan_map, soft_inpaint_map
from shared import protocol as p
from shared.fan import fan_strengths
from tests.conftest import make_test_image

pytestmark = pytest.mark.timeout(120)


# --- a full job -----------------------------------------------------------------------------------


@async_test
async def test_full_job_streams_progress_previews_and_the_pipelines_exact_result(gated_pipe, tiny_sd):
    image = make_test_image(64, 64, seed=3)
    change = gradient_map()
    async with serving(gated_pipe) as server:
        client = await Client.connect(server)
        await client.submit(image, change, steps=4, seed=1234, scheduler="Euler",
                            preview_every=1)
        accepted = await client.accepted()
        assert accepted.position == 0 and accepted.seed == 1234
        events = await client.until_end(accepted.job_id)

    assert isinstance(events[-1], p.Done), events[-1]
    started = of(events, p.Started)
    assert len(started) == 1 and (started[0].width, started[0].height) == (64, 64)
    assert started[0].region == p.Region(0, 0, 64, 64)
    progress = of(events, p.Progress)
    total = progress[0].total
    assert [e.step for e in progress] == list(range(1, total + 1)) and total >= 2
    assert all(e.eta_s is not None and e.elapsed_s >= 0 for e in progress)
    # The ETA is the mean time per step so far times the steps left (both sent rounded to 1 ms).
    for e in progress:
        assert e.eta_s == pytest.approx(e.elapsed_s / e.step * (e.total - e.step), abs=1e-3 * e.total), e
    assert progress[-1].eta_s == 0 and progress[-2].eta_s > 0
    previews = of(events, p.Preview)
    assert [e.step for e in previews] == list(range(1, total))  # none for the last step
    assert all((e.width, e.height) == (8, 8) and decode(e.png).shape == (8, 8, 3)
               for e in previews)
    (result,) = of(events, p.Result)
    assert (result.width, result.height, result.index, result.seed) == (64, 64, 0, 1234)
    assert result.region == p.Region(0, 0, 64, 64)
    assert {"queued_s", "run_s"} <= set(result.timings)
    assert events[-1].images == 1 and events[-1].steps_run == total
    done = events[-1].timings
    assert {"queued_s", "run_s", "total_s"} <= set(done)
    assert done["run_s"] == pytest.approx(result.timings["run_s"], abs=1e-3)
    assert done["total_s"] >= done["run_s"] >= progress[-1].elapsed_s - 1e-3

    expected = direct(tiny_sd, image, change, [1234], num_inference_steps=4, scheduler="Euler")
    got = decode(result.png)
    np.testing.assert_array_equal(got, expected[0])
    np.testing.assert_array_equal(got[:, :16], np.asarray(image)[:, :16])  # the kept quarter


@pytest.mark.parametrize("mode", ["soft_inpaint", "fan", "uniform"])
@async_test
async def test_every_mode_gives_the_pipelines_exact_result(gated_pipe, tiny_sd, mode):
    image = make_test_image(64, 64, seed=4)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 24:44] = 255
    fields, gray, expected_map = {
        "soft_inpaint": ({"soft_inpaint": p.SoftInpaint(softness_px=6.0, grow_px=2)}, mask,
                         soft_inpaint_map(mask, 6.0, 2)),
        "fan": ({"fan": p.FanSpec(4, 0.25, 1.0)}, None,
                fan_map(64, 64, fan_strengths(4, 0.25, 1.0))),
        "uniform": ({"strength": 0.7}, None, np.full((64, 64), 0.7, np.float32)),
    }[mode]
    async with serving(gated_pipe) as server:
        client = await Client.connect(server)
        await client.submit(image, gray, mode=mode, seed=99, **fields)
        accepted = await client.accepted()
        events = await client.until_end(accepted.job_id)
    assert isinstance(events[-1], p.Done), events[-1]
    (result,) = of(events, p.Result)
    np.testing.assert_array_equal(decode(result.png), direct(tiny_sd, image, expected_map, [99])[0])



@async_test
async def test_the_servers_preview_interval_applies_when_the_client_names_none(gated_pipe):
    async with serving(gated_pipe, preview_every=2) as server:
        client = await Client.connect(server)
        await client.submit(make_test_image(), mode="uniform", strength=1.0, steps=5, preview_every=None)
        events = await client.until_end((await client.accepted()).job_id)
        await client.submit(make_test_image(), mode="uniform", strength=1.0, steps=5, preview_every=0)
        quiet = await client.until_end((await client.accepted()).job_id)
    assert [e.step for e in of(events, p.Preview)] == [2, 4]  # every 2nd step (none at the last)
    assert of(quiet, p.Preview) == []  # 0 from the client: none at all

@async_test
async def test_variants_use_seeds_s_plus_i(gated_pipe, tiny_sd):
    image = make_test_image(64, 64, seed=5)
    async with serving(gated_pipe) as server:
        client = await Client.connect(server)
        await client.submit(image, mode="uniform", strength=0.8, seed=40, variants=2)
        accepted = await client.accepted()
        events = await client.until_end(accepted.job_id)
    results = of(events, p.Result)
    assert [(r.index, r.seed) for r in results] == [(0, 40), (1, 41)]
    assert events[-1].images == 2
    change = np.full((64, 64), 0.8, np.float32)
    batch = direct(tiny_sd, image, change, [40, 41])
    for r, expected in zip(results, batch, strict=True):
        np.testing.assert_array_equal(decode(r.png), expected)
    assert not np.array_equal(decode(results[0].png), decode(results[1].png))
    # Variant 1 is what seed 41 gives alone (up to batch float noise, one 8-bit level).
    alone = direct(tiny_sd, image, change, [41])[0]
    assert np.abs(decode(results[1].png).astype(int) - alone).max() <= 1


@async_test
async def test_server_picks_a_seed_when_the_client_leaves_it_out(gated_pipe):
    async with serving(gated_pipe) as server:
        client = await Client.connect(server)
        await client.submit(make_test_image(), mode="uniform", strength=0.5, seed=None)
        accepted = await client.accepted()
        events = await client.until_end(accepted.job_id)
    (result,) = of(events, p.Result)
    assert result.seed == accepted.seed and gated_pipe.runs[0].kwargs["generator"][0].initial_seed() \
        == accepted.seed


# --- large canvases -------------------------------------------------------------------------------


@async_test
async def test_small_edit_on_a_large_canvas_runs_on_its_region_only(gated_pipe, tiny_sd):
    canvas = make_test_image(320, 256, seed=6)
    change = np.zeros((256, 320), np.uint8)
    change[150:162, 210:224] = 255
    async with serving(gated_pipe) as server:
        client = await Client.connect(server)
        await client.submit(canvas, change, steps=3, seed=11)
        events = await client.until_end((await client.accepted()).job_id)
    assert isinstance(events[-1], p.Done)
    (started,) = of(events, p.Started)
    (result,) = of(events, p.Result)
    crop = result.region
    assert started.region == crop and (started.width, started.height) == (64, 64)
    assert (crop.width, crop.height) == (result.width, result.height) == (64, 64)
    assert crop.x <= 210 and crop.y <= 150 and crop.x + 64 >= 224 and crop.y + 64 >= 162
    # The model saw only the region, at native resolution.
    assert gated_pipe.runs[0].kwargs["image"].size == (64, 64)

    pasted = np.asarray(regions.paste(canvas, Image.open(io.BytesIO(result.png)), crop))
    before = np.asarray(canvas)
    edited = change > 0
    np.testing.assert_array_equal(pasted[~edited], before[~edited])
    assert not np.array_equal(pasted[edited], before[edited])
    box = (crop.x, crop.y, crop.x + 64, crop.y + 64)
    expected = direct(tiny_sd, canvas.crop(box), change[box[1]:box[3], box[0]:box[2]], [11])
    np.testing.assert_array_equal(decode(result.png), expected[0])



@async_test
async def test_the_region_pixel_budget_downscales_the_run_and_the_result_comes_back_full_size(gated_pipe):
    image = make_test_image(64, 64, seed=9)
    change = gradient_map()  # the left quarter is kept
    async with serving(gated_pipe, max_region_pixels=32 * 32) as server:
        client = await Client.connect(server)
        await client.submit(image, change, steps=3, seed=2)
        events = await client.until_end((await client.accepted()).job_id)
    (started,) = of(events, p.Started)
    (result,) = of(events, p.Result)
    assert (started.width, started.height) == (32, 32) and gated_pipe.runs[0].kwargs["image"].size == (32, 32)
    assert (result.width, result.height) == (64, 64) and result.region == p.Region(0, 0, 64, 64)
    np.testing.assert_array_equal(decode(result.png)[:, :16], np.asarray(image)[:, :16])  # kept exactly

@async_test
async def test_a_region_confines_a_uniform_job_on_a_large_canvas(gated_pipe):
    canvas = make_test_image(200, 160, seed=8)
    area = p.Region(90, 70, 30, 20)
    async with serving(gated_pipe) as server:
        client = await Client.connect(server)
        await client.submit(canvas, mode="uniform", strength=1.0, region=area)
        events = await client.until_end((await client.accepted()).job_id)
    (result,) = of(events, p.Result)
    crop = result.region
    assert (crop.width, crop.height) == (64, 64)
    assert crop.x <= area.x and crop.x + 64 >= area.x + area.width
    pasted = np.asarray(regions.paste(canvas, Image.open(io.BytesIO(result.png)), crop))
    inside = np.zeros((160, 200), bool)
    inside[area.y:area.y + area.height, area.x:area.x + area.width] = True
    np.testing.assert_array_equal(pasted[~inside], np.asarray(canvas)[~inside])
    assert not np.array_equal(pasted[inside], np.asarray(canvas)[inside])
