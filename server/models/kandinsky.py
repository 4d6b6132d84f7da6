"""Loading Kandinsky 2.2: an unCLIP prior and a decoder, two diffusers pipelines in one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import KandinskyV22Img2ImgPipeline, KandinskyV22PriorPipeline

from server.models.files import check_safetensors_folder
from server.pipelines.kandinsky import PRIOR_COMPONENTS, KandinskyV22DifferentialPipeline

DEFAULT_PRIOR = "kandinsky-community/kandinsky-2-2-prior"


def load_kandinsky22(model: str, dtype: torch.dtype = torch.float32,
                     prior: str | None = None) -> KandinskyV22DifferentialPipeline:
    """A local folder holding ``prior/`` and ``decoder/`` diffusers folders; or a local decoder
    folder or a hub decoder id, the prior then coming from ``prior`` (by default the hub's
    ``kandinsky-community/kandinsky-2-2-prior``, cached). Safetensors only."""
    path = Path(model).expanduser()
    if path.is_dir():
        check_safetensors_folder(path)  # a clear refusal of pickled weights
    prior_source = prior or DEFAULT_PRIOR
    decoder_source = model
    if path.is_dir() and (path / "prior").is_dir() and (path / "decoder").is_dir():
        prior_source, decoder_source = str(path / "prior"), str(path / "decoder")
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True}
    prior_pipe = KandinskyV22PriorPipeline.from_pretrained(prior_source, **kwargs)
    decoder = KandinskyV22Img2ImgPipeline.from_pretrained(decoder_source, **kwargs)
    parts = {n: getattr(prior_pipe, n) for n in PRIOR_COMPONENTS}
    parts["prior_scheduler"] = parts.pop("scheduler")
    return KandinskyV22DifferentialPipeline(
        **parts, unet=decoder.unet, scheduler=decoder.scheduler, movq=decoder.movq)
