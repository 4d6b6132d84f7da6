"""The job queue and the one worker thread that runs jobs on the device, in arrival order.

The pipeline is synchronous torch code, so it runs here, off the event loop. Nothing in this module
touches a socket or writes wire frames: every job carries a thread-safe ``send`` callable
(provided by ``server.app``) that takes a typed message (``shared.protocol``'s ``Started``,
``Progress``, ``Result``...) and posts it to the job's client, in order; the session there
serialises it.

A job's life: ``accepted`` (with its queue position) -> ``queue`` updates -> ``started`` ->
``progress`` (+ ``preview``) per step -> one ``result`` per variant -> ``done``; or ``cancelled``,
or an ``error`` carrying the job id. Exactly one of ``done``/``cancelled``/``error`` ends a job.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from server.device import free_device_memory, is_out_of_memory
from server.fair_queue import FairQueue
from server.families import describe
from server.map_jobs import MapJob, run_map_job
from server.pipelines import Cancelled
from server.regions import CanvasMap, RegionPlan, crop_inputs, paste_back, plan_region
from shared import protocol as p

log = logging.getLogger("server.jobs")

# Thread-safe: posts one message to the task's client (the session may skip a preview for a
# client that reads slower than the job runs; nothing else).
Send = Callable[[p.Event], None]


@dataclass(eq=False)
class Job:
    """One generation request, validated and decoded, waiting for (or on) the device."""

    id: int
    owner: Any  # the client session; jobs are cancelled per owner on disconnect
    request: p.SubmitRequest
    image: Image.Image  # RGB, canvas size
    change: CanvasMap  # canvas-size change map (1 = change fully, 0 = keep)
    seed: int  # variant i uses p.variant_seed(seed, i)
    send: Send
    preview_every: int  # 0: no previews
    cancel_event: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = "cancelled by the client"
    created: float = field(default_factory=time.monotonic)
    last_position: int | None = None

    @property
    def model(self) -> str | None:
        return self.request.model


@dataclass(eq=False)
class ModelLoad:
    """A ``load_model`` request; queued like a job so it never swaps weights under a running one."""

    id: int
    owner: Any
    model: str
    send: Send
    cancel_event: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = "cancelled by the client"
    created: float = field(default_factory=time.monotonic)
    last_position: int | None = None


Task = Job | ModelLoad | MapJob


class ModelHost:
    """The one loaded pipeline, swapped on request. Used from the worker thread only (and once at
    start-up, before the worker runs)."""

    def __init__(self, loader: Callable[[str], Any], model: str,
                 before_load: Callable[[str], None] | None = None) -> None:
        self.loader = loader
        self.name = model
        self.pipe: Any = None
        # Called with the model about to load (not at start-up): others make room for it.
        self.before_load = before_load or (lambda model: None)

    def load_initial(self) -> Any:
        self.pipe = self.loader(self.name)
        return self.pipe

    def ensure(self, model: str | None) -> Any:
        """The pipeline for ``model`` (None: the current one), loading it if needed."""
        if model is None or model == self.name:
            if self.pipe is None:
                self.before_load(self.name)
                self.pipe = self.loader(self.name)
            return self.pipe
        previous = self.name
        # Free the old weights first: two full models rarely fit on a painter's GPU.
        self.pipe = None
        self.before_load(model)
        free_device_memory()
        try:
            self.pipe = self.loader(model)
            self.name = model
        except BaseException:
            log.warning("could not load %s; reloading %s", model, previous)
            try:
                self.pipe = self.loader(previous)
            except Exception:  # the job still reports why *its* model failed; retried next job
                log.exception("could not reload %s either; the next job loads a model again",
                              previous)
            raise
        return self.pipe


def _cancel_waiting(task: Task, reason: str) -> None:
    """End a task that never ran: one log line, and ``cancelled`` to its client."""
    what = "job" if isinstance(task, Job) else "model load"
    log.info("%s %d cancelled (%s) before it started", what, task.id, reason)
    task.send(p.Cancelled(task.id, reason))


def load_failure(model: str | None, exc: BaseException) -> str:
    """What to tell the painter when a model would not load."""
    if is_out_of_memory(exc):
        return (f"Not enough device memory to load model {model!r} ({exc}). Close other "
                f"programs using the GPU, or restart the server with --dtype float16.")
    return f"Could not load model {model!r}: {exc}"


def out_of_memory_advice(plan: RegionPlan, variants: int) -> str:
    """What to tell the painter when a job ran out of device memory."""
    return (f"The device ran out of memory on a {plan.size[0]}x{plan.size[1]} job "
            f"with {variants} variant(s). Try fewer variants or a smaller "
            f"region, or restart the server with --dtype float16.")


def encode_png(image: Image.Image | np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes; low compression because speed matters more than a few kB on loopback."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=compress_level)
    return buf.getvalue()


class ConsoleProgress:
    """A one-line progress bar on the operator's terminal (only when stderr is a terminal)."""

    def __init__(self, stream: Any = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled

    def update(self, job_id: int, step: int, total: int, elapsed: float) -> None:
        if not self.enabled or total <= 0:
            return
        width = 30
        filled = int(width * step / total)
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\rjob {job_id} [{bar}] {step}/{total} {elapsed:5.1f}s")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


class Worker:
    """Runs queued tasks one at a time, in arrival order, on one thread."""

    def __init__(self, host: ModelHost, *, max_region_pixels: int | None = None,
                 console: ConsoleProgress | None = None,
                 on_model_changed: Callable[[str, Any, Task], None] | None = None,
                 owner_ready: Callable[[Any], bool] | None = None,
                 map_makers: Any = None) -> None:
        self.host = host
        # False for an owner whose earlier results still wait unread: its next task waits (the
        # others' run first) until it reads and someone calls wake().
        self.owner_ready = owner_ready or (lambda owner: True)
        self.map_makers = map_makers  # server.map_makers.MapMakers: runs MapJob tasks
        self.max_region_pixels = max_region_pixels
        self.console = console or ConsoleProgress(enabled=False)
        self.on_model_changed = on_model_changed
        self._cv = threading.Condition()
        self._pending: FairQueue[Task] = FairQueue()  # round-robin by client (server.fair_queue)
        self._running: Task | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="diffusion-worker", daemon=True)

    # --- called from the event loop -----------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, task: Task, accepted: p.Accepted | None = None) -> int:
        """Queue a task; sends ``accepted`` (when given, with the position filled in) through
        the task's own channel so it precedes everything the worker sends about it."""
        with self._cv:
            if self._stopping:
                raise p.ProtocolError(p.E_SHUTTING_DOWN, "The server is shutting down.")
            self._pending.append(task)
            position = self._pending.index(task) + (self._running is not None)
            task.last_position = position
            if accepted is not None:
                task.send(replace(accepted, position=position))
            self._cv.notify()
        self._announce_positions()  # a newcomer may go before another client's later tasks
        return position

    def wake(self) -> None:
        """An owner may be ready again: look at the queue."""
        with self._cv:
            self._cv.notify_all()

    def count(self, owner: Any) -> int:
        with self._cv:
            running = self._running is not None and self._running.owner is owner
            return running + sum(t.owner is owner for t in self._pending)

    def find(self, owner: Any, task_id: int) -> Task | None:
        with self._cv:
            for task in [self._running, *self._pending]:
                if task is not None and task.id == task_id and task.owner is owner:
                    return task
        return None

    def cancel(self, owner: Any, task_id: int, reason: str = "cancelled by the client") -> bool:
        """Cancel one of ``owner``'s tasks: a queued one at once, the running one within a step."""
        with self._cv:
            task = next((t for t in self._pending if t.id == task_id and t.owner is owner), None)
            if task is not None:
                self._pending.remove(task)
            elif (self._running is not None and self._running.id == task_id
                  and self._running.owner is owner):
                self._running.cancel_reason = reason
                self._running.cancel_event.set()
                return True
            else:
                return False
        _cancel_waiting(task, reason)
        self._announce_positions()
        return True

    def cancel_owner(self, owner: Any, reason: str) -> int:
        """Cancel everything ``owner`` has queued or running (a client went away)."""
        with self._cv:
            mine = [t for t in self._pending if t.owner is owner]
            for task in mine:
                self._pending.remove(task)
            running = self._running
            if running is not None and running.owner is owner:
                running.cancel_reason = reason
                running.cancel_event.set()
                mine.append(running)
        for task in mine:
            if task is not running:
                _cancel_waiting(task, reason)
        if mine:
            self._announce_positions()
        return len(mine)

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new tasks, cancel every queued and running one, wait for the thread."""
        with self._cv:
            self._stopping = True
            dropped = list(self._pending)
            self._pending.clear()
            if self._running is not None:
                self._running.cancel_reason = "the server is shutting down"
                self._running.cancel_event.set()
            self._cv.notify_all()
        for task in dropped:
            _cancel_waiting(task, "the server is shutting down")
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the worker thread --------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                task = None
                while not self._stopping:
                    task = next((t for t in self._pending if self.owner_ready(t.owner)), None)
                    if task is not None:
                        break
                    # Some tasks may wait for their owners to read; wake() comes then (the
                    # timeout only guards against a missed one).
                    self._cv.wait(1.0 if self._pending else None)
                if self._stopping:
                    return
                self._pending.take(task)  # its owner's turn is used (server.fair_queue)
                self._running = task
            self._announce_positions()
            try:
                self.run(task)
            finally:
                with self._cv:
                    self._running = None

    def run(self, task: Task) -> None:
        """Run one task on the calling thread, now (the loop's body; a Ray replica's too)."""
        try:
            if isinstance(task, ModelLoad):
                self._run_load(task)
            elif isinstance(task, MapJob):
                run_map_job(task, self.map_makers)
            else:
                self._run_job(task)
        except BaseException:  # the worker must survive anything one task does
            log.exception("task %d crashed the worker loop", task.id)

    def _announce_positions(self) -> None:
        """Tell each waiting task's client its new place in the queue, when it changed."""
        updates: list[tuple[Task, int]] = []
        with self._cv:
            ahead = 1 if self._running is not None else 0
            for index, task in enumerate(self._pending):
                position = ahead + index
                if task.last_position != position:
                    task.last_position = position
                    updates.append((task, position))
        for task, position in updates:
            task.send(p.QueuePosition(task.id, position))

    def _run_load(self, task: ModelLoad) -> None:
        started = time.monotonic()
        try:
            pipe = self.host.ensure(task.model)
        except BaseException as exc:
            if is_out_of_memory(exc):
                free_device_memory()
            log.error("load %s failed: %s", task.model, exc)
            task.send(p.Error(p.E_MODEL_LOAD_FAILED, load_failure(task.model, exc), job_id=task.id))
            return
        log.info("model %s loaded in %.1fs", task.model, time.monotonic() - started)
        if self.on_model_changed is not None:
            self.on_model_changed(self.host.name, pipe, task)
        task.send(p.ModelLoaded(self.host.name, pipe.family, int(pipe.native_resolution),
                                describe(pipe)))

    # --- one job, step by step ----------------------------------------------------------------

    def _run_job(self, job: Job) -> None:
        """Load its model, check its fields against it, plan its region, run the pipeline and send
        the results, then ``done``. A step that ends the job early raises :class:`_JobEnded`
        with the job's last message (an error, or ``cancelled``)."""
        if job.cancel_event.is_set():
            _cancel_waiting(job, job.cancel_reason)
            return
        started = time.monotonic()
        try:
            pipe = self._pipeline_for(job)
            options = self._model_options(job, pipe)
            plan = plan_region(job.change, int(pipe.native_resolution), self.max_region_pixels)
            inputs = crop_inputs(job.image, job.change, plan)
            job.send(p.Started(job.id, plan.size[0], plan.size[1], plan.crop))
            output, run_s = self._generate(job, pipe, options, plan, inputs, started)
        except _JobEnded as ended:
            job.send(ended.message)
            return
        self._finish(job, output, plan, run_s, started - job.created)

    def _pipeline_for(self, job: Job) -> Any:
        """The job's model, loaded (and every other client told) if another one was."""
        try:
            previous_model = self.host.name
            pipe = self.host.ensure(job.request.model)
            if self.host.name != previous_model and self.on_model_changed is not None:
                self.on_model_changed(self.host.name, pipe, job)
            return pipe
        except Exception as exc:
            free_device_memory()
            log.error("job %d: could not load %s: %s", job.id, job.request.model, exc)
            raise _JobEnded(p.Error(p.E_MODEL_LOAD_FAILED, load_failure(job.request.model, exc),
                                    job_id=job.id)) from None

    def _model_options(self, job: Job, pipe: Any) -> dict[str, Any]:
        """The job's scheduler and options checked against the pipeline that will run it; the
        options as keyword arguments for its call."""
        # Checked on submit against what the server knew then; another model may have been
        # loaded since (or this one was not loaded yet), so check again against this one.
        request, info, model = job.request, describe(pipe), self.host.name
        try:
            if request.scheduler is not None and request.scheduler not in info.schedulers:
                raise p.ProtocolError(p.E_UNKNOWN_SCHEDULER,
                                      f"Unknown scheduler {request.scheduler!r} for model "
                                      f"{model!r} ({info.family}); it takes: "
                                      f"{', '.join(info.schedulers)}.")
            return p.check_options(request.options or {}, info.options, model)
        except p.ProtocolError as exc:
            log.info("job %d refused: %s", job.id, exc.message)
            raise _JobEnded(p.Error(exc.code, exc.message, job_id=job.id)) from None

    def _generate(self, job: Job, pipe: Any, options: dict[str, Any], plan: RegionPlan,
                  inputs: tuple[Any, ...], started: float) -> tuple[Any, float]:
        """Run the pipeline on the planned region (``inputs`` from ``crop_inputs``) and send one
        result per variant, pasted back; returns the pipeline's output and its seconds."""
        request = job.request
        source, source_map, model_image, model_map = inputs
        generators = [torch.Generator("cpu").manual_seed(p.variant_seed(job.seed, i))
                      for i in range(request.variants)]
        try:
            output = pipe(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                image=model_image,
                change_map=model_map,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance,
                generator=generators,
                num_images_per_prompt=request.variants,
                scheduler=request.scheduler,
                output_type="pil",
                callback=self._step_reporter(job, plan, started),
                cancel=job.cancel_event,
                **options,
            )
            run_s = time.monotonic() - started
            timings = {"queued_s": started - job.created, "run_s": run_s}
            for index, image in enumerate(output.images):
                final = paste_back(source, image, source_map, request.steps)
                job.send(p.Result(job.id, index, p.variant_seed(job.seed, index), plan.crop, encode_png(final),
                                  final.width, final.height, timings))
            return output, run_s
        except Cancelled:
            self.console.finish()
            log.info("job %d cancelled (%s) after %.1fs", job.id, job.cancel_reason,
                     time.monotonic() - started)
            raise _JobEnded(p.Cancelled(job.id, job.cancel_reason)) from None
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            self.console.finish()
            if not is_out_of_memory(exc):
                log.exception("job %d failed", job.id)
                raise _JobEnded(p.Error(p.E_JOB_FAILED, f"The job failed: {exc}",
                                        job_id=job.id)) from None
        # Out of memory: freed here, outside the except block, so the traceback (and the tensors
        # its frames hold) is gone; the map models go too, so a retry has their room.
        if self.map_makers is not None:
            self.map_makers.unload(f"job {job.id} ran out of memory")
        free_device_memory()
        log.error("job %d: out of memory at %dx%d", job.id, *plan.size)
        raise _JobEnded(p.Error(p.E_OUT_OF_MEMORY, out_of_memory_advice(plan, request.variants),
                                job_id=job.id))

    def _step_reporter(self, job: Job, plan: RegionPlan, started: float) -> Callable[[Any], None]:
        """The pipeline's per-step callback: progress, a preview every ``preview_every`` steps
        (never for the last: the result follows), and the operator's console bar."""

        def on_step(info: Any) -> None:
            elapsed = time.monotonic() - started
            eta = elapsed / info.step * (info.total - info.step) if info.step else None
            job.send(p.Progress(job.id, info.step, info.total, elapsed, eta))
            every = job.preview_every
            if every and info.step % every == 0 and info.step < info.total:
                rgb = info.preview()
                job.send(p.Preview(job.id, info.step, plan.crop, encode_png(rgb), rgb.shape[1],
                                   rgb.shape[0]))
            self.console.update(job.id, info.step, info.total, elapsed)

        return on_step

    def _finish(self, job: Job, output: Any, plan: RegionPlan, run_s: float,
                queued_s: float) -> None:
        """``done``, and the job's one log line."""
        self.console.finish()
        request = job.request
        total_s = time.monotonic() - job.created
        job.send(p.Done(job.id, len(output.images), int(output.steps_run),
                        {"queued_s": queued_s, "run_s": run_s, "total_s": total_s}))
        c = plan.crop
        log.info("job %d: %s %dx%d, region %dx%d at (%d,%d) run at %dx%d, %d/%d steps, "
                 "%d variant(s), seed %d, %.2fs (queued %.2fs)", job.id, request.mode,
                 request.width, request.height, c.width, c.height, c.x, c.y, plan.size[0],
                 plan.size[1], int(output.steps_run), request.steps, request.variants,
                 job.seed, run_s, queued_s)


class _JobEnded(Exception):
    """A step ended its job early; ``message`` is the job's last message to its client."""

    def __init__(self, message: p.Event) -> None:
        super().__init__(message)
        self.message = message
