"""Server settings and the bind check: light (no torch), so the CLI can refuse a bad bind at once."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from shared import protocol as p

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# Seconds the depth and segment models may stay loaded unused (--map-models-idle; 0: kept).
DEFAULT_MAP_MODELS_IDLE_S = 300.0


class ConfigError(ValueError):
    """A server setting that cannot work; the message tells the operator what to change."""


@dataclass(frozen=True)
class PipelineOptions:
    """How a loaded pipeline runs (``server.models.performance`` applies them)."""

    channels_last: bool = False  # NHWC convolutions (GPUs' tensor cores prefer them)
    compile: bool = False  # torch.compile of the denoiser(s), warmed up at load
    compile_backend: str = "inductor"  # tests and the CPU smoke run use "eager" (seconds, not minutes)
    preview_vae: str | None = None  # an AutoencoderTiny for previews (folder, hub id, "tiny-taesd")
    vae_tile_above: int | None = None  # tile the VAE above this many px per side; None: 2x native


@dataclass
class ServerConfig:
    model: str = DEFAULT_MODEL
    host: str = "127.0.0.1"
    port: int = 7860  # 0: any free port (tests)
    token: str | None = field(default=None, repr=False)  # a secret: never in a log line
    device: str = "cpu"
    dtype: Any = None  # torch dtype; None: float32
    preview_every: int = 5  # steps between previews, when the client does not say; 0: none
    max_pixels: int = p.DEFAULT_MAX_PIXELS
    max_message_bytes: int = p.DEFAULT_MAX_MESSAGE_BYTES
    max_region_pixels: int | None = None  # None: 1.5x native resolution per side, squared
    extra_models: tuple[str, ...] = ()  # other models clients may ask for
    refiner: str | None = None  # an SDXL refiner for ``model`` (its split is a job option)
    max_jobs_per_client: int = 8
    handshake_timeout_s: float = p.HANDSHAKE_TIMEOUT_S
    submit_frames_timeout_s: float = p.SUBMIT_FRAMES_TIMEOUT_S  # a half-sent submit's lifetime
    # What may wait unsent for one client before its next job waits too and its messages are no
    # longer read (the job that is running still sends all its results).
    max_unread_bytes: int = 64 * 1024 * 1024
    console_progress: bool | None = False  # None: when stderr is a terminal
    # Map makers (make_map); None: server.map_makers.default_map_models picks by --model.
    depth_model: str | None = None
    segment_model: str | None = None
    map_models_idle_s: float = DEFAULT_MAP_MODELS_IDLE_S  # freed after this long unused (--map-models-idle); 0: kept
    # --lora: a local .safetensors LoRA merged into ``model`` at load (server.models.lora).
    lora: str | None = None
    lora_scale: float = 1.0
    # --- studio (issue 17): the engine running jobs, and who may connect ---
    engine: str = "inprocess"  # or "ray": workers on a Ray Serve deployment (server.ray_engine)
    ray_address: str | None = None  # None: start a local Ray instance
    replicas: int | str = "auto"  # ray: a number, or "auto" (one per GPU; one CPU replica without)
    ray_app_name: str | None = None  # ray: the Serve application; None: diffdiff-<machine>-<port>
    users: Any = None  # server.users.Users (--users FILE): per-user tokens, caps and models
    pipeline_options: PipelineOptions = field(default_factory=PipelineOptions)

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys([self.model, *self.extra_models]))


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose the GPU to the network without a token."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"Refusing to listen on {host!r} without a token: anyone on the network could use "
            f"this GPU. Pass --token-file FILE (and enter that token in the Krita plugin), or bind to "
            f"127.0.0.1.")
