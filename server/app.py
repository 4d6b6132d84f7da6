"""Websocket sessions: the handshake, each client's messages, and frames back to the client.

One :class:`DiffusionServer` owns the model host and the worker (``server.jobs``); every
connection is a :class:`Session`. What arrives is parsed by the connection's sans-I/O
``shared.protocol.ServerSession`` into requests; the server acts on them (a complete submit
becomes a :class:`~server.jobs.Job`, its PNG decoded and its change map built off the event
loop) and the session serialises the typed messages the worker posts back, in order. A bad
message gets an ``error`` to that client only; nothing a client sends can stop the server or
another client's job. A client that does not read is not buffered for without end: past
``max_unread_bytes`` waiting for it, its next job waits and its next message is not read.

Start it in-process (tests, tools)::

    async with run_server(ServerConfig(model="tiny-sd", port=0)) as server:
        print(server.url)
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from PIL import Image
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from server import regions
from server.config import DEFAULT_MODEL, ConfigError, ServerConfig, check_bind
from server.families import FAMILIES, describe, guess_info
from server.jobs import ConsoleProgress, Job, ModelHost, ModelLoad, Worker
from server.map_jobs import MapJob, decode_picture
from server.map_makers import MapMakers, default_map_models
from server.users import check_user_model, studio_user, user_models, user_welcome
from shared import protocol as p

log = logging.getLogger("server.app")

SERVER_NAME = "diffdiff-server 0.1.0"
# Previews queued for a slow client beyond this (or beyond its unread bytes) are skipped; results
# and progress never are.
MAX_QUEUED_PREVIEW_FRAMES = 8
SHUTDOWN_FLUSH_S = 2.0  # how long a shutdown waits for each client to take its last messages


def _close_reason(text: str) -> str:
    # Websocket close reasons are at most 123 bytes of UTF-8.
    data = text.encode("utf-8")[:123]
    return data.decode("utf-8", errors="ignore")


class Session:
    """One client connection: its protocol state (:class:`~shared.protocol.ServerSession`) and
    its outbox (messages leave in the order they were posted), with the bytes in it that the
    client has not taken yet."""

    _ids = itertools.count(1)

    def __init__(self, server: DiffusionServer, connection: ServerConnection) -> None:
        self.id = next(self._ids)
        self.server = server
        self.connection = connection
        self.loop = asyncio.get_running_loop()
        self.user: Any = None  # server.users.User, once the handshake named one (--users)
        self.protocol = p.ServerSession(
            server.capabilities, token=server.config.token, server_name=SERVER_NAME,
            max_jobs=server.config.max_jobs_per_client,
            jobs_in_queue=lambda: server.jobs_of(self),
            submit_timeout_s=server.config.submit_frames_timeout_s)
        self._outbox: asyncio.Queue[tuple[list[str | bytes], bool, int]] = asyncio.Queue()
        self._queued_previews = 0
        # Frames posted and not yet handed to the socket (text counted in characters: small).
        self.unread_bytes = 0
        self.max_unread_bytes = server.config.max_unread_bytes
        self._reading = asyncio.Event()  # clear while over the limit: its messages wait
        self._reading.set()
        self.closed = False
        self.live_jobs: list[int] = []  # its live (submit.replace) jobs, which the next one replaces

    def __repr__(self) -> str:
        return f"<client {self.id} {self.connection.remote_address}>"

    @property
    def name(self) -> str:
        """How the log names this client: its number, and its studio user when it has one."""
        return f"{self.id} ({self.user.name})" if self.user is not None else str(self.id)

    def post(self, message: p.Event) -> None:
        """Queue ``message`` for this client, from any thread (the worker's, mostly)."""
        # Serialised on the caller's thread: a result's PNG frame is a copy worth keeping off
        # the event loop.
        frames = message.frames()
        droppable = isinstance(message, p.Preview)  # a newer preview replaces it anyway
        try:
            self.loop.call_soon_threadsafe(self._enqueue, frames, droppable)
        except RuntimeError:  # the loop is closed: the server is gone, nobody to tell
            pass

    def send(self, message: p.Event) -> None:
        """Queue ``message`` for this client, from the event loop."""
        self._enqueue(message.frames(), False)

    @property
    def over_limit(self) -> bool:
        """Too much waits unread: the worker starts none of this client's jobs meanwhile."""
        return self.unread_bytes > self.max_unread_bytes

    def _enqueue(self, frames: list[str | bytes], droppable: bool) -> None:
        if self.closed:
            return
        if droppable:
            if self._queued_previews >= MAX_QUEUED_PREVIEW_FRAMES or self.over_limit:
                return
            self._queued_previews += 1
        size = sum(len(frame) for frame in frames)
        self.unread_bytes += size
        if self.over_limit:
            self._reading.clear()
        self._outbox.put_nowait((frames, droppable, size))

    async def pump(self) -> None:
        """Send queued frames until the connection closes."""
        while True:
            frames, droppable, size = await self._outbox.get()
            try:
                if droppable:
                    self._queued_previews -= 1
                for frame in frames:
                    await self.connection.send(frame)
            finally:
                self.unread_bytes -= size
                if not self.over_limit and not self._reading.is_set():
                    self._reading.set()
                    if self.server.worker is not None:
                        self.server.worker.wake()  # this client's jobs may run again
                self._outbox.task_done()

    async def until_reading(self) -> None:
        """Return once the client has taken enough of what waits for it (or is gone)."""
        if self._reading.is_set():
            return
        waits = {asyncio.ensure_future(self._reading.wait()),
                 asyncio.ensure_future(self.connection.wait_closed())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def expire_submits(self) -> None:
        """End this client's half-sent submits whose frames did not come in time."""
        idle = min(self.server.config.submit_frames_timeout_s, 1.0)
        while True:
            deadline = self.protocol.next_deadline()
            await asyncio.sleep(idle if deadline is None else max(0.0, deadline - time.monotonic()))
            for error in self.protocol.expire():
                log.info("client %d: %s: %s", self.id, error.code, error.message)
                self.send(error)

    async def flush(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until everything posted so far has been sent."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._outbox.join(), timeout)


class DiffusionServer:
    """The model host, the worker and the websocket listener."""

    def __init__(self, config: ServerConfig, loader: Callable[[str], Any] | None = None) -> None:
        # A users file is a token per user: the bind check counts it as one.
        check_bind(config.host, config.token or ("users" if config.users else None))
        self.config = config
        self.map_makers = self._map_makers()  # depth and segments, loaded on first use
        # Before another diffusion model loads, the map models make room (a map loads them again).
        self.host = ModelHost(loader or self._default_loader, config.model,
                              before_load=lambda model: self.map_makers.unload(f"{model} loads"))
        self._custom_loader = loader  # the Ray engine's replicas load with it too (tests)
        self.capabilities: p.Capabilities | None = None
        self.worker: Worker | None = None
        self._listener: Any = None
        self._ids = itertools.count(1)
        self.sessions: set[Session] = set()

    def _default_loader(self, model: str) -> Any:
        import torch

        from server.models import load_pipeline

        refiner = self.config.refiner if model == self.config.model else None
        pipe = load_pipeline(model, device=self.config.device,
                             dtype=self.config.dtype or torch.float32, refiner=refiner,
                             options=self.config.pipeline_options)
        if self.config.lora and model == self.config.model:  # made for that model's architecture
            # Merged in place into the loaded weights (compiled or channels-last modules read
            # the same parameter tensors).
            from server.models.lora import merge_lora

            merge_lora(pipe, self.config.lora, self.config.lora_scale)
        return pipe

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        c = self.config
        sock = None
        if c.engine == "ray":  # the studio pool: the default model loads on a replica
            from server.ray_engine import PoolOptions, RayEngine, bind_first, default_app_name

            sock = bind_first(c.host, c.port)  # before the pool: its name has the port
            app_name = c.ray_app_name or default_app_name(sock.getsockname()[1])
            self.worker = RayEngine(c, PoolOptions(c.ray_address, c.replicas, app_name=app_name),
                                    on_model_info=self._model_described,
                                    loader=self._custom_loader,
                                    owner_ready=lambda session: not session.over_limit,
                                    map_makers=self.map_makers)
            try:
                current, native = await self.worker.start_pool()
            except BaseException:
                sock.close()
                raise
            device = f"ray ({self.worker.slots} replica(s))"
        else:
            pipe = await asyncio.to_thread(self.host.load_initial)
            current, native, device = describe(pipe), int(pipe.native_resolution), str(c.device)
        # Every model: its family and schedulers guessed from its id; the loaded one described
        # by its pipeline (options included), and so is each model once it has been loaded.
        info = {name: guess_info(name) for name in c.models}
        info[self.host.name] = current
        self.capabilities = p.Capabilities(
            models=c.models, current_model=self.host.name, schedulers=list(current.schedulers),
            families=list(FAMILIES), native_resolution=native,
            max_pixels=c.max_pixels, max_message_bytes=c.max_message_bytes,
            max_steps=p.MAX_STEPS, max_variants=p.MAX_VARIANTS,
            token_required=bool(c.token or c.users), device=device, model_info=info)
        if self.worker is None:
            self.worker = Worker(self.host, max_region_pixels=c.max_region_pixels,
                                 console=ConsoleProgress(enabled=c.console_progress),
                                 on_model_changed=self._model_changed,
                                 owner_ready=lambda session: not session.over_limit,
                                 map_makers=self.map_makers)
        self.worker.start()
        where = {"sock": sock} if sock is not None else {"host": c.host, "port": c.port}
        self._listener = await serve(
            self._handle, **where, max_size=c.max_message_bytes,
            compression=None,  # PNG is compressed already; deflate would only cost CPU
            max_queue=4,  # frames buffered per client before reading pauses (backpressure)
        )

    async def stop(self) -> None:
        """Cancel every job, tell the clients, close the connections, stop the worker."""
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop)
        await asyncio.to_thread(self.map_makers.close)
        # The worker posted its last 'cancelled' messages before it stopped: send them before
        # closing, but never wait long for a client that does not read.
        sessions = list(self.sessions)
        if sessions:
            await asyncio.gather(*(s.flush(SHUTDOWN_FLUSH_S) for s in sessions))
        if self._listener is not None:
            self._listener.close(close_connections=True)
            await self._listener.wait_closed()

    @property
    def port(self) -> int:
        for sock in self._listener.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                return sock.getsockname()[1]
        raise RuntimeError("the server is not listening")

    @property
    def url(self) -> str:
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"ws://{host}:{self.port}"

    def jobs_of(self, session: Session) -> int:
        """Jobs counted against ``session``'s cap: its own, or all its studio user's."""
        if session.user is None:
            return self.worker.count(session)
        return sum(self.worker.count(s) for s in {session, *self.sessions} if s.user is session.user)

    def _model_described(self, model: str, info: p.ModelInfo, native: int) -> None:
        """A pool replica loaded ``model``: later handshakes describe it from its pipeline. (The
        pool has no single current model: each job names its own, or runs the default.)"""
        caps = self.capabilities
        caps.model_info = {**caps.model_info, model: info}

    def _model_changed(self, model: str, pipe: Any, task: Any = None) -> None:
        """Another model is loaded (by ``task``, a load or a job): new handshakes and submits see
        its schedulers and options, and every other client is told (the task's own client hears
        it from the task)."""
        # Called on the worker thread: each field is replaced whole, never mutated, so the event
        # loop reading them (handshakes, submit checks) sees the old or the new value.
        caps = self.capabilities
        if caps is None:
            return
        info = describe(pipe)
        caps.model_info = {**caps.model_info, model: info}
        caps.schedulers = list(info.schedulers)
        caps.native_resolution = int(pipe.native_resolution)
        caps.current_model = model
        message = p.ModelLoaded(model, info.family, caps.native_resolution, info)
        owner = task.owner if isinstance(task, ModelLoad) else None
        for session in list(self.sessions):
            if session is not owner:
                session.post(message)

    # --- one connection -----------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        session = Session(self, connection)
        if not await self._handshake(session):
            return
        self.sessions.add(session)
        log.info("client %s connected from %s", session.name, connection.remote_address)
        helpers = [asyncio.create_task(session.pump()), asyncio.create_task(session.expire_submits())]
        try:
            async for data in connection:
                await self._dispatch(session, data)
                await session.until_reading()  # a client that does not read is not read either
        except ConnectionClosed as exc:
            log.info("client %s: connection closed (%s)", session.name, exc)
        finally:
            session.closed = True
            self.sessions.discard(session)
            cancelled = self.worker.cancel_owner(session, "the client disconnected")
            for helper in helpers:
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await helper
            log.info("client %s disconnected%s", session.name,
                     f"; cancelled {cancelled} job(s)" if cancelled else "")

    async def _handshake(self, session: Session) -> bool:
        connection = session.connection
        try:
            first = await asyncio.wait_for(connection.recv(), self.config.handshake_timeout_s)
        except TimeoutError:
            await connection.close(p.CLOSE_POLICY_VIOLATION, "no hello received in time")
            return False
        except ConnectionClosed:
            return False
        try:
            if self.config.users:
                session.user = studio_user(self.config.users, first)
                if session.user.max_jobs is not None:
                    session.protocol.max_jobs = session.user.max_jobs
            welcome = session.protocol.receive_hello(first)
            if session.user is not None:
                welcome = user_welcome(welcome, session.user)
        except p.ProtocolError as exc:
            log.warning("refused %s: %s", connection.remote_address, exc.message)
            with contextlib.suppress(ConnectionClosed):
                for frame in p.Error.from_exception(exc).frames():
                    await connection.send(frame)
                await connection.close(p.CLOSE_POLICY_VIOLATION, _close_reason(exc.message))
            return False
        with contextlib.suppress(ConnectionClosed):
            for frame in welcome.frames():
                await connection.send(frame)
            return True
        return False

    async def _dispatch(self, session: Session, data: str | bytes) -> None:
        try:
            for request in session.protocol.receive(data):
                await self._serve(session, request)
        except p.ProtocolError as exc:
            log.info("client %s: %s: %s", session.name, exc.code, exc.message)
            session.send(p.Error.from_exception(exc))
        except Exception as exc:  # a bug must cost one request, not the connection
            log.exception("client %s: unexpected error", session.name)
            session.send(p.Error(p.E_JOB_FAILED, f"Internal server error: {exc}"))

    async def _serve(self, session: Session, request: p.ClientRequest) -> None:
        if session.user is not None:
            check_user_model(session.user, request, self.capabilities.current_model)
        if isinstance(request, p.Event):  # the protocol's own answer (a submit cancelled by ref)
            session.send(request)
        elif isinstance(request, p.CompleteSubmit):
            await self._queue_job(session, request)
        elif isinstance(request, p.Cancel):
            if not self.worker.cancel(session, request.job_id):
                raise p.ProtocolError(p.E_UNKNOWN_JOB, f"No job {request.job_id} of yours is "
                                                       f"queued or running (it may have "
                                                       f"finished).", job_id=request.job_id)
        elif isinstance(request, p.ListModels):
            session.send(user_models(session.user, self.capabilities))
        elif isinstance(request, p.LoadModel):
            self.worker.submit(ModelLoad(next(self._ids), session, request.model, session.post))
        elif isinstance(request, p.CompleteMakeMap):
            await self._queue_map(session, request)

    # --- map makers (server.map_jobs) ----------------------------------------------------------

    def _map_makers(self) -> MapMakers:
        c = self.config
        models = default_map_models(c.model)
        models.update({k: v for k, v in (("depth", c.depth_model),
                                         ("segments", c.segment_model)) if v})
        return MapMakers(models, device=str(c.device), idle_s=c.map_models_idle_s)

    async def _queue_map(self, session: Session, complete: p.CompleteMakeMap) -> None:
        request = complete.request
        image = await asyncio.to_thread(decode_picture, complete.image_png, request.ref)
        job = MapJob(next(self._ids), session, request, image, session.post)
        self.worker.submit(job, session.protocol.accept(request, job.id))

    async def _queue_job(self, session: Session, complete: p.CompleteSubmit) -> None:
        # Decoding a big PNG and blurring a mask take a while: off the loop, so other clients'
        # progress keeps flowing. Awaited here, so one client's jobs keep their order.
        request = complete.request
        try:
            job = await asyncio.to_thread(self._make_job, session, complete)
            if request.replace:
                self._replace_live(session, job.id)
            self.worker.submit(job, session.protocol.accept(request, job.id, job.seed))
        except p.ProtocolError as exc:
            if exc.code == p.E_SHUTTING_DOWN:  # like every job of a stopping server: cancelled
                session.send(p.Cancelled(None, "the server is shutting down", request.ref))
                return
            exc.ref = request.ref  # every error about a submit names it
            raise
        except Exception as exc:  # a bug: this submit fails, with its ref, and the log says why
            log.exception("client %s: submit %d failed", session.name, request.ref)
            raise p.ProtocolError(p.E_JOB_FAILED, f"Internal server error: {exc}",
                                  ref=request.ref) from None
        log.debug("job %d queued for client %s: %s %dx%d, %d steps, %d variant(s)", job.id,
                  session.name, request.mode, request.width, request.height, request.steps,
                  request.variants)

    def _replace_live(self, session: Session, job_id: int) -> None:
        """A live submit (``replace``): cancel the client's earlier live jobs (a queued one at
        once, the running one within a step) before the new one queues; nothing else of its."""
        for old in session.live_jobs:
            self.worker.cancel(session, old, p.REPLACED_REASON)  # False: it had ended already
        session.live_jobs = [job_id]

    def _make_job(self, session: Session, complete: p.CompleteSubmit) -> Job:
        request = complete.request
        try:
            with Image.open(io.BytesIO(complete.image_png)) as img:
                if img.format != "PNG":
                    raise ValueError(f"it is {img.format}, not PNG")
                image = img.convert("RGB")  # alpha is dropped: the model paints opaque pixels
        except Exception as exc:
            raise p.ProtocolError(p.E_BAD_FRAME, f"The image could not be decoded as PNG: "
                                                 f"{exc}", ref=request.ref) from None
        canvas = (request.width, request.height)
        try:
            change = _build_map(request, complete.map_gray8, canvas)
        except ValueError as exc:
            raise p.ProtocolError(p.E_BAD_MESSAGE, f"Could not build the change map: {exc}",
                                  ref=request.ref) from None
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        every = self.config.preview_every if request.preview_every is None else \
            request.preview_every
        return Job(id=next(self._ids), owner=session, request=request, image=image,
                   change=change, seed=seed, send=session.post, preview_every=every)


def _build_map(request: p.SubmitRequest, map_gray8: bytes | None,
               canvas: tuple[int, int]) -> regions.CanvasMap:
    """The job's change map from its mode (builders live in server.maps / server.regions)."""
    if request.mode == "change_map":
        return regions.map_from_gray8(map_gray8, canvas, request.region)
    if request.mode == "soft_inpaint":
        spec = request.soft_inpaint or p.SoftInpaint()
        return regions.map_from_mask(map_gray8, canvas, spec.softness_px, spec.grow_px,
                                     request.region)
    if request.mode == "fan":
        return regions.map_fan(canvas, request.fan.count, request.fan.low, request.fan.high,
                               request.region)
    return regions.map_uniform(canvas, request.strength, request.region)


@contextlib.asynccontextmanager
async def run_server(config: ServerConfig,
                     loader: Callable[[str], Any] | None = None) -> AsyncIterator[DiffusionServer]:
    """Start a server in this event loop; stopped (jobs cancelled, clients closed) on exit."""
    server = DiffusionServer(config, loader)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


__all__ = ["ConfigError", "DiffusionServer", "ServerConfig", "Session", "check_bind",
           "run_server", "DEFAULT_MODEL"]
