"""The map models give their memory back: freed after ``--map-models-idle`` seconds unused, before
a diffusion model loads, and when a diffusion job runs out of memory; the next map loads them
again. Through the real websocket server with the tiny depth and segment models. And the
segment maker's click points: picture pixels, positive, reaching the model where they belong."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import weakref
from typing import Any

import numpy as np
import pytest
import torch
from tests.server.server_harness import Client, async_test, of, png_bytes, serving

from server.__main__ import parse_args
from server.map_makers import MapMakers, load_map_model
from shared import protocol as p
from tests.conftest import make_test_image

pytestmark = pytest.mark.timeout(120)

UNLOADED = "map model(s)"


async def map_events(client: Client, kind: str = "depth", **fields: Any) -> list[p.Event]:
    image = make_test_image(48, 32, seed=4)
    request = p.MakeMap(0, kind, image.width, image.height, **fields)
    for frame in client.session.make_map(request, png_bytes(image)):
        await client.ws.send(frame)
    return await client.until_end((await client.accepted()).job_id)


def made(events: list[p.Event]) -> bytes:
    assert isinstance(events[-1], p.Done), events[-1]
    [ready] = of(events, p.MapReady)
    return ready.gray8


async def wait_until(test, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not test():
        assert time.monotonic() < deadline, "not within the safety timeout"
        await asyncio.sleep(0.02)


def unload_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "server.map_makers" and UNLOADED in r.getMessage()]


@async_test
async def test_idle_map_models_are_freed_and_the_next_map_loads_them_again(gated_pipe, caplog):
    caplog.set_level(logging.INFO, logger="server.map_makers")
    async with serving(gated_pipe, map_models_idle_s=0.3) as server:
        makers = server.worker.map_makers
        loads = []  # a weak reference to each model the server loads (the real tiny ones)

        def loader(kind: str, model_id: str) -> Any:
            model, processor = load_map_model(kind, model_id)
            loads.append((kind, weakref.ref(model)))
            return model, processor

        makers.loader = loader
        client = await Client.connect(server)
        first = made(await map_events(client))
        # The reaper forgets the model, frees memory, then logs: wait for the line too.
        await wait_until(lambda: not makers.is_loaded("depth") and unload_lines(caplog))
        gc.collect()
        assert [kind for kind, _ in loads] == ["depth"]
        assert loads[0][1]() is None  # nothing holds the weights any more: their memory is free
        assert unload_lines(caplog) == ["unloaded the depth map model(s) (unused for 0.3 s)"]

        again = made(await map_events(client))
        assert again == first  # the same model, loaded again
        assert [kind for kind, _ in loads] == ["depth", "depth"]
        made(await map_events(client, "segments", points=[(10, 10)]))
        await wait_until(lambda: not (makers.is_loaded("depth") or makers.is_loaded("segments")))
    gc.collect()
    assert [kind for kind, _ in loads] == ["depth", "depth", "segments"]
    assert all(ref() is None for _, ref in loads)
    # One line each time (the two may go together or one after the other).
    lines = unload_lines(caplog)
    assert sorted(lines[1:]) in (["unloaded the depth, segments map model(s) (unused for 0.3 s)"],
                                 ["unloaded the depth map model(s) (unused for 0.3 s)",
                                  "unloaded the segments map model(s) (unused for 0.3 s)"])


@async_test
async def test_zero_keeps_them_until_a_diffusion_model_loads(gated_pipe, caplog):
    caplog.set_level(logging.INFO, logger="server.map_makers")
    loaded, watched = [], []  # each diffusion load: (model, whether the depth model was loaded)

    def loader(name: str) -> Any:
        loaded.append((name, watched[0].is_loaded("depth") if watched else None))
        return gated_pipe

    async with serving(gated_pipe, loader, extra_models=("tiny-sd-2",),
                       map_models_idle_s=0) as server:
        makers = server.worker.map_makers
        watched.append(makers)
        client = await Client.connect(server)
        made(await map_events(client))
        await asyncio.sleep(0.3)
        assert makers.is_loaded("depth")
        assert "map-models-idle" not in [t.name for t in threading.enumerate()]  # 0: no timer
        await client.submit(make_test_image(), mode="uniform", strength=0.5)
        assert isinstance((await client.until_end((await client.accepted()).job_id))[-1], p.Done)
        assert makers.is_loaded("depth")  # a job on the loaded model needs no room

        await client.ws.send(client.session.load_model("tiny-sd-2"))
        assert isinstance(await client.next(), p.ModelLoaded)
        assert not makers.is_loaded("depth")
        made(await map_events(client))
        assert makers.is_loaded("depth")
    # Freed before the new model's weights were loaded, not after.
    assert loaded == [("tiny-sd", None), ("tiny-sd-2", False)]
    assert unload_lines(caplog) == ["unloaded the depth map model(s) (tiny-sd-2 loads)"]


@async_test
async def test_a_diffusion_job_out_of_memory_frees_them(gated_pipe):
    async with serving(gated_pipe, map_models_idle_s=0) as server:
        makers = server.worker.map_makers
        client = await Client.connect(server)
        made(await map_events(client, "segments", box=p.Region(4, 4, 20, 20)))
        gated_pipe.fail = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        await client.submit(make_test_image(), mode="uniform", strength=0.5)
        events = await client.until_end((await client.accepted()).job_id)
        assert events[-1].code == p.E_OUT_OF_MEMORY
        assert not makers.is_loaded("segments")
        made(await map_events(client, "segments", box=p.Region(4, 4, 20, 20)))


def test_the_idle_time_is_an_option():
    assert parse_args([]).map_models_idle == 300.0
    assert parse_args(["--map-models-idle", "0"]).map_models_idle == 0.0
    for bad in ("-1", "soon", "nan", "inf"):
        with pytest.raises(SystemExit):
            parse_args(["--map-models-idle", bad])


# --- click points -------------------------------------------------------------------------------


def test_clicks_are_positive_points_in_picture_pixels_with_or_without_a_box():
    """What the plugin sends (``points``: [[x, y], ...] in picture pixels) reaches SAM's prompt
    encoder as positive points, scaled like the picture (x along the width), beside the box."""
    makers = MapMakers({"segments": "tiny-segments"}, idle_s=0)
    encoder = makers.ensure("segments")[0].prompt_encoder
    seen: list[dict[str, Any]] = []
    encoder.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs),
                                      with_kwargs=True)
    image = make_test_image(128, 64, seed=1)  # longest side 128 -> the tiny model's 64: x 0.5
    message = {"type": "make_map", "ref": 3, "kind": "segments", "width": 128, "height": 64,
               "points": [[100, 10], [20, 50]]}
    clicks = p.MakeMap.from_dict(message)
    with_box = p.MakeMap.from_dict({**message, "box": {"x": 8, "y": 4, "width": 40, "height": 20}})
    maps = [makers.make(r, image) for r in (clicks, with_box)]

    points = seen[0]["input_points"].reshape(-1, 2).tolist()
    assert points == [[50.0, 5.0], [10.0, 25.0]]
    assert seen[0]["input_labels"].flatten().tolist() == [1, 1]  # positive clicks
    assert seen[0]["input_boxes"] is None
    assert seen[1]["input_points"].reshape(-1, 2).tolist() == points
    assert seen[1]["input_boxes"].flatten().tolist() == [4.0, 2.0, 24.0, 12.0]
    assert all(len(m) == 128 * 64 for m in maps)
    assert set(np.unique(np.frombuffer(maps[0], np.uint8))) <= {0, 255}  # no softness asked
