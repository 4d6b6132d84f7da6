"""Flow-matching models (SD3, Flux): the built-in tiny ones and loading real ones.

``tiny-sd3`` and ``tiny-flux`` have random weights from small configs, seeded, built offline
in memory (no file is read or downloaded): the same seed gives the same weights. Their shapes
follow the real models where it matters to the differential loop: a 16-channel latent space
with a scale factor of 8 and a shift factor, 2 x 2 patches, CLIP (+ T5 for Flux) conditioning,
flow-matching Euler schedules with SD3's static shift and Flux's resolution-dependent one.

Real SD3 / Flux models load from a local diffusers folder or a hub id (safetensors only).
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

TINY_FLOW_MODELS = ("tiny-sd3", "tiny-flux")
TINY_SEED = 0
_HIDDEN = 32  # width of every tiny text encoder


def tiny_t5_tokenizer() -> T5Tokenizer:
    """A T5 (Unigram) tokenizer over single printable characters, built in memory.

    No sentencepiece file: the vocabulary is a list of (piece, score); ``"\u2581"`` marks a word
    start, as in T5's own vocabulary. Characters outside it become ``<unk>``."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase + string.ascii_uppercase]
    pieces += [(c, -4.0) for c in string.digits + string.punctuation]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _clip_encoder(tokenizer: Any, with_projection: bool) -> Any:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=_HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=_HIDDEN,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_act="gelu",
    )
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def _t5_encoder(tokenizer: T5Tokenizer) -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(tokenizer), d_model=_HIDDEN, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config)


def _flow_vae(scaling_factor: float, shift_factor: float) -> AutoencoderKL:
    # Four blocks -> scale factor 8 and 16 latent channels, like the SD3 / Flux VAEs (which have
    # no quant convs and normalise latents with a shift and a scale).
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16), norm_num_groups=4, sample_size=64,
        scaling_factor=scaling_factor, shift_factor=shift_factor, force_upcast=False,
        use_quant_conv=False, use_post_quant_conv=False,
    )


def tiny_flow_components(model: str, seed: int = TINY_SEED) -> dict[str, Any]:
    """Random-weight components for ``tiny-sd3`` or ``tiny-flux`` (seeded, offline)."""
    if model not in TINY_FLOW_MODELS:
        raise ValueError(f"Unknown tiny flow model {model!r}; choose {' or '.join(TINY_FLOW_MODELS)}.")
    from server.models import tiny_tokenizer  # the byte-level CLIP tokenizer tiny-sd uses

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip_tokenizer = tiny_tokenizer()
        if model == "tiny-sd3":
            # Two CLIP encoders with projections (pooled 32 + 32); the T5 encoder is left out,
            # which SD3 allows (its part of the prompt embedding is zeros then).
            transformer = SD3Transformer2DModel(
                sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                attention_head_dim=8, num_attention_heads=4, joint_attention_dim=2 * _HIDDEN,
                caption_projection_dim=32, pooled_projection_dim=2 * _HIDDEN,
                pos_embed_max_size=96,
            )
            return {
                "transformer": transformer,
                "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
                "vae": _flow_vae(scaling_factor=1.5305, shift_factor=0.0609),
                "text_encoder": _clip_encoder(clip_tokenizer, with_projection=True),
                "tokenizer": clip_tokenizer,
                "text_encoder_2": _clip_encoder(clip_tokenizer, with_projection=True),
                "tokenizer_2": clip_tokenizer,
                "text_encoder_3": None,
                "tokenizer_3": None,
            }
        # Flux: CLIP pooled output + T5 sequence, packed 2 x 2 latents (16 x 4 = 64 channels per
        # token), rotary position ids, distilled guidance as an embedding (like FLUX.1-dev).
        t5_tokenizer = tiny_t5_tokenizer()
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=_HIDDEN,
            pooled_projection_dim=_HIDDEN, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
        )
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        )
        return {
            "transformer": transformer,
            "scheduler": scheduler,
            "vae": _flow_vae(scaling_factor=0.3611, shift_factor=0.1159),
            "text_encoder": _clip_encoder(clip_tokenizer, with_projection=False),
            "tokenizer": clip_tokenizer,
            "text_encoder_2": _t5_encoder(t5_tokenizer),
            "tokenizer_2": t5_tokenizer,
        }


def load_tiny_flow(model: str, seed: int = TINY_SEED) -> Any:
    """``tiny-sd3`` / ``tiny-flux`` as a differential pipeline (64 px native resolution)."""
    from server.pipelines.flux import FluxDifferentialPipeline
    from server.pipelines.sd3 import StableDiffusion3DifferentialPipeline

    components = tiny_flow_components(model, seed)
    for part in components.values():
        if isinstance(part, torch.nn.Module):
            part.eval()  # T5 has dropout; inference must not draw from the global RNG
    cls = StableDiffusion3DifferentialPipeline if model == "tiny-sd3" else FluxDifferentialPipeline
    pipe = cls(**components, native_resolution=64)
    pipe.max_sequence_length = 32  # T5 tokens (one per character here): short prompts, fast tests
    return pipe


def flow_family_of(model: str) -> str | None:
    """``"sd3"`` / ``"flux"`` when ``model`` names a flow-matching model, else None.

    Built-in ids; a local diffusers folder by its ``model_index.json`` class; a hub id
    (owner/name) by its name. Single-file checkpoints are not recognised here."""
    if model in TINY_FLOW_MODELS:
        return model.removeprefix("tiny-")
    path = Path(model).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            return None
        name = str(json.loads(index.read_text()).get("_class_name", ""))
    elif path.exists() or model.count("/") != 1:
        return None
    else:
        name = model.split("/")[1]
    lowered = name.lower().replace("_", "-")
    if "stablediffusion3" in lowered or "stable-diffusion-3" in lowered or "sd3" in lowered:
        return "sd3"
    if "flux" in lowered:
        return "flux"
    return None


def load_flow_family(model: str, dtype: torch.dtype) -> Any:
    """A differential pipeline for an SD3 / Flux model (safetensors only), or None if ``model``
    is not one (see :func:`flow_family_of`)."""
    family = flow_family_of(model)
    if family is None:
        return None
    if model in TINY_FLOW_MODELS:
        return load_tiny_flow(model)
    from diffusers import FluxImg2ImgPipeline, StableDiffusion3Img2ImgPipeline

    from server.models import ModelNotFoundError, _check_safetensors_folder
    from server.pipelines.flux import FluxDifferentialPipeline
    from server.pipelines.sd3 import StableDiffusion3DifferentialPipeline

    loader, cls = (StableDiffusion3Img2ImgPipeline, StableDiffusion3DifferentialPipeline) \
        if family == "sd3" else (FluxImg2ImgPipeline, FluxDifferentialPipeline)
    path = Path(model).expanduser()
    if path.is_dir():
        _check_safetensors_folder(path)
    try:
        loaded = loader.from_pretrained(str(path) if path.is_dir() else model,
                                        use_safetensors=True, dtype=dtype)
    except Exception as exc:
        message = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelNotFoundError(f"Could not load the {family} model {model!r}: {message}") from exc
    return cls(**{name: getattr(loaded, name) for name in cls.component_names})
