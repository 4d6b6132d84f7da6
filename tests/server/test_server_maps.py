"""Map makers (``make_map``) through the real websocket server, with the tiny offline depth and
segment models; and their loading path from a saved folder (the path real checkpoints take)."""

from __future__ import annotations

import numpy as np
import pytest
from tests.server.server_harness import Client, async_test, gradient_map, of, png_bytes, serving

from server.map_makers import (
    FlatMapError,
    MapMakers,
    default_map_models,
    load_map_model,
    normalise_depth,
)
from shared import protocol as p
from tests.conftest import make_test_image

pytestmark = pytest.mark.timeout(120)


async def make_map(client: Client, image, kind: str = "depth", **fields) -> p.MakeMap:
    request = p.MakeMap(0, kind, image.width, image.height, **fields)
    for frame in client.session.make_map(request, png_bytes(image)):
        await client.ws.send(frame)
    return request


@async_test
async def test_a_depth_map_comes_back_at_the_pictures_size_and_a_job_behind_it_runs(gated_pipe):
    image = make_test_image(96, 64, seed=2)
    async with serving(gated_pipe) as server:
        client = await Client.connect(server)
        await make_map(client, image)
        await client.submit(make_test_image(64, 64), gradient_map())
        map_job = (await client.accepted()).job_id
        diffusion_job = (await client.accepted()).job_id
        await client.until_end(map_job)
        after = await client.until_end(diffusion_job)
    events = [e for e in client.seen if getattr(e, "job_id", None) == map_job]

    assert isinstance(events[-1], p.Done) and events[-1].images == 1
    assert isinstance(events[0], p.Accepted) and isinstance(events[1], p.Started)
    [ready] = of(events, p.MapReady)
    assert (ready.width, ready.height, ready.kind) == (96, 64, "depth")
    depth = np.frombuffer(ready.gray8, np.uint8)
    assert depth.size == 96 * 64 and depth.min() == 0 and depth.max() == 255  # its full range
    assert [(e.step, e.total) for e in of(events, p.Progress)] == [(1, 2), (2, 2)]
    assert of(events, p.Started)[0].region == p.Region(0, 0, 96, 64)
    assert isinstance(after[-1], p.Done) and len(of(after, p.Result)) == 1


@async_test
async def test_a_map_waits_behind_a_running_job_without_stopping_it(gated_pipe):
    image = make_test_image(64, 64)
    gated_pipe.hold()
    async with serving(gated_pipe) as server:
        client = await Client.connect(server)
        await client.submit(image, gradient_map(), steps=4)
        job = (await client.accepted()).job_id
        await client.until(lambda e: isinstance(e, p.Progress))  # it runs, held after step 1
        await make_map(client, image, "segments", points=[(20, 30)], softness_px=6.0)
        accepted = await client.accepted()
        assert accepted.position == 1
        gated_pipe.release()
        events = await client.until_end(accepted.job_id)
    assert [e for e in events if isinstance(e, p.Done)][0].job_id == job  # the job ended first
    assert gated_pipe.runs[0].steps > 1 and not gated_pipe.runs[0].cancelled
    [ready] = of(events, p.MapReady)
    assert len(ready.gray8) == 64 * 64 and ready.kind == "segments"


@async_test
async def test_bad_requests_get_clear_errors_and_the_connection_stays(gated_pipe):
    image = make_test_image(64, 64)
    async with serving(gated_pipe, max_pixels=128 * 128) as server:
        client = await Client.connect(server)
        await client.send_json({"type": "make_map", "ref": 5, "kind": "normals", "width": 64,
                                "height": 64})
        error = await client.error()
        assert error.code == p.E_BAD_MESSAGE and "depth, segments" in error.message
        assert error.ref == 5
        await client.send_json({"type": "make_map", "ref": 6, "kind": "depth", "width": 512,
                                "height": 512})
        error = await client.error()
        assert error.code == p.E_TOO_LARGE and "16384" in error.message
        # A model that sees everything at one depth: a sentence, not a map of NaNs.
        server.worker.map_makers.loader = lambda kind, model_id: (_FlatDepth(), _processor)
        await make_map(client, image)
        events = await client.until_end((await client.accepted()).job_id)
        assert isinstance(events[-1], p.Error) and "flat" in events[-1].message
        assert events[-1].code == p.E_JOB_FAILED


class _FlatDepth:
    def to(self, device):
        return self

    def eval(self):
        return self

    def __call__(self, **inputs):
        import torch

        class Out:
            predicted_depth = torch.full((1, 8, 8), 3.0)

        return Out()


def _processor(images, return_tensors):
    class Inputs(dict):
        def to(self, device):
            return self

    return Inputs()


def test_normalise_depth_puts_near_white_and_refuses_flat_or_invalid():
    gray = normalise_depth(np.array([[0.5, 1.0], [2.0, 2.5]]))
    assert gray.tolist() == [[0, 64], [191, 255]]
    for bad in (np.full((4, 4), 7.0), np.array([[1.0, np.nan]])):
        with pytest.raises(FlatMapError):
            normalise_depth(bad)


def test_the_defaults_follow_the_diffusion_model():
    assert default_map_models("tiny-sd") == {"depth": "tiny-depth", "segments": "tiny-segments"}
    assert default_map_models("stabilityai/sdxl")["depth"] == \
        "depth-anything/Depth-Anything-V2-Small-hf"


@pytest.mark.parametrize("kind,tiny", [("depth", "tiny-depth"), ("segments", "tiny-segments")])
def test_a_saved_model_loads_through_the_real_checkpoints_path(tmp_path, kind, tiny):
    model, processor = load_map_model(kind, tiny)
    model.save_pretrained(tmp_path, safe_serialization=True)
    processor.save_pretrained(tmp_path)
    image = make_test_image(40, 30)
    request = p.MakeMap(1, kind, 40, 30, points=[(10, 10)] if kind == "segments" else [])
    from_folder = MapMakers({kind: str(tmp_path)}).make(request, image)
    built_in = MapMakers({kind: tiny}).make(request, image)
    assert len(from_folder) == 40 * 30 and from_folder == built_in


@async_test
async def test_the_operator_names_the_map_models(gated_pipe):
    from server.__main__ import parse_args

    args = parse_args(["--depth-model", "Intel/dpt-hybrid-midas", "--segment-model", "/models/sam"])
    assert (args.depth_model, args.segment_model) == ("Intel/dpt-hybrid-midas", "/models/sam")
    async with serving(gated_pipe, depth_model="Intel/dpt-hybrid-midas") as server:
        assert server.worker.map_makers.models == {"depth": "Intel/dpt-hybrid-midas",
                                                   "segments": "tiny-segments"}
        assert not server.worker.map_makers.is_loaded("depth")  # loaded on first use only
