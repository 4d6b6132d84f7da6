"""The protocol's messages as plain dicts, for code that builds a message in one call
(``p.error(...)``, ``p.accepted(...)``): each is the message's dataclass (messages.py) encoded."""

from __future__ import annotations

from typing import Any

from .capabilities import Capabilities, ModelInfo
from .constants import ProtocolError
from .fields import Region
from .messages import (
    Accepted,
    Cancel,
    Cancelled,
    Done,
    Error,
    Hello,
    ListModels,
    LoadModel,
    ModelLoaded,
    Models,
    Preview,
    Progress,
    QueuePosition,
    Result,
    Started,
    Welcome,
)

def hello(token: str | None = None, client: str = "") -> dict[str, Any]:
    return Hello(token, client).to_dict()


def cancel(job_id: int | None = None, ref: int | None = None) -> dict[str, Any]:
    return Cancel(job_id, ref).to_dict()


def list_models() -> dict[str, Any]:
    return ListModels().to_dict()


def load_model(model: str) -> dict[str, Any]:
    return LoadModel(model).to_dict()


def welcome(capabilities: Capabilities, server: str = "") -> dict[str, Any]:
    return Welcome(capabilities, server).to_dict()


def error(code: str, message: str, *, job_id: int | None = None,
          ref: int | None = None) -> dict[str, Any]:
    return Error(code, message, job_id, ref).to_dict()


def error_from(exc: ProtocolError) -> dict[str, Any]:
    return Error.from_exception(exc).to_dict()


def accepted(ref: int, job_id: int, position: int, seed: int) -> dict[str, Any]:
    return Accepted(ref, job_id, position, seed).to_dict()


def queue_position(job_id: int, position: int) -> dict[str, Any]:
    return QueuePosition(job_id, position).to_dict()


def started(job_id: int, width: int, height: int, region: Region) -> dict[str, Any]:
    return Started(job_id, width, height, region).to_dict()


def progress(job_id: int, step: int, total: int, elapsed_s: float,
             eta_s: float | None) -> dict[str, Any]:
    return Progress(job_id, step, total, elapsed_s, eta_s).to_dict()


def preview(job_id: int, step: int, region: Region) -> dict[str, Any]:
    """The announcement only; its PNG frame follows."""
    return Preview(job_id, step, region, b"", 0, 0).to_dict()


def result(job_id: int, index: int, seed: int, region: Region,
           timings: dict[str, float]) -> dict[str, Any]:
    """The announcement only; its PNG frame follows."""
    return Result(job_id, index, seed, region, b"", 0, 0, timings).to_dict()


def done(job_id: int, images: int, steps_run: int, timings: dict[str, float]) -> dict[str, Any]:
    return Done(job_id, images, steps_run, timings).to_dict()


def cancelled(job_id: int | None, reason: str = "cancelled", ref: int | None = None) -> dict[str, Any]:
    return Cancelled(job_id, reason, ref).to_dict()


def models(models: list[str], current_model: str,
           model_info: dict[str, ModelInfo] | None = None) -> dict[str, Any]:
    out = Models(list(models), current_model, model_info or {}).to_dict()
    if model_info is None:  # as a server that knows no model details sends it
        del out["model_info"]
    return out


def model_loaded(model: str, family: str, native_resolution: int,
                 info: ModelInfo | None = None) -> dict[str, Any]:
    return ModelLoaded(model, family, native_resolution, info).to_dict()
