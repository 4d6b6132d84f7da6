"""Bad input and the handshake: every malformed message or frame gets an error to that client
alone and the server goes on; a wrong version, token or missing hello is refused clearly.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from tests.server.server_harness import (
    TIMEOUT_S,
    Client,
    async_test,
    frame,
    gradient_map,
    of,
    png_bytes,
    serving,
    submit_message,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.app import (
    ConfigError,
    DiffusionServer,
    ServerConfig,
    check_bind,
)
from shared import protocol as p
from tests.conftest import make_test_image

pytestmark = pytest.mark.timeout(120)


BAD_TEXT = [
    # (what the client sends, the error code, the ref the error carries)
    ("{not json", p.E_BAD_JSON, None),
    ("[1, 2]", p.E_BAD_MESSAGE, None),
    ('{"type": 5}', p.E_BAD_MESSAGE, None),
    ('{"type": "dance"}', p.E_UNKNOWN_TYPE, None),
    ('{"type": "hello", "protocol": 1}', p.E_BAD_MESSAGE, None),
    (json.dumps(submit_message(steps="ten")), p.E_BAD_MESSAGE, 500),
    (json.dumps(submit_message(width=True)), p.E_BAD_MESSAGE, 500),
    (json.dumps(submit_message(width=None)), p.E_BAD_MESSAGE, 500),
    (json.dumps(submit_message(ref=None)), p.E_BAD_MESSAGE, None),
    (json.dumps(submit_message(ref="1")), p.E_BAD_MESSAGE, None),
    (json.dumps(submit_message(prompt=["a"])), p.E_BAD_MESSAGE, 500),
    (json.dumps(submit_message(width=512, height=512)), p.E_TOO_LARGE, 500),
    (json.dumps(submit_message(width=70000)), p.E_BAD_MESSAGE, 500),
    (json.dumps(submit_message(steps=500)), p.E_BAD_MESSAGE, 500),
    (json.dumps(submit_message(steps=0)), p.E_BAD_MESSAGE, 500),
    (json.dumps(submit_message(variants=99)), p.E_BAD_MESSAGE, 500),
    (json.dumps(submit_message(seed=-1)), p.E_BAD_MESSAGE, 500),
    (json.dumps(submit_message(prompt="x" * 5000)), p.E_BAD_MESSAGE, 500),
    (json.dumps(submit_message(model="sd-ultra")), p.E_UNKNOWN_MODEL, 500),
    (json.dumps(submit_message(scheduler="Warp")), p.E_UNKNOWN_SCHEDULER, 500),
    (json.dumps(submit_message(mode="paint")), p.E_BAD_MESSAGE, 500),
    (json.dumps(submit_message(mode="uniform")), p.E_BAD_MESSAGE, 500),  # no strength
    (json.dumps(submit_message(mode="uniform", strength=1.5)), p.E_BAD_MESSAGE, 500),
    (json.dumps(submit_message(mode="fan", fan={"count": 3, "low": 0.9, "high": 0.1})),
     p.E_BAD_MESSAGE, 500),
    (json.dumps(submit_message(region={"x": 60, "y": 0, "width": 10, "height": 10})),
     p.E_BAD_MESSAGE, 500),
    (json.dumps(submit_message(guidance=2.5)).replace("2.5", "NaN"), p.E_BAD_JSON, None),
    (json.dumps(submit_message(guidance=2.5)).replace("2.5", "-Infinity"), p.E_BAD_JSON, None),
    (json.dumps(submit_message(guidance=2.5)).replace("2.5", "1e999"), p.E_BAD_MESSAGE, 500),
    (json.dumps(submit_message(mode="soft_inpaint", soft_inpaint={"softness_px": 2.5}))
     .replace("2.5", "1e999"), p.E_BAD_MESSAGE, 500),
    (json.dumps({"type": "submit", "ref": 1, "prompt": "x" * (p.MAX_TEXT_BYTES + 10)}),
     p.E_TOO_LARGE, None),
    ('{"type": "cancel"}', p.E_BAD_MESSAGE, None),
    ('{"type": "cancel", "job_id": 4242}', p.E_UNKNOWN_JOB, None),
    ('{"type": "load_model", "model": "sd-ultra"}', p.E_UNKNOWN_MODEL, None),
    ('{"type": "load_model"}', p.E_BAD_MESSAGE, None),
]


@async_test
async def test_bad_input_gets_an_error_to_that_client_only_and_everything_goes_on(gated_pipe):
    image = make_test_image()
    async with serving(gated_pipe, max_pixels=128 * 128, max_message_bytes=400_000) as server:
        a, b = await Client.connect(server), await Client.connect(server)
        gated_pipe.hold(1)
        await b.submit(image, mode="uniform", strength=1.0, steps=3)
        job_b = await b.accepted()
        await b.until(lambda e: isinstance(e, p.Progress))

        for text, code, ref in BAD_TEXT:
            await a.ws.send(text)
            error = await a.error()
            assert (error.code, error.ref) == (code, ref), (text[:80], error)
            assert len(error.message) > 10

        async def bad_frames(frames: list[str | bytes], code: str, ref: int | None) -> None:
            for data in frames:
                await a.ws.send(data)
            error = await a.error()
            assert (error.code, error.ref) == (code, ref), error

        submit = json.dumps(submit_message())
        image_frame = frame(p.FRAME_IMAGE_PNG, 500)
        # Map size mismatch (the map, then the image).
        await bad_frames([submit, image_frame, frame(p.FRAME_MAP_GRAY8, 500, 32, 32)],
                         p.E_MAP_SIZE_MISMATCH, 500)
        await bad_frames([submit, frame(p.FRAME_MAP_GRAY8, 500, 64, 48)],
                         p.E_MAP_SIZE_MISMATCH, 500)
        await bad_frames([submit, frame(p.FRAME_IMAGE_PNG, 500, 32, 32)], p.E_BAD_FRAME, 500)
        # A binary frame for no pending submit, garbage, a wrong magic, a short map.
        await bad_frames([frame(p.FRAME_IMAGE_PNG, 77)], p.E_BAD_FRAME, 77)
        await bad_frames([b"hello"], p.E_BAD_FRAME, None)
        await bad_frames([b"XXXX" + image_frame[4:]], p.E_BAD_FRAME, None)
        await bad_frames([image_frame[:4] + bytes([9]) + image_frame[5:]], p.E_BAD_FRAME, None)
        await bad_frames([frame(p.FRAME_MAP_GRAY8, 500)[:-1]], p.E_BAD_FRAME, 500)
        # A map frame in a mode that takes none; the same frame twice.
        await bad_frames([json.dumps(submit_message(mode="uniform", strength=0.5)),
                          frame(p.FRAME_MAP_GRAY8, 500)], p.E_BAD_FRAME, 500)
        await bad_frames([submit, image_frame, image_frame], p.E_BAD_FRAME, 500)
        # A PNG whose header is fine but whose data is not.
        broken = png_bytes(image)[:40] + bytes(100)
        await bad_frames([json.dumps(submit_message(mode="uniform", strength=0.5)),
                          frame(p.FRAME_IMAGE_PNG, 500, payload=broken)], p.E_BAD_FRAME, 500)
        # A submit cancelled by ref before its frames came: its frames are then unexpected.
        await a.send_json(submit_message(ref=9))
        await a.send_json({"type": "cancel", "ref": 9})
        assert isinstance(await a.next(), p.Cancelled)
        await bad_frames([frame(p.FRAME_IMAGE_PNG, 9)], p.E_BAD_FRAME, 9)

        # After all that, a's connection still works: a good job queues behind b's.
        await a.submit(image, gradient_map(), steps=3)
        job_a = await a.accepted()
        assert job_a.position == 1
        gated_pipe.release()
        events_b = await b.until_end(job_b.job_id)
        events_a = await a.until_end(job_a.job_id)
        assert isinstance(events_b[-1], p.Done) and isinstance(events_a[-1], p.Done)
        assert not of(b.seen, p.Error)

        # An oversize frame: a's connection is closed with 1009; b goes on.
        with pytest.raises(ConnectionClosed) as closed:
            await a.ws.send(frame(p.FRAME_MAP_GRAY8, 1, 640, 640))
            await a.next()
        assert closed.value.rcvd.code == p.CLOSE_MESSAGE_TOO_BIG
        await b.submit(image, mode="uniform", strength=0.5)
        events = await b.until_end((await b.accepted()).job_id)
        assert isinstance(events[-1], p.Done)
        assert not of(b.seen, p.Error)
    assert len(gated_pipe.runs) == 3


@async_test
async def test_a_client_that_never_says_hello_is_closed(gated_pipe):
    async with serving(gated_pipe, handshake_timeout_s=0.2) as server:
        async with connect(server.url) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), TIMEOUT_S)
        assert closed.value.rcvd.code == p.CLOSE_POLICY_VIOLATION
        assert "hello" in closed.value.rcvd.reason
        await Client.connect(server)


# --- handshake: version, token, bind ----------------------------------------------------------


async def refused(server: DiffusionServer, hello: str | bytes) -> tuple[p.Error, int]:
    async with connect(server.url) as ws:
        await ws.send(hello)
        events = p.ClientSession().receive(await ws.recv())
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    (event,) = events
    return event, closed.value.rcvd.code


@async_test
async def test_wrong_or_missing_token_is_refused_and_the_right_one_accepted(gated_pipe):
    async with serving(gated_pipe, token="s3cret") as server:
        for hello in (p.hello(), p.hello("guess"), {**p.hello(), "token": 5}):
            error, code = await refused(server, p.dumps(hello))
            assert error.code == p.E_UNAUTHORIZED and "token" in error.message
            assert code == p.CLOSE_POLICY_VIOLATION
        client = await Client.connect(server, token="s3cret")
        assert client.session.capabilities.token_required
        await client.submit(make_test_image(), mode="uniform", strength=0.5)
        events = await client.until_end((await client.accepted()).job_id)
        assert isinstance(events[-1], p.Done)


@async_test
async def test_protocol_version_mismatch_and_missing_hello_get_clear_errors(gated_pipe):
    async with serving(gated_pipe) as server:
        error, code = await refused(server, p.dumps({"type": "hello", "protocol": 99}))
        assert error.code == p.E_BAD_VERSION and "99" in error.message and "1" in error.message
        assert code == p.CLOSE_POLICY_VIOLATION
        error, _ = await refused(server, p.dumps(p.list_models()))
        assert error.code == p.E_HANDSHAKE_REQUIRED
        error, _ = await refused(server, frame(p.FRAME_IMAGE_PNG, 1))
        assert error.code == p.E_HANDSHAKE_REQUIRED
        error, _ = await refused(server, "{oops")
        assert error.code == p.E_BAD_JSON
        # A long refusal still closes cleanly (a close reason holds at most 123 bytes).
        error, code = await refused(server, p.dumps({"type": "hello", "protocol": "ü" * 200}))
        assert error.code == p.E_BAD_VERSION and code == p.CLOSE_POLICY_VIOLATION
        # And a client session told of another version says so.
        events = p.ClientSession().receive(json.dumps({"type": "welcome", "protocol": 2,
                                                       "capabilities": {}}))
        assert events[0].code == p.E_BAD_VERSION and "Update" in events[0].message
        # The server is still serving.
        await Client.connect(server)


def test_non_loopback_bind_without_token_is_refused():
    for host in ("0.0.0.0", "192.168.1.20", "::", "example.org", "localhost.example.org", "127.0.0.1.nip.io"):
        with pytest.raises(ConfigError, match="without a token"):
            check_bind(host, None)
        with pytest.raises(ConfigError, match="--token"):
            DiffusionServer(ServerConfig(model="tiny-sd", host=host))
        check_bind(host, "s3cret")
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_bind(host, None)
