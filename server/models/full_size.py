"""Full-size built-in models: SD 1.5's and SDXL's real architectures with random weights.

``sd15-size`` and ``sdxl-size`` build every component from the published configs kept in
``configs/`` (the ``config.json`` files of ``stable-diffusion-v1-5`` and
``stable-diffusion-xl-base-1.0``), so they cost what the real models cost in time and memory
while needing no download. Their pictures are noise: they are for benchmarks and memory checks.

The one stand-in is the tokenizer: the real CLIP vocabulary is a download, so the tiny models'
byte-level tokenizer is used. It pads to the same 77 tokens, so the text encoders (real size,
real vocabulary size) do the same work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from server.models.tiny import TINY_SEED, tiny_tokenizer
from server.pipelines.sd import StableDiffusionDifferentialPipeline, StableDiffusionXLDifferentialPipeline

FULL_SIZE_MODELS = ("sd15-size", "sdxl-size")
CONFIGS = Path(__file__).resolve().parent / "configs"
_FOLDERS = {"sd15-size": "sd15", "sdxl-size": "sdxl"}


def read_config(model: str, component: str) -> dict[str, Any]:
    """One component's published config (``unet``, ``vae``, ``text_encoder``, ...), without the
    keys that only say which class it is."""
    config = json.loads((CONFIGS / _FOLDERS[model] / f"{component}.json").read_text())
    return {k: v for k, v in config.items() if k not in ("_class_name", "architectures")}


def full_size_components(model: str, device: str | torch.device = "cpu",
                         seed: int = TINY_SEED) -> dict[str, Any]:
    """The components of ``sd15-size`` or ``sdxl-size``, built directly on ``device`` (float32).

    ``device="meta"`` builds the shapes only (no memory, no time): enough to count parameters.
    """
    if model not in FULL_SIZE_MODELS:
        raise ValueError(f"Unknown full-size model {model!r}; choose one of {', '.join(FULL_SIZE_MODELS)}.")
    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        parts: dict[str, Any] = {
            "unet": UNet2DConditionModel(**read_config(model, "unet")),
            "vae": AutoencoderKL(**read_config(model, "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**read_config(model, "text_encoder"))),
            "tokenizer": tokenizer,
        }
        if model == "sdxl-size":
            parts["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig(**read_config(model, "text_encoder_2")))
            parts["tokenizer_2"] = tokenizer
    scheduler_cls = PNDMScheduler if model == "sd15-size" else EulerDiscreteScheduler
    parts["scheduler"] = scheduler_cls.from_config(read_config(model, "scheduler"))
    for part in parts.values():
        if isinstance(part, torch.nn.Module):
            part.eval()  # inference mode, as from_pretrained leaves models
    return parts


def load_full_size(model: str, device: str | torch.device = "cpu", seed: int = TINY_SEED) -> Any:
    """``sd15-size`` or ``sdxl-size`` as a differential pipeline, its weights made on ``device``
    (random initialisation runs there: seconds on a GPU, ~15 s for SD 1.5 on a CPU core)."""
    parts = full_size_components(model, device, seed)
    if model == "sd15-size":
        return StableDiffusionDifferentialPipeline(**parts)
    return StableDiffusionXLDifferentialPipeline(**parts)


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
