"""The studio engine: the same websocket front, the diffusion workers on a Ray Serve deployment.

The front keeps what is about clients: the fair queue (``server.fair_queue``), each job's true
position, cancels and disconnects. It hands a job to the pool only when a replica is free, so
the order painters are served in is ours (fair), not the order requests reach Serve. Each job
streams its messages back from whichever replica runs it (``server.ray_replica``); a cancel closes
that stream, which stops the pipeline at its next step there. A replica that dies fails its job
with a message saying so; Serve starts a new one, and the next jobs run.

It offers the in-process :class:`~server.jobs.Worker`'s interface (``submit``, ``cancel``,
``cancel_owner``, ``count``, ``find``, ``stop``), called from the server's event loop (``stop``
from any thread).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from server.fair_queue import FairQueue, queue_position
from server.jobs import Job, ModelLoad, Task
from server.map_jobs import MapJob, run_map_job
from server.pool_wire import JobPayload, ReplicaSettings, RunsOn
from shared import protocol as p

log = logging.getLogger("server.ray_engine")

APP_PREFIX = "diffdiff"
ENDS = (p.Done, p.Cancelled, p.Error)
ModelInfoCallback = Callable[[str, p.ModelInfo, int], None]


@dataclass
class PoolOptions:
    address: str | None = None  # None: start a local Ray instance; "auto", "ray://host:10001"
    replicas: int | str = "auto"  # a number, or "auto": one per GPU (one CPU replica without)
    cpus_per_replica: float | None = None  # CPU replicas: None = the cluster's CPUs shared out
    app_name: str | None = None  # the Serve application; None: default_app_name(port)


def default_app_name(port: int, machine: str | None = None) -> str:
    """``diffdiff-<machine>-<port>``: one application per server on a shared cluster. A server
    restarted on the same machine and port takes its own application back (one left by a crash
    does not hold GPUs for ever); port 0 (any free port: tests, benchmarks) gets a random suffix
    instead, as the port is not known yet."""
    machine = re.sub(r"[^A-Za-z0-9_-]+", "-", (machine or socket.gethostname()).split(".")[0])
    return f"{APP_PREFIX}-{machine}-{port if port else secrets.token_hex(3)}"


def bind_first(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound before the pool is deployed: a second server started
    on a port in use stops here, before it replaces the first one's Serve application (named
    after the port); port 0 gets its port now, for the name."""
    return socket.create_server((host, port),
                                family=socket.AF_INET6 if ":" in host else socket.AF_INET)


def replica_count(replicas: int | str, gpus: float, cpus: float) -> int:
    """``--replicas``: a number, or ``auto``: one replica per GPU, or one on the CPU."""
    if replicas == "auto":
        return max(1, int(gpus))
    count = int(replicas)
    if count < 1:
        raise ValueError("--replicas must be 1 or more (or auto)")
    return count


def replica_resources(count: int, gpus: float, cpus: float,
                      cpus_per_replica: float | None) -> dict[str, float]:
    """Ray actor options: a GPU each (or a share of one, with more replicas than GPUs), else a
    share of the CPUs."""
    if gpus > 0:
        return {"num_gpus": min(1.0, gpus / count), "num_cpus": 1}
    share = cpus_per_replica if cpus_per_replica is not None else max(0.1, min(1.0, cpus / count))
    return {"num_cpus": share}


class RayEngine:
    def __init__(self, config: Any, pool: PoolOptions | None = None,
                 on_model_info: ModelInfoCallback | None = None,
                 loader: Callable[[str], Any] | None = None,
                 owner_ready: Callable[[Any], bool] | None = None,
                 map_makers: Any = None) -> None:
        self.config = config
        # make_map requests (depth, segments) are small models: they run here, in the front,
        # taking their turn in the same fair queue and a slot like a job.
        self.map_makers = map_makers
        # A client that does not read its messages gets no job started until it does (wake()).
        self.owner_ready = owner_ready or (lambda owner: True)
        self.pool = pool or PoolOptions()
        self.on_model_info = on_model_info
        self.loader = loader  # replaces load_pipeline in the replicas (tests); must pickle
        self.slots = 1
        self.app_name = self.pool.app_name or default_app_name(getattr(config, "port", 0))
        self.handle: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._pending: FairQueue[Task] = FairQueue()
        self._running: dict[Task, asyncio.Task] = {}
        self._responses: dict[Task, Any] = {}
        # Jobs whose last message went out while their stream still closes: no longer the
        # client's (nothing to cancel, not counted), still holding their replica.
        self._ended: set[Task] = set()
        self.runs_on: dict[int, Any] = {}  # running job id -> RunsOn (the replica's process)
        self.jobs_by_replica: Counter[int] = Counter()  # replica pid -> jobs it started
        self._stopping = False
        self._started_ray = False
        # A client's load_model makes that model its default (the pool has no single current one).
        # Forgotten when the client goes (cancel_owner).
        self._model_of: dict[Any, str] = {}

    # --- life cycle ---------------------------------------------------------------------------

    async def start_pool(self) -> tuple[p.ModelInfo, int]:
        """Join (or start) Ray, deploy the replicas, load the default model on one; returns what
        the welcome says about that model."""
        self.loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._deploy)
        started = time.monotonic()
        try:
            info, native = await self.handle.options(
                multiplexed_model_id=self.config.model).describe.remote()
        except Exception as exc:  # the replica's own error (a model or LoRA not found), unwrapped
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise
        log.info("pool ready: %d replica(s); %s loaded in %.1fs", self.slots, self.config.model,
                 time.monotonic() - started)
        return info, native

    def _deploy(self) -> None:
        # Every replica's warnings at once: Ray's deduplication holds a line like one another
        # replica wrote until the next line arrives, for ever if none does (read when Ray loads).
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        import ray
        from ray import serve

        from server.ray_replica import DiffusionReplica

        if not ray.is_initialized():
            # Replicas import ``server`` from this checkout when it is not installed.
            root = str(Path(__file__).resolve().parent.parent)
            path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
            ray.init(address=self.pool.address, include_dashboard=False, logging_level="WARNING",
                     runtime_env={"env_vars": {"PYTHONPATH": path}})
            self._started_ray = True
        quiet_serve_logs()
        # Only our front talks to the replicas. The controller (when this starts it) puts its
        # warnings on the console, which Ray forwards to this server's log; its INFO lines
        # (deploying, adding and removing replicas) say what this log says already.
        serve.start(proxy_location="Disabled", logging_config={"log_level": "WARNING"})
        resources = ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 1.0)
        self.slots = replica_count(self.pool.replicas, gpus, cpus)
        actor = replica_resources(self.slots, gpus, cpus, self.pool.cpus_per_replica)
        device = "cuda" if actor.get("num_gpus") else "cpu"
        c = self.config
        dtype = c.dtype if str(c.device).split(":")[0] == device else None
        if dtype is None and device == "cuda":
            import torch

            dtype = torch.float16
        settings = ReplicaSettings(default_model=c.model, device=device, dtype=dtype,
                                   refiner=c.refiner, max_region_pixels=c.max_region_pixels,
                                   pipeline_options=c.pipeline_options, lora=c.lora,
                                   lora_scale=c.lora_scale, loader=self.loader)
        if self.app_name in serve.status().applications:
            log.warning("replacing the Serve application %r already on the cluster (this "
                        "server's, left by an earlier run, or another server's of that name)",
                        self.app_name)
        log.info("deploying %d %s replica(s) (%s) on Ray as Serve application %r", self.slots,
                 device, actor, self.app_name)
        app = DiffusionReplica.options(num_replicas=self.slots,
                                       ray_actor_options=actor).bind(settings)
        self.handle = serve.run(app, name=self.app_name, route_prefix=None)

    def start(self) -> None:  # the in-process worker's; the pool started in start_pool
        pass

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new tasks, cancel every one, take the deployment down (from any thread)."""
        if self.loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._cancel_all(), self.loop)
        future.result(timeout)
        import ray
        from ray import serve

        if self._started_ray:  # our own instance: everything goes with it
            ray.shutdown()
            return
        try:  # a shared cluster: take our application down, leave the rest
            serve.delete(self.app_name)
        except Exception:  # the cluster may be gone already; nothing left to stop then
            log.warning("could not delete the Serve application", exc_info=True)

    async def _cancel_all(self) -> None:
        self._stopping = True
        dropped = list(self._pending)
        self._pending.clear()
        for task in dropped:
            task.send(p.Cancelled(task.id, "the server is shutting down"))
        for task in list(self._running):
            self._cancel_running(task, "the server is shutting down")
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=10)

    # --- the worker's interface (event loop) --------------------------------------------------

    def submit(self, task: Task, accepted: p.Accepted | None = None) -> int:
        if self._stopping:
            raise p.ProtocolError(p.E_SHUTTING_DOWN, "The server is shutting down.")
        self._pending.append(task)
        position = queue_position(self._pending.index(task), len(self._running), self.slots)
        task.last_position = position
        if accepted is not None:
            task.send(replace(accepted, position=position))
        self._dispatch()
        return position

    def _tasks(self) -> list[Task]:
        """Every task still the clients' (running or waiting)."""
        return [t for t in [*self._running, *self._pending] if t not in self._ended]

    def count(self, owner: Any) -> int:
        return sum(t.owner is owner for t in self._tasks())

    def find(self, owner: Any, task_id: int) -> Task | None:
        return next((t for t in self._tasks() if t.id == task_id and t.owner is owner), None)

    def cancel(self, owner: Any, task_id: int, reason: str = "cancelled by the client") -> bool:
        task = self.find(owner, task_id)
        if task is None:
            return False
        if task in self._running:
            self._cancel_running(task, reason)
        else:
            self._pending.remove(task)
            log.info("job %d cancelled (%s) before it started", task.id, reason)
            task.send(p.Cancelled(task.id, reason))
            self._announce_positions()
        return True

    def cancel_owner(self, owner: Any, reason: str) -> int:
        """Cancel everything ``owner`` has queued or running: the client went away."""
        self._model_of.pop(owner, None)
        mine = [t for t in self._tasks() if t.owner is owner]
        for task in mine:
            self.cancel(owner, task.id, reason)
        return len(mine)

    # --- dispatching ----------------------------------------------------------------------------

    def wake(self) -> None:
        """A client reads again: its waiting jobs may start (from any thread)."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._dispatch)

    def _dispatch(self) -> None:
        """Start waiting tasks, in fair order, while a replica is free."""
        while len(self._running) < self.slots and not self._stopping:
            task = next((t for t in self._pending if self.owner_ready(t.owner)), None)
            if task is None:
                break
            self._pending.take(task)
            self._running[task] = asyncio.get_running_loop().create_task(self._run(task))
        self._announce_positions()

    def _announce_positions(self) -> None:
        for index, task in enumerate(self._pending):
            position = queue_position(index, len(self._running), self.slots)
            if task.last_position != position:
                task.last_position = position
                task.send(p.QueuePosition(task.id, position))

    def _cancel_running(self, task: Task, reason: str) -> None:
        if task.cancel_event.is_set():
            return
        task.cancel_reason = reason
        task.cancel_event.set()
        response = self._responses.get(task)
        if response is not None:
            # Closing the stream cancels the replica's generator, which stops the pipeline at
            # its next step. Off the loop: Serve's cancel may wait for the request's assignment.
            self.loop.run_in_executor(None, response.cancel)

    async def _run(self, task: Task) -> None:
        try:
            if isinstance(task, ModelLoad):
                await self._run_load(task)
            elif isinstance(task, MapJob):
                await asyncio.to_thread(run_map_job, task, self.map_makers)
            else:
                await self._run_job(task)
        finally:
            self._running.pop(task, None)
            self._responses.pop(task, None)
            self._ended.discard(task)
            self.runs_on.pop(task.id, None)
            self._dispatch()

    async def _run_load(self, task: ModelLoad) -> None:
        try:
            events = await self.handle.options(multiplexed_model_id=task.model).load.remote(task.id)
        except Exception as exc:
            events = [p.Error(p.E_MODEL_LOAD_FAILED, f"Could not load model {task.model!r}: "
                                                     f"{_reason(exc)}", job_id=task.id)]
        for event in events:
            if isinstance(event, p.ModelLoaded):
                if task.owner is not None:
                    self._model_of[task.owner] = event.model
                if self.on_model_info is not None and event.info is not None:
                    self.on_model_info(event.model, event.info, event.native_resolution)
            task.send(event)

    async def _run_job(self, job: Job) -> None:
        if job.cancel_event.is_set():
            job.send(p.Cancelled(job.id, job.cancel_reason))
            return
        model = job.request.model or self._model_of.get(job.owner) or self.config.model
        payload = JobPayload(job.id, replace(job.request, model=model), job.image, job.change,
                             job.seed, job.preview_every, time.monotonic() - job.created)
        response = self.handle.options(stream=True, multiplexed_model_id=model).run.remote(payload)
        self._responses[job] = response
        ended = False
        try:
            async for event in response:
                if isinstance(event, RunsOn):
                    self.runs_on[job.id] = event
                    self.jobs_by_replica[event.pid] += 1
                    log.info("job %d runs on replica pid %d (%s)", job.id, event.pid, event.node)
                    continue
                if job.cancel_event.is_set():
                    break  # its 'cancelled' is ours to send, below
                job.send(event)
                # Read on to the stream's end, not just this job's last message: the replica
                # counts as busy (to Serve's router) until its generator has returned.
                if isinstance(event, ENDS):
                    ended = True
                    self._ended.add(job)
                    if isinstance(event, p.Done):  # the replica's own line is in its log file
                        log.info("job %d done: %d image(s), %.2fs (queued %.2fs)", job.id,
                                 event.images, event.timings.get("run_s", 0.0),
                                 event.timings.get("queued_s", 0.0))
        except asyncio.CancelledError:
            # Serve raises this in the reader when the request was cancelled before a replica
            # took it; otherwise it is this task being cancelled (the loop closing).
            if not job.cancel_event.is_set():
                raise
        except Exception as exc:
            if not job.cancel_event.is_set():
                ended = True
                where = self.runs_on.get(job.id)
                log.error("job %d: the replica%s failed: %s", job.id,
                          f" (pid {where.pid})" if where else "", _reason(exc))
                job.send(p.Error(p.E_JOB_FAILED, f"The worker running this job stopped "
                                                 f"({_reason(exc)}). The pool replaces it; "
                                                 f"submit the job again.", job_id=job.id))
        if ended:
            return
        if job.cancel_event.is_set():
            log.info("job %d cancelled (%s)", job.id, job.cancel_reason)
            job.send(p.Cancelled(job.id, job.cancel_reason))
        else:  # a replica's generator should never end a job silently; say so if it did
            job.send(p.Error(p.E_JOB_FAILED, "The worker ended this job without a result; "
                                             "submit it again.", job_id=job.id))


def quiet_serve_logs() -> None:
    """Serve's INFO lines in this process ("Started Serve", "Application ... is ready", "Deleting
    app") stay out of the server's log; its warnings and errors still show."""
    logging.getLogger("ray.serve").setLevel(logging.WARNING)


def _reason(exc: BaseException) -> str:
    """A failure from Ray in one line (its messages run to pages)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    if "ActorDied" in name or "ActorUnavailable" in name or "died" in first.lower():
        return "its process died"
    return f"{name}: {first[:200]}" if first else name
