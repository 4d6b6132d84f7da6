"""What travels between the studio front (``server.ray_engine``) and its Ray Serve replicas
(``server.ray_replica``): pickled by Ray, so plain dataclasses (no Ray needed to import them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared import protocol as p


@dataclass(frozen=True)
class ReplicaSettings:
    """What every replica is started with (picklable: it travels to the replica's process)."""

    default_model: str
    device: str = "cpu"
    dtype: Any = None  # a torch dtype; None: float32
    refiner: str | None = None  # for ``default_model`` only, as in the single-process server
    max_region_pixels: int | None = None
    pipeline_options: Any = None  # server.config.PipelineOptions (--channels-last, --compile, ...); None: defaults
    lora: str | None = None  # --lora: a .safetensors file at this path on every node
    lora_scale: float = 1.0
    loader: Callable[[str], Any] | None = None  # model name -> pipeline; None: load_pipeline


@dataclass(frozen=True)
class JobPayload:
    """A decoded job as it travels to a replica (its client and channel stay in the front)."""

    id: int
    request: p.SubmitRequest
    image: Any  # PIL RGB image, canvas size
    change: Any  # server.regions.CanvasMap
    seed: int
    preview_every: int
    queued_s: float  # time spent waiting so far (clocks differ between machines)


@dataclass(frozen=True)
class RunsOn:
    """The first item of every job stream: which replica process runs it."""

    pid: int
    node: str
