"""Loading the flow-matching families, Stable Diffusion 3 / 3.5 and Flux (FLUX.1 and
fine-tunes), from a local diffusers folder or a hub id (safetensors only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from server.models.files import ModelNotFoundError, check_safetensors_folder, one_line
from server.pipelines.flux import FluxDifferentialPipeline
from server.pipelines.sd3 import StableDiffusion3DifferentialPipeline


def load_flow(model: str, family: str, dtype: torch.dtype) -> Any:
    """An SD3 (``family="sd3"``) or Flux (``"flux"``) differential pipeline for ``model``."""
    from diffusers import FluxImg2ImgPipeline, StableDiffusion3Img2ImgPipeline

    loader, cls = (StableDiffusion3Img2ImgPipeline, StableDiffusion3DifferentialPipeline) \
        if family == "sd3" else (FluxImg2ImgPipeline, FluxDifferentialPipeline)
    path = Path(model).expanduser()
    if path.is_dir():
        check_safetensors_folder(path)
    try:
        loaded = loader.from_pretrained(str(path) if path.is_dir() else model,
                                        use_safetensors=True, dtype=dtype)
    except Exception as exc:
        raise ModelNotFoundError(
            f"Could not load the {family} model {model!r}: {one_line(exc)}") from exc
    return cls(**{name: getattr(loaded, name) for name in cls.component_names})
