"""What the server tests share: the tiny-sd pipeline behind a gate, a server on a free port, and
a websocket client speaking through the plugin's own sans-I/O ``ClientSession``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from websockets.asyncio.client import ClientConnection, connect

from server.app import DiffusionServer, ServerConfig, run_server
from server.pipelines import Cancelled
from shared import protocol as p
from tests.conftest import make_test_image

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
