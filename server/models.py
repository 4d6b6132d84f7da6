"""Model loading: built-in tiny models, hub ids, local diffusers folders, single .safetensors files.

Only safetensors weights are ever loaded (pickled ``.bin``/``.ckpt`` files can run code).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from server.pipelines.sd import (
    StableDiffusionDifferentialPipeline,
    StableDiffusionXLDifferentialPipeline,
)

TINY_MODELS = ("tiny-sd", "tiny-sdxl", "tiny-sdxl-refiner")
TINY_SEED = 0

DifferentialPipeline = StableDiffusionDifferentialPipeline | StableDiffusionXLDifferentialPipeline


class ModelNotFoundError(ValueError):
    """A model id that is neither built in, nor a local folder/file, nor loadable from the hub."""


def load_pipeline(
    model: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    refiner: str | None = None,
    config: str | None = None,
) -> DifferentialPipeline:
    """A differential-diffusion pipeline for ``model``.

    ``model``: ``tiny-sd`` / ``tiny-sdxl`` (random weights, offline, deterministic), a local
    diffusers folder, a local single-file ``.safetensors`` checkpoint, or a Hugging Face hub id
    (default cache). ``refiner`` (SDXL only): the same kinds of id for an SDXL refiner.
    ``config`` (single-file checkpoints): a local diffusers folder of the same architecture
    (``model_index.json`` and the components' configs; weights not needed), so that nothing is
    downloaded. By default a folder beside the checkpoint with its name (``x.safetensors`` ->
    ``x/``) is used when there is one, else the configs of the original repository, from the
    Hugging Face cache or (once) the hub.
    """
    pipe = _load(model, dtype, config)
    if refiner is not None:
        if pipe.family != "sdxl":
            raise ValueError(f"A refiner only works with an SDXL base model; {model!r} is SD.")
        refiner_pipe = _load_refiner(refiner, pipe, dtype)
        pipe = StableDiffusionXLDifferentialPipeline(
            **pipe.components, native_resolution=pipe.native_resolution,
            force_zeros_for_empty_prompt=pipe.helper.config.force_zeros_for_empty_prompt,
            refiner=refiner_pipe,
        )
    return pipe.to(device=device, dtype=dtype)


def _load(model: str, dtype: torch.dtype, config: str | None = None) -> DifferentialPipeline:
    other = _load_cascade_family(model, dtype)
    if other is not None:
        return other
    from server.tiny_flow import load_flow_family  # SD3 and Flux (flow matching)

    flow = load_flow_family(model, dtype)
    if flow is not None:
        return flow
    if model in ("tiny-sd", "tiny-sdxl"):
        components = tiny_components(model)
        cls = StableDiffusionDifferentialPipeline if model == "tiny-sd" else \
            StableDiffusionXLDifferentialPipeline
        return cls(**components)
    if model == "tiny-sdxl-refiner":
        raise ValueError("'tiny-sdxl-refiner' is a refiner: use load_pipeline('tiny-sdxl', "
                         "refiner='tiny-sdxl-refiner').")
    diffusers_pipe = _load_diffusers(model, dtype, refiner=False, config=config)
    if diffusers_pipe.unet.config.in_channels != 4:  # inpainting (9) or depth (5) variants
        raise ModelNotFoundError(
            f"{model!r} has a {diffusers_pipe.unet.config.in_channels}-channel UNet (an inpainting "
            "or depth model); differential diffusion needs the plain text-to-image model.")
    if isinstance(diffusers_pipe, StableDiffusionXLPipeline | StableDiffusionXLImg2ImgPipeline):
        if diffusers_pipe.text_encoder is None:
            raise ValueError(f"{model!r} is an SDXL refiner; load it with refiner=, next to an "
                             "SDXL base model.")
        return StableDiffusionXLDifferentialPipeline(
            **{n: getattr(diffusers_pipe, n)
               for n in StableDiffusionXLDifferentialPipeline.component_names},
            force_zeros_for_empty_prompt=diffusers_pipe.config.force_zeros_for_empty_prompt,
        )
    return StableDiffusionDifferentialPipeline(
        **{n: getattr(diffusers_pipe, n) for n in StableDiffusionDifferentialPipeline.component_names}
    )


def _load_cascade_family(model: str, dtype: torch.dtype) -> Any:
    """Kandinsky 2.2 (prior + decoder) and DeepFloyd IF (stages): their own loaders, or None."""
    from server.pipelines.deepfloyd_if import is_deepfloyd_if, load_deepfloyd_if
    from server.pipelines.kandinsky import is_kandinsky22, load_kandinsky22

    if is_kandinsky22(model):
        return load_kandinsky22(model, dtype)
    if is_deepfloyd_if(model):
        return load_deepfloyd_if(model, dtype)
    return None


def _load_refiner(refiner: str, base: DifferentialPipeline,
                  dtype: torch.dtype) -> StableDiffusionXLImg2ImgPipeline:
    if refiner == "tiny-sdxl-refiner":
        parts = tiny_components(refiner)
        return StableDiffusionXLImg2ImgPipeline(
            vae=base.vae, text_encoder=None, tokenizer=None, text_encoder_2=parts["text_encoder_2"],
            tokenizer_2=parts["tokenizer_2"], unet=parts["unet"], scheduler=base.scheduler,
            requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
            add_watermarker=False,
        )
    loaded = _load_diffusers(refiner, dtype, refiner=True)
    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae, text_encoder=None, tokenizer=None, text_encoder_2=loaded.text_encoder_2,
        tokenizer_2=loaded.tokenizer_2, unet=loaded.unet, scheduler=base.scheduler,
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False, add_watermarker=False,
    )


# -- real models ---------------------------------------------------------------------------------
def _load_diffusers(model: str, dtype: torch.dtype, refiner: bool, config: str | None = None) -> Any:
    path = Path(model).expanduser()
    kwargs: dict[str, Any] = {"dtype": dtype}
    if path.is_dir():
        _check_safetensors_folder(path)
        cls = _folder_pipeline_class(path, refiner)
        sd_kwargs = {} if cls is not StableDiffusionPipeline else {
            "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
        try:
            return cls.from_pretrained(str(path), use_safetensors=True, **sd_kwargs, **kwargs)
        except Exception as exc:
            raise ModelNotFoundError(
                f"Could not load the diffusers folder {path}: {_one_line(exc)}") from exc
    if path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise ModelNotFoundError(
                f"Refusing {path.name}: only .safetensors checkpoints are loaded (pickled "
                f"{path.suffix} files can run code). Convert it to .safetensors first.")
        return _load_single_file(path, dtype, refiner, config)
    tried = (f"Model {model!r} not found. Tried: the built-in ids ({', '.join(_builtin_ids())}); "
             f"a local folder or .safetensors file at {path.resolve()} (nothing there)")
    looks_like_path = model.startswith((".", "/", "~")) or model.endswith(".safetensors") \
        or model.count("/") > 1
    if looks_like_path or "/" not in model:
        raise ModelNotFoundError(f"{tried}; it is not a Hugging Face hub id (owner/name) either.")
    try:
        cls = _hub_pipeline_class(model, refiner)
        sd_kwargs = {} if cls is not StableDiffusionPipeline else {
            "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
        return cls.from_pretrained(model, use_safetensors=True, **sd_kwargs, **kwargs)
    except ModelNotFoundError:
        raise
    except Exception as exc:
        raise ModelNotFoundError(
            f"{tried}; the Hugging Face hub id {model!r}: "
            f"{_hub_failure(exc) or _one_line(exc)}.") from exc


def _load_single_file(path: Path, dtype: torch.dtype, refiner: bool, config: str | None) -> Any:
    """A single-file checkpoint holds the weights but not the architecture: diffusers builds the
    pipeline from a diffusers config folder. Given ``config`` (a local folder), nothing is
    downloaded; otherwise diffusers picks the original repository from the checkpoint's keys and
    reads its configs from the Hugging Face cache, downloading them (a few kB) if missing."""
    kwargs: dict[str, Any] = {"dtype": dtype}
    beside = path.with_suffix("")
    if config is None and (beside / "model_index.json").is_file():
        config = str(beside)
    config_dir = Path(config).expanduser() if config is not None else None
    if config is not None and not config_dir.is_dir() and (
            config.startswith((".", "/", "~")) or config.count("/") != 1):
        raise ModelNotFoundError(f"The config folder {config_dir} for {path.name} does not exist "
                                 "(a diffusers folder with model_index.json is expected).")
    if config_dir is not None and config_dir.is_dir():
        cls = _folder_pipeline_class(config_dir, refiner)  # the folder says which family
        kwargs.update(config=str(config_dir), local_files_only=True)
    else:
        cls = StableDiffusionXLImg2ImgPipeline if refiner else (
            StableDiffusionXLPipeline if _single_file_is_sdxl(path) else StableDiffusionPipeline)
        if config is not None:  # a hub id whose configs are cached
            kwargs.update(config=config, local_files_only=True)
    if cls is StableDiffusionPipeline:
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    try:
        return cls.from_single_file(str(path), **kwargs)
    except Exception as exc:
        hint = "" if config_dir is not None and config_dir.is_dir() else (
            " To load it offline, pass the model's diffusers config folder (config=..., a local "
            "folder with model_index.json and the components' configs; weights not needed).")
        why = _hub_failure(exc)
        why = f"the configs it needs are {why}" if why else _one_line(exc)
        raise ModelNotFoundError(f"Could not load the checkpoint {path}: {why}.{hint}") from exc


def _builtin_ids() -> list[str]:
    # Imported here: the other families' modules import this one.
    from server.tiny_flow import TINY_FLOW_MODELS
    from server.tiny_pixel import TINY_PIXEL_MODELS

    return [*TINY_MODELS[:2], *TINY_FLOW_MODELS, *TINY_PIXEL_MODELS]


def _hub_failure(exc: BaseException) -> str | None:
    """Why the hub could not give a model, in a few words a painter can act on (None: not the
    hub's doing). The outermost error that says something wins (the others are its context)."""
    from huggingface_hub import constants

    offline = "not in the local cache, and offline mode (HF_HUB_OFFLINE) is on"
    cause: BaseException | None = exc
    for _ in range(10):
        if cause is None:
            break
        names = {c.__name__ for c in type(cause).__mro__}
        if "OfflineModeIsEnabled" in names:
            return offline
        if "GatedRepoError" in names:
            return "a gated model: accept its licence on huggingface.co and log in (hf auth login)"
        if "RepositoryNotFoundError" in names:
            return "no such repository on the hub (or it is private: log in with hf auth login)"
        if "LocalEntryNotFoundError" in names or names & {"ConnectionError", "ConnectError",
                                                          "TimeoutException", "gaierror"}:
            return offline if constants.HF_HUB_OFFLINE else \
                "not in the local cache, and the hub could not be reached"
        if "EntryNotFoundError" in names:
            return "the repository has no .safetensors weights (only those are loaded)"
        cause = cause.__cause__ or cause.__context__
    return None


def _check_safetensors_folder(path: Path) -> None:
    # Per component: a folder whose weights are all pickled would make diffusers fall back to
    # torch.load (or fail deep inside); refuse it here, before anything is read.
    pickled = [p for p in path.rglob("*") if p.suffix in (".bin", ".ckpt", ".pt", ".pth")]
    unsafe = sorted({p.parent for p in pickled if not any(q.suffix == ".safetensors"
                                                          for q in p.parent.iterdir())})
    if unsafe:
        where = ", ".join(str(d.relative_to(path)) if d != path else "." for d in unsafe)
        example = next(p for p in pickled if p.parent == unsafe[0]).name
        raise ModelNotFoundError(
            f"Refusing {path}: only pickled weights ({example}) in {where}; this server loads "
            ".safetensors only (pickles can run code). Re-save the model with "
            "save_pretrained(..., safe_serialization=True).")


def _folder_pipeline_class(path: Path, refiner: bool) -> type:
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelNotFoundError(f"{path} is not a diffusers model folder (no model_index.json).")
    return _index_pipeline_class(index, refiner, str(path))


def _hub_pipeline_class(model: str, refiner: bool) -> type:
    """The class a hub repository declares (its model_index.json: from the cache, or a few
    hundred bytes from the hub); a name like "...-XL" is not proof of anything."""
    from huggingface_hub import hf_hub_download, model_info

    try:
        index = hf_hub_download(model, "model_index.json", local_files_only=True)
    except Exception:  # not cached: one quick question first (the download retries for ~20 s)
        model_info(model)
        try:
            index = hf_hub_download(model, "model_index.json")
        except Exception as exc:
            names = {c.__name__ for c in type(exc).__mro__}
            if "EntryNotFoundError" in names and "LocalEntryNotFoundError" not in names:
                raise ModelNotFoundError(
                    f"{model} on the hub has no model_index.json, so it is not a diffusers model; "
                    "for a single-file checkpoint, download its .safetensors file and give its "
                    "path.") from exc
            raise
    return _index_pipeline_class(Path(index), refiner, model)


def _index_pipeline_class(index: Path, refiner: bool, where: str) -> type:
    class_name = str(json.loads(index.read_text()).get("_class_name", ""))
    if "XL" in class_name or refiner:
        return StableDiffusionXLImg2ImgPipeline
    if class_name.startswith("StableDiffusion"):
        return StableDiffusionPipeline
    raise ModelNotFoundError(
        f"{where} is a {class_name or 'model without a pipeline class'}; this loader runs Stable "
        "Diffusion 1.x/2.x and SDXL diffusers models.")


def _single_file_is_sdxl(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return any(key.startswith("conditioner.embedders.1") for key in f.keys())


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else text or type(exc).__name__


# -- built-in tiny models ------------------------------------------------------------------------
def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer with a byte-level vocabulary and no merges (every character is a token).

    Written here so tests never download; it behaves like CLIP's (lower-casing, ``</w>`` word
    ends, start/end tokens, padding to ``model_max_length=77``)."""
    chars = _byte_level_alphabet()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2 / CLIP scheme)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _tiny_text_encoder(tokenizer: CLIPTokenizer, with_projection: bool = False) -> Any:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_act="gelu",
    )
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def _tiny_vae() -> AutoencoderKL:
    # Four blocks -> scale factor 8, like the real SD/SDXL VAEs; 4 latent channels.
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16), norm_num_groups=4, sample_size=64,
        scaling_factor=0.18215, force_upcast=False,
    )


_SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "steps_offset": 1, "num_train_timesteps": 1000}


def tiny_components(model: str, seed: int = TINY_SEED) -> dict[str, Any]:
    """Random-weight components for a built-in tiny model; the same seed gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = tiny_tokenizer()
        if model == "tiny-sd":
            unet = UNet2DConditionModel(
                sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32,
                attention_head_dim=(2, 4),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            )
            scheduler = DDIMScheduler(**_SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False)
            return _eval({"vae": _tiny_vae(), "text_encoder": _tiny_text_encoder(tokenizer),
                          "tokenizer": tokenizer, "unet": unet, "scheduler": scheduler})
        # SDXL: two text encoders (penultimate hidden states concatenated, 32 + 32), pooled
        # projection and size/crop time ids as added conditioning.
        refiner = model == "tiny-sdxl-refiner"
        time_ids = 5 if refiner else 6  # the refiner conditions on an aesthetic score instead
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), norm_num_groups=8, attention_head_dim=(2, 4),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32 if refiner else 64, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * time_ids + 32,
            transformer_layers_per_block=1,
        )
        parts: dict[str, Any] = {"unet": unet,
                                 "text_encoder_2": _tiny_text_encoder(tokenizer, True),
                                 "tokenizer_2": tokenizer}
        if refiner:
            return _eval(parts)
        parts.update(
            vae=_tiny_vae(), text_encoder=_tiny_text_encoder(tokenizer), tokenizer=tokenizer,
            scheduler=EulerDiscreteScheduler(**_SD_SCHEDULE, timestep_spacing="leading"),
        )
        return _eval(parts)


def _eval(parts: dict[str, Any]) -> dict[str, Any]:
    # Inference mode, as from_pretrained leaves models: a tiny model saved and reloaded then runs
    # the same kernels and gives the same images.
    for part in parts.values():
        if isinstance(part, torch.nn.Module):
            part.eval()
    return parts
