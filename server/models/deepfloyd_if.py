"""Loading DeepFloyd IF: stage I, stage II (x4) and optionally stage III (the x4 upscaler)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import IFImg2ImgPipeline, IFImg2ImgSuperResolutionPipeline

from server.models.files import check_safetensors_folder
from server.pipelines.deepfloyd_if import NO_SAFETY, DeepFloydIFDifferentialPipeline


def stage_2_id(stage_1: str) -> str:
    """The hub's stage II for a stage-I id: IF-I-XL / IF-I-L go with IF-II-L, IF-I-M with IF-II-M."""
    owner, _, name = stage_1.partition("/")
    size = "M" if name.upper().startswith("IF-I-M") else "L"
    return f"{owner}/IF-II-{size}-v1.0"


def load_deepfloyd_if(model: str, dtype: torch.dtype = torch.float32, stage_2: str | None = None,
                      stage_3: str | None = None) -> DeepFloydIFDifferentialPipeline:
    """A local folder holding ``stage_1/`` (and optionally ``stage_2/``, and ``stage_3/`` for the
    x4 upscaler) diffusers folders; or a stage-I folder / hub id, with stage II from ``stage_2``
    (default: the hub's matching IF-II, cached) and stage III from ``stage_3`` (default: none).
    Safetensors only; no safety checker or watermarker."""
    path = Path(model).expanduser()
    if path.is_dir():
        check_safetensors_folder(path)  # a clear refusal of pickled weights
    source_1, source_2 = model, stage_2
    if path.is_dir() and (path / "stage_1").is_dir():
        source_1 = str(path / "stage_1")
        if source_2 is None and (path / "stage_2").is_dir():
            source_2 = str(path / "stage_2")
        if stage_3 is None and (path / "stage_3").is_dir():
            stage_3 = str(path / "stage_3")
    elif source_2 is None and not path.exists():
        source_2 = stage_2_id(model)
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True, **NO_SAFETY}
    first_pipe = IFImg2ImgPipeline.from_pretrained(source_1, **kwargs)
    parts: dict[str, Any] = {}
    if source_2 is not None:
        second_pipe = IFImg2ImgSuperResolutionPipeline.from_pretrained(
            source_2, text_encoder=None, tokenizer=None, **kwargs)
        parts = {"unet_2": second_pipe.unet, "scheduler_2": second_pipe.scheduler,
                 "image_noising_scheduler": second_pipe.image_noising_scheduler}
        if stage_3 is not None:
            from diffusers import StableDiffusionUpscalePipeline

            parts["upscaler"] = StableDiffusionUpscalePipeline.from_pretrained(
                stage_3, dtype=dtype, use_safetensors=True, safety_checker=None,
                feature_extractor=None, watermarker=None)
    return DeepFloydIFDifferentialPipeline(
        tokenizer=first_pipe.tokenizer, text_encoder=first_pipe.text_encoder,
        unet=first_pipe.unet, scheduler=first_pipe.scheduler, **parts)
