"""A ``make_map`` request as a task of the worker (``server.jobs``): it waits in the same queue as
diffusion jobs (so it never slows a running one), under the same per-client limit, and tells its
client the same way: ``accepted`` -> ``queue`` -> ``started`` -> ``progress`` -> ``map`` (+ its
gray8 frame) -> ``done``; or ``cancelled``, or an ``error`` with its job id.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from server.device import free_device_memory, is_out_of_memory
from server.map_makers import FlatMapError, MapMakers
from shared import protocol as p

log = logging.getLogger("server.map_jobs")


def decode_picture(image_png: bytes, ref: int) -> Image.Image:
    """The client's PNG as RGB (alpha dropped), or the error for that request."""
    try:
        with Image.open(io.BytesIO(image_png)) as img:
            if img.format != "PNG":
                raise ValueError(f"it is {img.format}, not PNG")
            return img.convert("RGB")
    except Exception as exc:
        raise p.ProtocolError(p.E_BAD_FRAME, f"The image could not be decoded as PNG: {exc}",
                              ref=ref) from None


@dataclass(eq=False)
class MapJob:
    """One ``make_map``, decoded, waiting for (or on) the worker."""

    id: int
    owner: Any
    request: p.MakeMap
    image: Image.Image  # RGB, the request's size
    send: Callable[[p.Event], None]
    cancel_event: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = "cancelled by the client"
    created: float = field(default_factory=time.monotonic)
    last_position: int | None = None


def run_map_job(job: MapJob, makers: MapMakers) -> None:
    """Load the kind's model if needed, make the map, send it; exactly one ending message."""
    request = job.request
    if job.cancel_event.is_set():
        job.send(p.Cancelled(job.id, job.cancel_reason))
        return
    started = time.monotonic()
    job.send(p.Started(job.id, request.width, request.height,
                       p.Region(0, 0, request.width, request.height)))
    total = 2  # the model ready, the map made
    try:
        try:
            makers.ensure(request.kind)
        except Exception as exc:
            log.exception("map job %d: the %s model would not load", job.id, request.kind)
            job.send(p.Error(p.E_MODEL_LOAD_FAILED, f"Could not load the {request.kind} map "
                                                    f"model {makers.models[request.kind]!r}: "
                                                    f"{exc}", job_id=job.id))
            return
        job.send(p.Progress(job.id, 1, total, time.monotonic() - started, None))
        if job.cancel_event.is_set():
            job.send(p.Cancelled(job.id, job.cancel_reason))
            return
        gray8 = makers.make(request, job.image)
    except FlatMapError as exc:
        job.send(p.Error(p.E_JOB_FAILED, str(exc), job_id=job.id))
        return
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        if is_out_of_memory(exc):
            free_device_memory()
            job.send(p.Error(p.E_OUT_OF_MEMORY, f"The device ran out of memory making a "
                                                f"{request.kind} map of {request.width}x"
                                                f"{request.height}.", job_id=job.id))
            return
        log.exception("map job %d failed", job.id)
        job.send(p.Error(p.E_JOB_FAILED, f"The {request.kind} map failed: {exc}",
                         job_id=job.id))
        return
    run_s = time.monotonic() - started
    job.send(p.Progress(job.id, total, total, run_s, 0.0))
    job.send(p.MapReady(job.id, request.kind, request.width, request.height, gray8))
    queued_s = started - job.created
    job.send(p.Done(job.id, 1, 0, {"queued_s": queued_s, "run_s": run_s,
                                   "total_s": time.monotonic() - job.created}))
    log.info("map job %d: %s %dx%d in %.2fs (queued %.2fs)", job.id, request.kind,
             request.width, request.height, run_s, queued_s)
