"""The job queue and the one worker thread that runs jobs on the device, in arrival order.

The pipeline is synchronous torch code, so it runs here, off the event loop. Nothing in this module
touches a socket: every job carries a thread-safe ``send`` callable (provided by ``server.app``)
that posts wire frames back to its client, in order.

A job's life: ``accepted`` (with its queue position) -> ``queue`` updates -> ``started`` ->
``progress`` (+ ``preview``) per step -> one ``result`` per variant -> ``done``; or ``cancelled``,
or an ``error`` carrying the job id. Exactly one of ``done``/``cancelled``/``error`` ends a job.
"""

from __future__ import annotations

import gc
import io
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from server.families import describe
from server.pipelines import Cancelled
from server.regions import CanvasMap, crop_inputs, paste_back, plan_region
from shared import protocol as p

log = logging.getLogger("server.jobs")

# Thread-safe: posts frames to the job's client. ``droppable`` frames (previews) may be skipped
# when that client reads slower than the job runs.
Send = Callable[..., None]


@dataclass(eq=False)
class Job:
    """One generation request, validated and decoded, waiting for (or on) the device."""

    id: int
    owner: Any  # the client session; jobs are cancelled per owner on disconnect
    request: p.SubmitRequest
    image: Image.Image  # RGB, canvas size
    change: CanvasMap  # canvas-size change map (1 = change fully, 0 = keep)
    seed: int  # variant i uses seed + i
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


Task = Job | ModelLoad


class ModelHost:
    """The one loaded pipeline, swapped on request. Used from the worker thread only (and once at
    start-up, before the worker runs)."""

    def __init__(self, loader: Callable[[str], Any], model: str) -> None:
        self.loader = loader
        self.name = model
        self.pipe: Any = None

    def load_initial(self) -> Any:
        self.pipe = self.loader(self.name)
        return self.pipe

    def ensure(self, model: str | None) -> Any:
        """The pipeline for ``model`` (None: the current one), loading it if needed."""
        if model is None or model == self.name:
            if self.pipe is None:
                self.pipe = self.loader(self.name)
            return self.pipe
        previous = self.name
        # Free the old weights first: two full models rarely fit on a painter's GPU.
        self.pipe = None
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


def free_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    # MPS and some CUDA paths raise a plain RuntimeError.
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _cancel_waiting(task: Task, reason: str) -> None:
    """End a task that never ran: one log line, and ``cancelled`` to its client."""
    what = "job" if isinstance(task, Job) else "model load"
    log.info("%s %d cancelled (%s) before it started", what, task.id, reason)
    task.send([p.dumps(p.cancelled(task.id, reason))])


def load_failure(model: str | None, exc: BaseException) -> str:
    """What to tell the painter when a model would not load."""
    if is_out_of_memory(exc):
        return (f"Not enough device memory to load model {model!r} ({exc}). Close other "
                f"programs using the GPU, or restart the server with --dtype float16.")
    return f"Could not load model {model!r}: {exc}"


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
                 on_model_changed: Callable[[str, Any, Task], None] | None = None) -> None:
        self.host = host
        self.max_region_pixels = max_region_pixels
        self.console = console or ConsoleProgress(enabled=False)
        self.on_model_changed = on_model_changed
        self._cv = threading.Condition()
        self._pending: deque[Task] = deque()
        self._running: Task | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="diffusion-worker", daemon=True)

    # --- called from the event loop -----------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, task: Task, accepted_message: dict[str, Any] | None = None) -> int:
        """Queue a task; sends ``accepted`` (when given, with the position filled in) through
        the task's own channel so it precedes everything the worker sends about it."""
        with self._cv:
            if self._stopping:
                raise p.ProtocolError(p.E_SHUTTING_DOWN, "The server is shutting down.")
            self._pending.append(task)
            position = len(self._pending) - 1 + (self._running is not None)
            task.last_position = position
            if accepted_message is not None:
                task.send([p.dumps({**accepted_message, "position": position})])
            self._cv.notify()
        return position

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
                while not self._pending and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                task = self._pending.popleft()
                self._running = task
            self._announce_positions()
            try:
                if isinstance(task, ModelLoad):
                    self._run_load(task)
                else:
                    self._run_job(task)
            except BaseException:  # the worker must survive anything one task does
                log.exception("task %d crashed the worker loop", task.id)
            finally:
                with self._cv:
                    self._running = None

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
            task.send([p.dumps(p.queue_position(task.id, position))])

    def _run_load(self, task: ModelLoad) -> None:
        started = time.monotonic()
        try:
            pipe = self.host.ensure(task.model)
        except BaseException as exc:
            if is_out_of_memory(exc):
                free_device_memory()
            log.error("load %s failed: %s", task.model, exc)
            task.send([p.dumps(p.error(p.E_MODEL_LOAD_FAILED, load_failure(task.model, exc),
                                       job_id=task.id))])
            return
        log.info("model %s loaded in %.1fs", task.model, time.monotonic() - started)
        if self.on_model_changed is not None:
            self.on_model_changed(self.host.name, pipe, task)
        task.send([p.dumps(p.model_loaded(self.host.name, pipe.family,
                                          int(pipe.native_resolution), describe(pipe)))])

    def _check_model_fields(self, request: p.SubmitRequest, pipe: Any) -> dict[str, Any]:
        """The job's scheduler and options checked against the pipeline that will run it; the
        options as keyword arguments for its call."""
        info = describe(pipe)
        model = self.host.name
        if request.scheduler is not None and request.scheduler not in info.schedulers:
            raise p.ProtocolError(p.E_UNKNOWN_SCHEDULER,
                                  f"Unknown scheduler {request.scheduler!r} for model {model!r} "
                                  f"({info.family}); it takes: {', '.join(info.schedulers)}.")
        return p.check_options(request.options or {}, info.options, model)

    def _run_job(self, job: Job) -> None:
        request = job.request
        started = time.monotonic()
        queued_s = started - job.created
        if job.cancel_event.is_set():
            _cancel_waiting(job, job.cancel_reason)
            return
        try:
            previous_model = self.host.name
            pipe = self.host.ensure(request.model)
            if self.host.name != previous_model and self.on_model_changed is not None:
                self.on_model_changed(self.host.name, pipe, job)
        except Exception as exc:
            free_device_memory()
            log.error("job %d: could not load %s: %s", job.id, request.model, exc)
            job.send([p.dumps(p.error(p.E_MODEL_LOAD_FAILED, load_failure(request.model, exc),
                                      job_id=job.id))])
            return

        try:
            options = self._check_model_fields(request, pipe)
        except p.ProtocolError as exc:
            # Checked on submit against what the server knew then; another model may have been
            # loaded since (or this one was not loaded yet), so check again against this one.
            log.info("job %d refused: %s", job.id, exc.message)
            job.send([p.dumps(p.error(exc.code, exc.message, job_id=job.id))])
            return

        plan = plan_region(job.change, int(pipe.native_resolution), self.max_region_pixels)
        source, source_map, model_image, model_map = crop_inputs(job.image, job.change, plan)
        job.send([p.dumps(p.started(job.id, plan.size[0], plan.size[1], plan.crop))])

        def on_step(info: Any) -> None:
            elapsed = time.monotonic() - started
            eta = elapsed / info.step * (info.total - info.step) if info.step else None
            frames: list[str | bytes] = [p.dumps(p.progress(job.id, info.step, info.total,
                                                            elapsed, eta))]
            job.send(frames)
            every = job.preview_every
            if every and info.step % every == 0 and info.step < info.total:
                rgb = info.preview()
                job.send([p.dumps(p.preview(job.id, info.step, plan.crop)),
                          p.encode_frame(p.FRAME_PREVIEW_PNG, job.id, 0, rgb.shape[1],
                                         rgb.shape[0], encode_png(rgb))], droppable=True)
            self.console.update(job.id, info.step, info.total, elapsed)

        generators = [torch.Generator("cpu").manual_seed(job.seed + i)
                      for i in range(request.variants)]
        out_of_memory = False
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
                callback=on_step,
                cancel=job.cancel_event,
                **options,
            )
            run_s = time.monotonic() - started
            for index, image in enumerate(output.images):
                final = paste_back(source, image, source_map, request.steps)
                timings = {"queued_s": queued_s, "run_s": run_s}
                job.send([p.dumps(p.result(job.id, index, job.seed + index, plan.crop, timings)),
                          p.encode_frame(p.FRAME_RESULT_PNG, job.id, index, final.width,
                                         final.height, encode_png(final))])
        except Cancelled:
            self.console.finish()
            log.info("job %d cancelled (%s) after %.1fs", job.id, job.cancel_reason,
                     time.monotonic() - started)
            job.send([p.dumps(p.cancelled(job.id, job.cancel_reason))])
            return
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            self.console.finish()
            out_of_memory = is_out_of_memory(exc)
            if not out_of_memory:
                log.exception("job %d failed", job.id)
                job.send([p.dumps(p.error(p.E_JOB_FAILED, f"The job failed: {exc}",
                                          job_id=job.id))])
                return
        if out_of_memory:
            # Outside the except block, so the traceback (and the tensors its frames hold) is gone.
            free_device_memory()
            log.error("job %d: out of memory at %dx%d", job.id, *plan.size)
            message = (f"The device ran out of memory on a {plan.size[0]}x{plan.size[1]} job "
                       f"with {request.variants} variant(s). Try fewer variants or a smaller "
                       f"region, or restart the server with --dtype float16.")
            job.send([p.dumps(p.error(p.E_OUT_OF_MEMORY, message, job_id=job.id))])
            return
        self.console.finish()
        total_s = time.monotonic() - job.created
        job.send([p.dumps(p.done(job.id, len(output.images), int(output.steps_run),
                                 {"queued_s": queued_s, "run_s": run_s, "total_s": total_s}))])
        c = plan.crop
        log.info("job %d: %s %dx%d, region %dx%d at (%d,%d) run at %dx%d, %d/%d steps, "
                 "%d variant(s), seed %d, %.2fs (queued %.2fs)", job.id, request.mode,
                 request.width, request.height, c.width, c.height, c.x, c.y, plan.size[0],
                 plan.size[1], int(output.steps_run), request.steps, request.variants,
                 job.seed, run_s, queued_s)
