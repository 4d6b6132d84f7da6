"""One diffusion worker of the studio pool: a Ray Serve replica (one per GPU, or a CPU share).

A replica holds its models (Serve's model multiplexing: a job for model M goes preferably to a
replica that has M loaded; the least recently used is dropped past ``max_models``) and runs one
job at a time with the in-process engine's own code (``server.jobs.Worker.run``), so a job gives
the same pixels here as in a single-process server. Everything the job says (``started``,
``progress``, ``preview``, ``result``, ``done`` / ``cancelled`` / ``error``) streams back to the
websocket front as it happens; the front cancelling the stream (the painter cancelled, or went
away) sets the job's cancel event, so the pipeline stops at its next step.

Imported by Ray in the replica's process: the ``server`` package must be importable on every
node of the cluster (``pip install .`` there).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from server.jobs import Job, ModelHost, ModelLoad, Worker
from server.pool_wire import JobPayload, ReplicaSettings, RunsOn
from shared import protocol as p

log = logging.getLogger("server.ray_replica")

ENDS = (p.Done, p.Cancelled, p.Error)
MODELS_PER_REPLICA = 2  # e.g. SDXL and Flux on one 80 GB GPU; the least recently used goes first


# One job at a time per replica (the front queues the rest, fairly); a dead replica is noticed
# within seconds, and replaced.
@serve.deployment(max_ongoing_requests=1, health_check_period_s=2, health_check_timeout_s=30)
class DiffusionReplica:
    def __init__(self, settings: ReplicaSettings) -> None:
        quiet_console()
        self.settings = settings
        self.node = os.uname().nodename
        self._one_job = threading.Lock()  # a cancelled job's last step ends before the next starts
        self.steps_by_job: dict[int, int] = {}  # the step counter: job id -> last step run
        self.models_loaded: list[str] = []

    # --- models -----------------------------------------------------------------------------

    def _load(self, model: str) -> Any:
        s = self.settings
        started = time.monotonic()
        if s.loader is not None:
            pipe = s.loader(model)
        else:
            import torch

            from server.models import load_pipeline

            refiner = s.refiner if model == s.default_model else None
            pipe = load_pipeline(model, device=s.device, dtype=s.dtype or torch.float32,
                                 refiner=refiner, options=s.pipeline_options)
            if s.lora and model == s.default_model:  # as the in-process server: that model only
                from server.models.lora import merge_lora

                merge_lora(pipe, s.lora, s.lora_scale)
        self.models_loaded.append(model)
        log.info("replica %d loaded %s in %.1fs", os.getpid(), model, time.monotonic() - started)
        return pipe

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def pipeline(self, model: str) -> Any:
        return await asyncio.to_thread(self._load, model)

    async def _pipeline_for_request(self) -> tuple[str, Any]:
        model = serve.get_multiplexed_model_id() or self.settings.default_model
        return model, await self.pipeline(model)

    # --- requests from the front --------------------------------------------------------------

    async def describe(self) -> tuple[p.ModelInfo, int]:
        """The request's model, loaded: what the welcome says about it."""
        from server.families import describe

        _, pipe = await self._pipeline_for_request()
        return describe(pipe), int(pipe.native_resolution)

    async def load(self, load_id: int) -> list[p.Event]:
        """A ``load_model``: the model loaded here (or why not), as the single server says it."""
        events: list[p.Event] = []
        model = serve.get_multiplexed_model_id()
        try:
            _, pipe = await self._pipeline_for_request()
        except Exception as exc:  # reported by the worker's own wording
            from server.jobs import load_failure

            return [p.Error(p.E_MODEL_LOAD_FAILED, load_failure(model, exc), job_id=load_id)]
        host = ModelHost(lambda name: pipe, model)
        host.pipe = pipe
        task = ModelLoad(load_id, None, model, events.append)
        await asyncio.to_thread(Worker(host).run, task)
        return events

    async def run(self, payload: JobPayload) -> AsyncIterator[Any]:
        """Run one job; yields :class:`RunsOn`, then the job's messages up to its last."""
        yield RunsOn(os.getpid(), self.node)
        try:
            model, pipe = await self._pipeline_for_request()
        except Exception as exc:
            from server.jobs import load_failure

            yield p.Error(p.E_MODEL_LOAD_FAILED, load_failure(payload.request.model, exc),
                          job_id=payload.id)
            return
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[p.Event] = asyncio.Queue()

        def send(event: p.Event) -> None:  # the worker thread's channel
            if isinstance(event, p.Progress):
                self.steps_by_job[payload.id] = event.step
            loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(id=payload.id, owner=None, request=payload.request, image=payload.image,
                  change=payload.change, seed=payload.seed, send=send,
                  preview_every=payload.preview_every,
                  created=time.monotonic() - payload.queued_s)
        host = ModelHost(lambda name: pipe, model)
        host.pipe = pipe
        worker = Worker(host, max_region_pixels=self.settings.max_region_pixels)

        def work() -> None:
            with self._one_job:
                worker.run(job)

        running = loop.run_in_executor(None, work)
        try:
            while True:
                event = await events.get()
                yield event
                if isinstance(event, ENDS):
                    break
            await running
        finally:
            # The stream was cancelled (or ended): the pipeline stops at its next step.
            job.cancel_reason = "the stream was closed"
            job.cancel_event.set()

    def stats(self) -> dict[str, Any]:
        """The replica's counters (tests and the operator)."""
        import torch

        return {"pid": os.getpid(), "steps_by_job": dict(self.steps_by_job),
                "models_loaded": list(self.models_loaded), "torch_threads": torch.get_num_threads()}


def quiet_console() -> None:
    """This replica's log lines, Serve's (one per request) and ours (``server.*``), go to its log
    file in the Ray session's ``logs/serve/``; its console, which Ray forwards to the server's
    log, gets only warnings and errors."""
    serve_log = logging.getLogger("ray.serve")
    ours = logging.getLogger("server")
    ours.setLevel(logging.INFO)
    ours.propagate = False
    for handler in serve_log.handlers:
        if type(handler) is logging.StreamHandler:  # the console; the file is behind a MemoryHandler
            handler.setLevel(logging.WARNING)
        ours.addHandler(handler)
