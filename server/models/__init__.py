"""Loading models: which family a model is, and its differential pipeline.

:func:`family_of` is the one place that decides a model's family from its id; :func:`load_pipeline`
hands the model to that family's loader. The loaders live beside this file, one per family that
needs its own (``sd``, ``flow`` for SD3 and Flux, ``kandinsky``, ``deepfloyd_if``); every built-in
tiny model is in ``tiny``; what a model's files may be (safetensors only) is in ``files``. The
pipelines (``server.pipelines``) only run: they never load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from server.config import PipelineOptions
from server.models.deepfloyd_if import load_deepfloyd_if
from server.models.files import ModelNotFoundError, model_index_class
from server.models.flow import load_flow
from server.models.full_size import FULL_SIZE_MODELS, load_full_size
from server.models.performance import apply_options
from server.models.kandinsky import load_kandinsky22
from server.models.sd import load_sd, with_refiner
from server.models.tiny import TINY_MODELS, load_tiny
from server.pipelines.deepfloyd_if import DeepFloydIFDifferentialPipeline
from server.pipelines.flux import FluxDifferentialPipeline
from server.pipelines.kandinsky import KandinskyV22DifferentialPipeline
from server.pipelines.sd import StableDiffusionDifferentialPipeline, StableDiffusionXLDifferentialPipeline
from server.pipelines.sd3 import StableDiffusion3DifferentialPipeline

__all__ = ["FAMILIES", "FULL_SIZE_MODELS", "PIPELINE_CLASSES", "TINY_MODELS", "ModelNotFoundError",
           "family_of", "load_pipeline"]

PIPELINE_CLASSES: tuple[type, ...] = (
    StableDiffusionDifferentialPipeline,
    StableDiffusionXLDifferentialPipeline,
    StableDiffusion3DifferentialPipeline,
    FluxDifferentialPipeline,
    KandinskyV22DifferentialPipeline,
    DeepFloydIFDifferentialPipeline,
)
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(cls.family for cls in PIPELINE_CLASSES))


def family_of(model: str) -> str:
    """The family ``model`` loads as, told cheaply without loading it: a built-in id by its
    name; a local folder by its layout (``prior/`` + ``decoder/``: Kandinsky 2.2; ``stage_1/``:
    DeepFloyd IF) or its ``model_index.json`` class; a hub id or a file by its name.

    SD and SDXL are told apart here by name only (``xl``); their loader reads the files and
    decides for sure. '' for a built-in-looking id that is no model."""
    if model in FULL_SIZE_MODELS:
        return "sdxl" if model == "sdxl-size" else "sd"
    if model.startswith("tiny-"):
        family = model.removeprefix("tiny-")
        return family if family in FAMILIES else ""
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "prior").is_dir() and (path / "decoder").is_dir():
            return "kandinsky22"
        if (path / "stage_1").is_dir():
            return "if"
        declared = model_index_class(path)
        if declared.startswith("KandinskyV22"):
            return "kandinsky22"
        if declared.startswith("IF"):
            return "if"
        flow = _flow_family(declared)
        if flow:
            return flow
        if "XL" in declared:
            return "sdxl"
    elif not path.exists():  # a hub id: owner/name
        lowered = model.lower()
        if "kandinsky-2-2" in lowered:
            return "kandinsky22"
        if lowered.startswith("deepfloyd/if-i-"):
            return "if"
        if model.count("/") == 1:
            flow = _flow_family(model.split("/")[1])
            if flow:
                return flow
    return "sdxl" if "xl" in path.name.lower() else "sd"


def _flow_family(name: str) -> str:
    """"sd3" / "flux" when a pipeline class or repository name says so, else ''."""
    lowered = name.lower().replace("_", "-")
    if "stablediffusion3" in lowered or "stable-diffusion-3" in lowered or "sd3" in lowered:
        return "sd3"
    if "flux" in lowered:
        return "flux"
    return ""


def load_pipeline(
    model: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    refiner: str | None = None,
    config: str | None = None,
    options: PipelineOptions | None = None,
) -> Any:
    """A differential-diffusion pipeline for ``model``.

    ``model``: a built-in tiny id (:data:`TINY_MODELS`: random weights, offline, deterministic),
    a full-size one (:data:`FULL_SIZE_MODELS`: SD 1.5's or SDXL's architecture, random weights),
    a local diffusers folder, a local single-file ``.safetensors`` checkpoint (SD / SDXL), or a
    Hugging Face hub id (default cache). ``refiner`` (SDXL only): the same kinds of id for an
    SDXL refiner. ``config`` (single-file checkpoints): a local diffusers folder of the same
    architecture (``model_index.json`` and the components' configs; weights not needed), so
    that nothing is downloaded. By default a folder beside the checkpoint with its name
    (``x.safetensors`` -> ``x/``) is used when there is one, else the configs of the original
    repository, from the Hugging Face cache or (once) the hub. ``options``: how it runs
    (channels-last, compiled, a tiled VAE above a size, tiny-autoencoder previews).
    """
    family = family_of(model)
    if model in TINY_MODELS:
        pipe = load_tiny(model)
    elif model in FULL_SIZE_MODELS:
        pipe = load_full_size(model, device)  # built where it runs: no CPU copy of SDXL's 14 GB
    elif family == "kandinsky22":
        pipe = load_kandinsky22(model, dtype)
    elif family == "if":
        pipe = load_deepfloyd_if(model, dtype)
    elif family in ("sd3", "flux"):
        pipe = load_flow(model, family, dtype)
    else:  # SD 1.x / 2.x or SDXL: the files say which
        pipe = load_sd(model, dtype, config)
    if refiner is not None:
        pipe = with_refiner(pipe, refiner, dtype)
    return apply_options(pipe.to(device=device, dtype=dtype), options or PipelineOptions())
