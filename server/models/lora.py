"""``--lora``: a LoRA from a local ``.safetensors`` file, merged into the model's weights at start.

Merged once (W += scale * alpha/rank * up @ down), so a LoRA costs nothing per step and needs no
PEFT. Two key layouts are read, which between them cover the LoRAs people download (an LCM-LoRA
for Live mode's few-step sampling, style LoRAs):

- kohya / A1111: ``lora_unet_<module path with _>.lora_down.weight`` / ``.lora_up.weight`` /
  ``.alpha`` (``lora_te_``, ``lora_te1_``, ``lora_te2_`` for the text encoders);
- diffusers / PEFT: ``unet.<module.path>.lora_A.weight`` / ``.lora_B.weight`` (or
  ``.lora.down.weight`` / ``.lora.up.weight``; ``text_encoder.`` / ``text_encoder_2.``).

A key naming no module of the model is an error: a LoRA for another architecture must not load
half-way unnoticed.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("server.models.lora")

# kohya prefix / diffusers prefix -> the pipeline's component
_COMPONENTS = {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder",
               "lora_te2": "text_encoder_2", "unet": "unet", "text_encoder": "text_encoder",
               "text_encoder_2": "text_encoder_2", "transformer": "transformer"}
_DOWN_UP = (("lora_down.weight", "lora_up.weight"), ("lora_A.weight", "lora_B.weight"),
            ("lora.down.weight", "lora.up.weight"))


class LoraError(ValueError):
    """A LoRA file that cannot be merged into this model; the message says why."""


def _pairs(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{stem: {"down", "up", "alpha"?}}`` from the file's keys (stem: the key before the LoRA part)."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        for down, up in _DOWN_UP:
            for part, suffix in (("down", down), ("up", up)):
                if key.endswith("." + suffix):
                    pairs.setdefault(key[: -len(suffix) - 1], {})[part] = tensor
        if key.endswith(".alpha"):
            pairs.setdefault(key[: -len(".alpha")], {})["alpha"] = tensor
    return pairs


def _target(pipe: Any, stem: str, index: dict[str, dict[str, Any]]) -> torch.nn.Module:
    """The module a key stem names (kohya stems spell the path with underscores)."""
    match = re.match(r"(lora_unet|lora_te[12]?)_(.+)", stem)
    if match:
        prefix, path, kohya = match.group(1), match.group(2), True
    else:
        prefix, _, path = stem.partition(".")
        kohya = False
    component = _COMPONENTS.get(prefix)
    # Our pipelines list their diffusers components in ``components``; a diffusers one has them too.
    components = getattr(pipe, "components", None)
    components = components if isinstance(components, dict) else {}
    model = (components.get(component) or getattr(pipe, component, None)) if component else None
    if model is None:
        raise LoraError(f"The LoRA changes '{prefix}', which this model does not have: it was made "
                        f"for another kind of model.")
    if component not in index:
        modules = dict(model.named_modules())
        index[component] = {"dots": modules,
                            "underscores": {name.replace(".", "_"): m for name, m in modules.items()}}
    names = index[component]["underscores" if kohya else "dots"]
    # CLIP text encoders: files name ``text_model.…``; newer transformers drop that level.
    module = names.get(path) or names.get(re.sub(r"^text_model[._]", "", path))
    if module is None or not hasattr(module, "weight"):
        raise LoraError(f"The LoRA changes '{stem}', which this model does not have: it was made for "
                        f"another kind of model.")
    return module


@torch.no_grad()
def merge_lora(pipe: Any, path: str | Path, scale: float = 1.0) -> int:
    """Merge the LoRA in ``path`` into ``pipe``'s weights; returns how many layers it changed."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file() or path.suffix != ".safetensors":
        raise LoraError(f"--lora wants a local .safetensors file; {str(path)!r} is not one.")
    pairs = _pairs(load_file(str(path)))
    if not pairs:
        raise LoraError(f"{path.name} holds no LoRA weights (no lora_down/lora_up or lora_A/lora_B keys).")
    index: dict[str, dict[str, Any]] = {}
    merged = 0
    for stem, parts in sorted(pairs.items()):
        if "down" not in parts or "up" not in parts:
            raise LoraError(f"{path.name}: '{stem}' has only half of its LoRA pair.")
        module = _target(pipe, stem, index)
        weight = module.weight
        down, up = parts["down"].float(), parts["up"].float()
        rank = down.shape[0]
        alpha = float(parts["alpha"]) if "alpha" in parts else float(rank)
        delta = up.flatten(1) @ down.flatten(1)  # (out, in * kh * kw) for convs, (out, in) for linears
        if delta.numel() != weight.numel():
            raise LoraError(f"{path.name}: '{stem}' does not fit this model's layer "
                            f"({tuple(weight.shape)}): it was made for another kind of model.")
        weight += (delta.reshape(weight.shape) * (scale * alpha / rank)).to(weight.device, weight.dtype)
        merged += 1
    log.info("LoRA %s merged into %d layers (scale %g)", path.name, merged, scale)
    return merged
