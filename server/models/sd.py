"""Loading Stable Diffusion 1.x / 2.x and SDXL (with an optional SDXL refiner).

From a local diffusers folder, a single-file ``.safetensors`` checkpoint or a hub id. Which of
SD and SDXL a model is comes from its files (``model_index.json``'s class, or the checkpoint's
keys), not from its name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)

from server.models.files import (
    ModelNotFoundError,
    check_safetensors_folder,
    hub_failure,
    one_line,
)
from server.models.full_size import FULL_SIZE_MODELS
from server.models.tiny import TINY_MODELS, TINY_REFINER, tiny_components
from server.pipelines.sd import (
    StableDiffusionDifferentialPipeline,
    StableDiffusionXLDifferentialPipeline,
)

NO_SAFETY_CHECKER = {"safety_checker": None, "feature_extractor": None,
                     "requires_safety_checker": False}


def load_sd(model: str, dtype: torch.dtype,
            config: str | None = None) -> StableDiffusionDifferentialPipeline:
    """An SD or SDXL differential pipeline for a folder, a checkpoint or a hub id."""
    if model == TINY_REFINER:
        raise ValueError(f"{TINY_REFINER!r} is a refiner: use load_pipeline('tiny-sdxl', "
                         f"refiner={TINY_REFINER!r}).")
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


def with_refiner(base: Any, refiner: str, dtype: torch.dtype) -> StableDiffusionXLDifferentialPipeline:
    """The SDXL ``base`` pipeline with ``refiner`` (an id of the same kinds) taking over the
    low-noise end of the schedule; the refiner shares the base's VAE and scheduler."""
    if base.family != "sdxl":
        raise ValueError(f"A refiner only works with an SDXL base model; this is {base.family}.")
    if refiner == TINY_REFINER:
        parts = tiny_components(refiner)
        unet, text_encoder_2, tokenizer_2 = parts["unet"], parts["text_encoder_2"], \
            parts["tokenizer_2"]
    else:
        loaded = _load_diffusers(refiner, dtype, refiner=True)
        unet, text_encoder_2, tokenizer_2 = loaded.unet, loaded.text_encoder_2, loaded.tokenizer_2
    refiner_pipe = StableDiffusionXLImg2ImgPipeline(
        vae=base.vae, text_encoder=None, tokenizer=None, text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=base.scheduler,
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False, add_watermarker=False,
    )
    return StableDiffusionXLDifferentialPipeline(
        **base.components, native_resolution=base.native_resolution,
        force_zeros_for_empty_prompt=base.helper.config.force_zeros_for_empty_prompt,
        refiner=refiner_pipe,
    )


def _load_diffusers(model: str, dtype: torch.dtype, refiner: bool, config: str | None = None) -> Any:
    path = Path(model).expanduser()
    kwargs: dict[str, Any] = {"dtype": dtype}
    if path.is_dir():
        check_safetensors_folder(path)
        cls = _folder_pipeline_class(path, refiner)
        extra = NO_SAFETY_CHECKER if cls is StableDiffusionPipeline else {}
        try:
            return cls.from_pretrained(str(path), use_safetensors=True, **extra, **kwargs)
        except Exception as exc:
            raise ModelNotFoundError(
                f"Could not load the diffusers folder {path}: {one_line(exc)}") from exc
    if path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise ModelNotFoundError(
                f"Refusing {path.name}: only .safetensors checkpoints are loaded (pickled "
                f"{path.suffix} files can run code). Convert it to .safetensors first.")
        return _load_single_file(path, dtype, refiner, config)
    tried = (f"Model {model!r} not found. Tried: the built-in ids ({', '.join(TINY_MODELS + FULL_SIZE_MODELS)}); "
             f"a local folder or .safetensors file at {path.resolve()} (nothing there)")
    looks_like_path = model.startswith((".", "/", "~")) or model.endswith(".safetensors") \
        or model.count("/") > 1
    if looks_like_path or "/" not in model:
        raise ModelNotFoundError(f"{tried}; it is not a Hugging Face hub id (owner/name) either.")
    try:
        cls = _hub_pipeline_class(model, refiner)
        extra = NO_SAFETY_CHECKER if cls is StableDiffusionPipeline else {}
        return cls.from_pretrained(model, use_safetensors=True, **extra, **kwargs)
    except ModelNotFoundError:
        raise
    except Exception as exc:
        raise ModelNotFoundError(
            f"{tried}; the Hugging Face hub id {model!r}: "
            f"{hub_failure(exc) or one_line(exc)}.") from exc


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
        kwargs.update(NO_SAFETY_CHECKER)
    try:
        return cls.from_single_file(str(path), **kwargs)
    except Exception as exc:
        hint = "" if config_dir is not None and config_dir.is_dir() else (
            " To load it offline, pass the model's diffusers config folder (config=..., a local "
            "folder with model_index.json and the components' configs; weights not needed).")
        why = hub_failure(exc)
        why = f"the configs it needs are {why}" if why else one_line(exc)
        raise ModelNotFoundError(f"Could not load the checkpoint {path}: {why}.{hint}") from exc


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
