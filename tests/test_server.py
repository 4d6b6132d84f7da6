"""The websocket server over real sockets on loopback, running tiny-sd in-process.

Each test starts a server on a free port in its own event loop, connects real websocket clients
(driven by the plugin's own sans-I/O ``ClientSession``) and checks what comes back against the
pipeline called directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server import regions
from server.app import (
    MAX_QUEUED_PREVIEW_FRAMES,
    ConfigError,
    DiffusionServer,
    ServerConfig,
    Session,
    check_bind,
    run_server,
)
from server.jobs import ConsoleProgress
from server.maps import fan_map, soft_inpaint_map
from server.pipelines import Cancelled
from shared import protocol as p
from shared.fan import fan_strengths
from tests.conftest import make_test_image

pytestmark = pytest.mark.timeout(120)

PROMPT = "a red boat on a lake"
NEGATIVE = "blurry"
TIMEOUT_S = 60  # safety net for a hung test; no test waits anywhere near this


def async_test(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


# --- the pipeline behind the server -------------------------------------------------------------


@dataclass
class Run:
    """One call of the pipeline by the worker."""

    kwargs: dict[str, Any]
    steps: int = 0
    cancel_seen_at: int | None = None  # the step after which the cancel was first seen
    cancelled: bool = False


@dataclass
class GatedPipe:
    """The real tiny-sd pipeline, with what the tests need to steer the worker: ``hold()`` keeps
    the next run(s) after their first step (its progress sent) until ``release()`` or their
    cancel; ``fail`` is raised by the next run; every run is recorded."""

    pipe: Any
    runs: list[Run] = field(default_factory=list)
    fail: BaseException | None = None
    _holds: int = 0
    _release: threading.Event = field(default_factory=threading.Event)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def hold(self, runs: int = 1) -> None:
        self._release.clear()
        self._holds += runs

    def release(self) -> None:
        self._holds = 0
        self._release.set()

    def __call__(self, **kwargs: Any) -> Any:
        run = Run(kwargs)
        self.runs.append(run)
        if self.fail is not None:
            exc, self.fail = self.fail, None
            raise exc
        held = self._holds > 0
        self._holds -= held
        callback, cancel = kwargs["callback"], kwargs["cancel"]

        def hook(info: Any) -> None:
            run.steps = info.step
            callback(info)  # the client sees this step's progress, then the run waits
            deadline = time.monotonic() + TIMEOUT_S
            while held and info.step == 1 and not (self._release.is_set() or cancel.is_set()) \
                    and time.monotonic() < deadline:
                self._release.wait(0.01)
            if cancel.is_set() and run.cancel_seen_at is None:
                run.cancel_seen_at = info.step

        try:
            return self.pipe(**{**kwargs, "callback": hook})
        except Cancelled:
            run.cancelled = True
            raise


@pytest.fixture
def pipe(tiny_sd) -> GatedPipe:
    return GatedPipe(tiny_sd)


@contextlib.asynccontextmanager
async def serving(pipe: GatedPipe, loader=None, **config: Any):
    config = {"model": "tiny-sd", "port": 0, **config}
    async with run_server(ServerConfig(**config), loader or (lambda name: pipe)) as server:
        yield server


# --- a client -----------------------------------------------------------------------------------


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


class Client:
    """A websocket client speaking through ``shared.protocol.ClientSession``, like the plugin."""

    def __init__(self, ws: ClientConnection, session: p.ClientSession) -> None:
        self.ws = ws
        self.session = session
        self.buffer: list[p.Event] = []
        self.seen: list[p.Event] = []

    @classmethod
    async def connect(cls, server: DiffusionServer, token: str | None = None) -> Client:
        ws = await connect(server.url, max_size=None, compression=None)
        session = p.ClientSession(token=token, client="test")
        await ws.send(session.hello())
        events = session.receive(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
        assert isinstance(events[0], p.Welcome), events
        return cls(ws, session)

    async def submit(self, image: Image.Image, change: np.ndarray | None = None,
                     **fields: Any) -> p.SubmitRequest:
        fields = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": 3, "guidance": 5.0,
                  "seed": 7, "preview_every": 0, **fields}
        request = p.SubmitRequest(ref=0, width=image.width, height=image.height, **fields)
        gray = None if change is None else np.asarray(change, np.uint8).tobytes()
        for frame in self.session.submit(request, png_bytes(image), gray):
            await self.ws.send(frame)
        return request

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def next(self) -> p.Event:
        while not self.buffer:
            data = await asyncio.wait_for(self.ws.recv(), TIMEOUT_S)
            self.buffer.extend(self.session.receive(data))
        event = self.buffer.pop(0)
        self.seen.append(event)
        return event

    async def until(self, test) -> list[p.Event]:
        """Events up to and including the first one ``test`` accepts."""
        events = []
        while True:
            event = await self.next()
            events.append(event)
            if test(event):
                return events

    async def until_end(self, job_id: int) -> list[p.Event]:
        """Events up to the one that ends ``job_id`` (done, cancelled or error)."""
        return await self.until(lambda e: isinstance(e, (p.Done, p.Cancelled, p.Error))
                                and e.job_id == job_id)

    async def accepted(self) -> p.Accepted:
        """The next ``accepted`` (the client's earlier jobs may be reporting meanwhile)."""
        events = await self.until(lambda e: isinstance(e, (p.Accepted, p.Error)))
        assert isinstance(events[-1], p.Accepted), events[-1]
        assert not of(events, p.Error)
        return events[-1]

    async def error(self) -> p.Error:
        event = await self.next()
        assert isinstance(event, p.Error), event
        return event

    async def close(self) -> None:
        await self.ws.close()


def of(events: list[p.Event], kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


def gradient_map(width: int = 64, height: int = 64) -> np.ndarray:
    """0 (keep) on the left quarter, rising to 255 on the right: every kind of pixel at once."""
    ramp = np.clip((np.arange(width) - width // 4) / (width * 0.75) * 255, 0, 255)
    return np.tile(ramp.round().astype(np.uint8), (height, 1))


def direct(tiny_sd, image: Image.Image, change_map: np.ndarray, seeds: list[int],
           **kwargs: Any) -> list[np.ndarray]:
    """The pipeline called directly, as the server should have called it."""
    kwargs = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "num_inference_steps": 3,
              "guidance_scale": 5.0, **kwargs}
    out = tiny_sd(image=image, change_map=change_map, num_images_per_prompt=len(seeds),
                  generator=[torch.Generator("cpu").manual_seed(s) for s in seeds], **kwargs)
    return [np.asarray(img) for img in out.images]


# --- a full job -----------------------------------------------------------------------------------


@async_test
async def test_full_job_streams_progress_previews_and_the_pipelines_exact_result(pipe, tiny_sd):
    image = make_test_image(64, 64, seed=3)
    change = gradient_map()
    async with serving(pipe) as server:
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
async def test_every_mode_gives_the_pipelines_exact_result(pipe, tiny_sd, mode):
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
    async with serving(pipe) as server:
        client = await Client.connect(server)
        await client.submit(image, gray, mode=mode, seed=99, **fields)
        accepted = await client.accepted()
        events = await client.until_end(accepted.job_id)
    assert isinstance(events[-1], p.Done), events[-1]
    (result,) = of(events, p.Result)
    np.testing.assert_array_equal(decode(result.png), direct(tiny_sd, image, expected_map, [99])[0])



@async_test
async def test_the_servers_preview_interval_applies_when_the_client_names_none(pipe):
    async with serving(pipe, preview_every=2) as server:
        client = await Client.connect(server)
        await client.submit(make_test_image(), mode="uniform", strength=1.0, steps=5, preview_every=None)
        events = await client.until_end((await client.accepted()).job_id)
        await client.submit(make_test_image(), mode="uniform", strength=1.0, steps=5, preview_every=0)
        quiet = await client.until_end((await client.accepted()).job_id)
    assert [e.step for e in of(events, p.Preview)] == [2, 4]  # every 2nd step (none at the last)
    assert of(quiet, p.Preview) == []  # 0 from the client: none at all

@async_test
async def test_variants_use_seeds_s_plus_i(pipe, tiny_sd):
    image = make_test_image(64, 64, seed=5)
    async with serving(pipe) as server:
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
async def test_server_picks_a_seed_when_the_client_leaves_it_out(pipe):
    async with serving(pipe) as server:
        client = await Client.connect(server)
        await client.submit(make_test_image(), mode="uniform", strength=0.5, seed=None)
        accepted = await client.accepted()
        events = await client.until_end(accepted.job_id)
    (result,) = of(events, p.Result)
    assert result.seed == accepted.seed and pipe.runs[0].kwargs["generator"][0].initial_seed() \
        == accepted.seed


# --- many clients -------------------------------------------------------------------------------


@async_test
async def test_clients_see_their_queue_positions_and_cancel_their_own_jobs(pipe):
    image = make_test_image()
    async with serving(pipe) as server:
        a, b, c = [await Client.connect(server) for _ in range(3)]
        pipe.hold(2)  # a's job, then c's first job, wait at their first step
        await a.submit(image, mode="uniform", strength=1.0, steps=4)
        job_a = (await a.accepted()).job_id
        await a.until(lambda e: isinstance(e, p.Progress))
        await b.submit(image, mode="uniform", strength=1.0)
        job_b = await b.accepted()
        await c.submit(image, mode="uniform", strength=1.0)
        job_c1 = await c.accepted()
        await c.submit(image, mode="uniform", strength=1.0)
        job_c2 = await c.accepted()
        assert (job_b.position, job_c1.position, job_c2.position) == (1, 2, 3)

        # b cancels its queued job: c moves up.
        await b.ws.send(b.session.cancel(job_id=job_b.job_id))
        cancelled = await b.next()
        assert isinstance(cancelled, p.Cancelled) and cancelled.job_id == job_b.job_id
        moves = [await c.next(), await c.next()]
        assert {(e.job_id, e.position) for e in moves} == {(job_c1.job_id, 1),
                                                           (job_c2.job_id, 2)}

        # c may not cancel a's job.
        await c.send_json({"type": "cancel", "job_id": job_a})
        assert (await c.error()).code == p.E_UNKNOWN_JOB

        # a cancels its running job (by ref): the worker takes c's next.
        await a.ws.send(a.session.cancel(ref=1))
        events = await a.until_end(job_a)
        assert isinstance(events[-1], p.Cancelled)
        started = await c.until(lambda e: isinstance(e, p.Started))
        assert started[-1].job_id == job_c1.job_id
        assert (job_c2.job_id, 1) in [(e.job_id, e.position) for e in of(started, p.QueuePosition)]
        pipe.release()
        await c.until_end(job_c1.job_id)
        events = await c.until_end(job_c2.job_id)
        assert isinstance(events[-1], p.Done)

    run_a = pipe.runs[0]
    assert run_a.cancelled and run_a.steps <= 1  # stopped at the first step boundary
    assert len(pipe.runs) == 3  # b's job never ran
    assert not of(a.seen + b.seen, p.Error)


@async_test
async def test_disconnect_cancels_the_clients_jobs_and_frees_the_worker_within_a_step(pipe):
    image = make_test_image()
    async with serving(pipe) as server:
        a, b = await Client.connect(server), await Client.connect(server)
        pipe.hold(1)
        await a.submit(image, mode="uniform", strength=1.0, steps=20)
        await a.accepted()
        await a.until(lambda e: isinstance(e, p.Progress))
        await a.submit(image, mode="uniform", strength=1.0, steps=20)
        assert (await a.accepted()).position == 1
        await b.submit(image, mode="uniform", strength=0.9, steps=3)
        job_b = await b.accepted()
        assert job_b.position == 2

        await a.close()
        events = await b.until_end(job_b.job_id)
        assert isinstance(events[-1], p.Done)
        # a's queued job went with it (b may start before it hears of its new place).
        assert all(e.position == 1 for e in of(events, p.QueuePosition))
        assert len(server.sessions) == 1

    first = pipe.runs[0]
    assert first.cancelled and first.steps == 1 and first.cancel_seen_at == 1
    assert len(pipe.runs) == 2  # a's second job never ran; b's did


# --- bad input ------------------------------------------------------------------------------------


def submit_message(**overrides: Any) -> dict[str, Any]:
    message = {"type": "submit", "ref": 500, "width": 64, "height": 64, "mode": "change_map",
               "prompt": "x", "steps": 3, "guidance": 5.0, "seed": 1, "preview_every": 0}
    message.update(overrides)
    return {k: v for k, v in message.items() if v is not None}


def frame(kind: int, ref: int, width: int = 64, height: int = 64,
          payload: bytes | None = None) -> bytes:
    if payload is None:
        payload = png_bytes(make_test_image(width, height)) if kind == p.FRAME_IMAGE_PNG else \
            bytes(width * height)
    return p.encode_frame(kind, ref, 0, width, height, payload)


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
async def test_bad_input_gets_an_error_to_that_client_only_and_everything_goes_on(pipe):
    image = make_test_image()
    async with serving(pipe, max_pixels=128 * 128, max_message_bytes=400_000) as server:
        a, b = await Client.connect(server), await Client.connect(server)
        pipe.hold(1)
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
        await bad_frames([image_frame[:4] + bytes([9]) + image_frame[5:]], p.E_BAD_VERSION, None)
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
        await bad_frames([frame(p.FRAME_IMAGE_PNG, 9)], p.E_BAD_FRAME, 9)

        # After all that, a's connection still works: a good job queues behind b's.
        await a.submit(image, gradient_map(), steps=3)
        job_a = await a.accepted()
        assert job_a.position == 1
        pipe.release()
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
    assert len(pipe.runs) == 3


@async_test
async def test_too_many_jobs_from_one_client_is_refused(pipe):
    image = make_test_image()
    async with serving(pipe, max_jobs_per_client=2) as server:
        client = await Client.connect(server)
        pipe.hold(1)
        for _ in range(2):
            await client.submit(image, mode="uniform", strength=1.0)
            await client.accepted()
        await client.submit(image, mode="uniform", strength=1.0)
        error = (await client.until(lambda e: isinstance(e, p.Error)))[-1]
        assert error.code == p.E_QUEUE_FULL and error.ref == 3
        # Its frames, which arrived after the refusal, are refused too.
        assert (await client.error()).code == p.E_BAD_FRAME
        pipe.release()
        # Submits still waiting for their frames count too (another client, nothing queued yet).
        other = await Client.connect(server)
        for ref in (1, 2):
            await other.send_json(submit_message(ref=ref))
        await other.send_json(submit_message(ref=3))
        error = await other.error()
        assert (error.code, error.ref) == (p.E_QUEUE_FULL, 3) and "2 jobs" in error.message


@async_test
async def test_stopping_the_server_cancels_every_job_tells_the_client_then_closes(pipe):
    image = make_test_image()
    server = DiffusionServer(ServerConfig(model="tiny-sd", port=0), lambda name: pipe)
    await server.start()
    try:
        client = await Client.connect(server)
        pipe.hold(1)
        await client.submit(image, mode="uniform", strength=1.0, steps=10)
        running = await client.accepted()
        await client.until(lambda e: isinstance(e, p.Progress))
        await client.submit(image, mode="uniform", strength=1.0, steps=10)
        queued = await client.accepted()
    finally:
        await server.stop()
    events: list[p.Event] = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            events.append(await client.next())
    assert closed.value.rcvd.code == p.CLOSE_GOING_AWAY
    cancelled = of(events, p.Cancelled)
    assert sorted(e.job_id for e in cancelled) == [running.job_id, queued.job_id]
    assert all(e.reason == "the server is shutting down" for e in cancelled)
    assert pipe.runs[0].cancelled and pipe.runs[0].steps == 1 and len(pipe.runs) == 1


@async_test
async def test_previews_for_a_slow_client_are_dropped_but_nothing_else():
    sent: list[str] = []

    class Connection:
        remote_address = ("127.0.0.1", 1)

        async def send(self, data: str) -> None:
            sent.append(data)

    session = Session(SimpleNamespace(capabilities=None), Connection())
    for i in range(20):
        session.post([f"preview {i}"], droppable=True)
        session.post([f"progress {i}"])
    await asyncio.sleep(0)  # post() hands over through the loop, like the worker thread's
    pump = asyncio.create_task(session.pump())
    await session.flush(TIMEOUT_S)
    pump.cancel()
    assert [m for m in sent if m.startswith("progress")] == [f"progress {i}" for i in range(20)]
    assert [m for m in sent if m.startswith("preview")] == \
        [f"preview {i}" for i in range(MAX_QUEUED_PREVIEW_FRAMES)]
    # The client caught up: the next previews go out again (a sent preview frees its place).
    pump = asyncio.create_task(session.pump())
    for i in range(20, 20 + MAX_QUEUED_PREVIEW_FRAMES + 2):
        session.post([f"preview {i}"], droppable=True)
        await asyncio.sleep(0)  # handed over
        await session.flush(TIMEOUT_S)  # and sent before the next one comes
    pump.cancel()
    assert [m for m in sent if m.startswith("preview")][MAX_QUEUED_PREVIEW_FRAMES:] == \
        [f"preview {i}" for i in range(20, 20 + MAX_QUEUED_PREVIEW_FRAMES + 2)]


@async_test
async def test_a_client_that_never_says_hello_is_closed(pipe):
    async with serving(pipe, handshake_timeout_s=0.2) as server:
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
async def test_wrong_or_missing_token_is_refused_and_the_right_one_accepted(pipe):
    async with serving(pipe, token="s3cret") as server:
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
async def test_protocol_version_mismatch_and_missing_hello_get_clear_errors(pipe):
    async with serving(pipe) as server:
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


# --- failures ---------------------------------------------------------------------------------


@async_test
async def test_out_of_memory_fails_that_job_clearly_and_the_next_one_runs(pipe, tiny_sd):
    image = make_test_image()
    async with serving(pipe) as server:
        client = await Client.connect(server)
        pipe.fail = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        await client.submit(image, mode="uniform", strength=0.5, variants=2)
        job = await client.accepted()
        events = await client.until_end(job.job_id)
        error = events[-1]
        assert isinstance(error, p.Error) and error.code == p.E_OUT_OF_MEMORY
        assert "out of memory" in error.message and "64x64" in error.message
        assert "variant" in error.message  # says what to try

        pipe.fail = RuntimeError("a bug in a pipeline")
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
async def test_out_of_memory_while_loading_a_model_fails_that_job_and_keeps_the_old_one(pipe):
    def loader(name: str) -> Any:
        if name == "tiny-sd-huge":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")
        return pipe

    async with serving(pipe, loader, extra_models=("tiny-sd-huge",)) as server:
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
async def test_list_and_load_models(pipe):
    loaded = []

    def loader(name: str) -> Any:
        loaded.append(name)
        return pipe

    async with serving(pipe, loader, extra_models=("tiny-sd-2",)) as server:
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


# --- large canvases -------------------------------------------------------------------------------


@async_test
async def test_small_edit_on_a_large_canvas_runs_on_its_region_only(pipe, tiny_sd):
    canvas = make_test_image(320, 256, seed=6)
    change = np.zeros((256, 320), np.uint8)
    change[150:162, 210:224] = 255
    async with serving(pipe) as server:
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
    assert pipe.runs[0].kwargs["image"].size == (64, 64)

    pasted = np.asarray(regions.paste(canvas, Image.open(io.BytesIO(result.png)), crop))
    before = np.asarray(canvas)
    edited = change > 0
    np.testing.assert_array_equal(pasted[~edited], before[~edited])
    assert not np.array_equal(pasted[edited], before[edited])
    box = (crop.x, crop.y, crop.x + 64, crop.y + 64)
    expected = direct(tiny_sd, canvas.crop(box), change[box[1]:box[3], box[0]:box[2]], [11])
    np.testing.assert_array_equal(decode(result.png), expected[0])



@async_test
async def test_the_region_pixel_budget_downscales_the_run_and_the_result_comes_back_full_size(pipe):
    image = make_test_image(64, 64, seed=9)
    change = gradient_map()  # the left quarter is kept
    async with serving(pipe, max_region_pixels=32 * 32) as server:
        client = await Client.connect(server)
        await client.submit(image, change, steps=3, seed=2)
        events = await client.until_end((await client.accepted()).job_id)
    (started,) = of(events, p.Started)
    (result,) = of(events, p.Result)
    assert (started.width, started.height) == (32, 32) and pipe.runs[0].kwargs["image"].size == (32, 32)
    assert (result.width, result.height) == (64, 64) and result.region == p.Region(0, 0, 64, 64)
    np.testing.assert_array_equal(decode(result.png)[:, :16], np.asarray(image)[:, :16])  # kept exactly

@async_test
async def test_a_region_confines_a_uniform_job_on_a_large_canvas(pipe):
    canvas = make_test_image(200, 160, seed=8)
    area = p.Region(90, 70, 30, 20)
    async with serving(pipe) as server:
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


# --- logs and console -------------------------------------------------------------------------


@async_test
async def test_one_log_line_per_job_and_a_console_progress_bar(pipe, caplog, capsys):
    caplog.set_level(logging.INFO, logger="server")
    image = make_test_image()
    async with serving(pipe, console_progress=True) as server:
        client = await Client.connect(server)
        await client.submit(image, mode="uniform", strength=1.0, steps=4)
        job_done = (await client.accepted()).job_id
        await client.until_end(job_done)
        pipe.hold(1)
        await client.submit(image, mode="uniform", strength=1.0, steps=4)
        job_cancelled = (await client.accepted()).job_id
        await client.until(lambda e: isinstance(e, p.Progress))
        await client.submit(image, mode="uniform", strength=1.0, steps=4)
        job_never_ran = (await client.accepted()).job_id
        for job_id in (job_never_ran, job_cancelled):
            await client.ws.send(client.session.cancel(job_id=job_id))
            await client.until_end(job_id)
    for job_id in (job_done, job_cancelled, job_never_ran):
        lines = [r.getMessage() for r in caplog.records
                 if r.getMessage().startswith(f"job {job_id}")]
        assert len(lines) == 1, lines
    line = next(r.getMessage() for r in caplog.records
                if r.getMessage().startswith(f"job {job_done}:"))
    assert "uniform 64x64" in line and "4/4 steps" in line and "seed 7" in line
    err = capsys.readouterr().err
    assert f"\rjob {job_done} [" in err and "] 4/4 " in err


def test_console_progress_bar_draws_and_clears_one_line():
    stream = io.StringIO()
    bar = ConsoleProgress(stream, enabled=True)
    bar.update(3, 1, 4, 0.5)
    bar.update(3, 4, 4, 2.0)
    bar.finish()
    text = stream.getvalue()
    assert "\rjob 3 [#######-----------------------] 1/4" in text
    assert "[" + "#" * 30 + "] 4/4" in text and text.endswith("\r\033[K")
    quiet = io.StringIO()
    ConsoleProgress(quiet, enabled=None).update(1, 1, 2, 0.1)  # not a terminal: nothing
    assert quiet.getvalue() == ""
