"""Models on a running server: listing and loading them, and failures (out of memory while
running or loading) that cost one job and leave the server serving.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from tests.server.server_harness import (
    Client,
    async_test,
    decode,
    direct,
    of,
    serving,
)

from shared import protocol as p
from tests.conftest import make_test_image

pytestmark = pytest.mark.timeout(120)


# --- failures ---------------------------------------------------------------------------------


@async_test
async def test_out_of_memory_fails_that_job_clearly_and_the_next_one_runs(gated_pipe, tiny_sd):
    image = make_test_image()
    async with serving(gated_pipe) as server:
        client = await Client.connect(server)
        gated_pipe.fail = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        await client.submit(image, mode="uniform", strength=0.5, variants=2)
        job = await client.accepted()
        events = await client.until_end(job.job_id)
        error = events[-1]
        assert isinstance(error, p.Error) and error.code == p.E_OUT_OF_MEMORY
        assert "out of memory" in error.message and "64x64" in error.message
        assert "variant" in error.message  # says what to try

        gated_pipe.fail = RuntimeError("a bug in a pipeline")
        await client.submit(image, mode="uniform", strength=0.5)
        events = await client.until_end((await client.accepted()).job_id)
        assert events[-1].code == p.E_JOB_FAILED and "a bug in a pipeline" in events[-1].message

        await client.submit(image, mode="uniform", strength=0.5, seed=3)
        events = await client.until_end((await client.accepted()).job_id)
        assert isinstance(events[-1], p.Done)
    (result,) = of(events, p.Result)
    np.testing.assert_array_equal(decode(result.png),
                                  direct(tiny_sd, image, np.full((64, 64), 0.5), [3])[0])


@async_test
async def test_out_of_memory_while_loading_a_model_fails_that_job_and_keeps_the_old_one(gated_pipe):
    def loader(name: str) -> Any:
        if name == "tiny-sd-huge":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")
        return gated_pipe

    async with serving(gated_pipe, loader, extra_models=("tiny-sd-huge",)) as server:
        client = await Client.connect(server)
        assert client.session.capabilities.models == ["tiny-sd", "tiny-sd-huge"]
        await client.submit(make_test_image(), mode="uniform", strength=0.5,
                            model="tiny-sd-huge")
        events = await client.until_end((await client.accepted()).job_id)
        error = events[-1]
        assert error.code == p.E_MODEL_LOAD_FAILED and "Not enough device memory" in error.message
        assert "tiny-sd-huge" in error.message
        await client.ws.send(client.session.load_model("tiny-sd-huge"))
        assert (await client.error()).code == p.E_MODEL_LOAD_FAILED
        await client.submit(make_test_image(), mode="uniform", strength=0.5)
        events = await client.until_end((await client.accepted()).job_id)
        assert isinstance(events[-1], p.Done)
        await client.ws.send(client.session.list_models())
        models = await client.next()
        assert models.current_model == "tiny-sd"


@async_test
async def test_list_and_load_models(gated_pipe):
    loaded = []

    def loader(name: str) -> Any:
        loaded.append(name)
        return gated_pipe

    async with serving(gated_pipe, loader, extra_models=("tiny-sd-2",)) as server:
        client = await Client.connect(server)
        await client.ws.send(client.session.list_models())
        models = await client.next()
        assert (models.models, models.current_model) == (["tiny-sd", "tiny-sd-2"], "tiny-sd")
        await client.ws.send(client.session.load_model("tiny-sd-2"))
        event = await client.next()
        assert isinstance(event, p.ModelLoaded) and event.model == "tiny-sd-2"
        assert (event.family, event.native_resolution) == ("sd", 64)
        other = await Client.connect(server)
        assert other.session.capabilities.current_model == "tiny-sd-2"
    assert loaded == ["tiny-sd", "tiny-sd-2"]
