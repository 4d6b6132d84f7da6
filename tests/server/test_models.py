"""Model loading: built-in tiny models, diffusers folders, single-file checkpoints, refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from server.models import ModelNotFoundError, load_pipeline
from server.models.tiny import tiny_components, tiny_tokenizer
from server.pipelines.sd import StableDiffusionDifferentialPipeline, StableDiffusionXLDifferentialPipeline
from server.schedulers import SCHEDULER_NAMES, make_scheduler
from tests.conftest import make_test_image

PROMPT = "a red boat on a lake"


def edit(pipe, seed: int = 0, strength: float = 0.6, **kwargs) -> np.ndarray:
    """A small, fast run with a gradient map (so both the loop and the blend matter)."""
    change_map = np.tile(np.linspace(0.0, strength, 64, dtype=np.float32), (64, 1))
    kwargs.setdefault("num_inference_steps", 5)
    return pipe(prompt=PROMPT, negative_prompt="blurry", image=make_test_image(), change_map=change_map,
                generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return module.state_dict()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = state(a), state(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def save_sd_folder(components: dict, folder: Path, **kwargs) -> Path:
    StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder, **kwargs)
    return folder


# -- built-in tiny models ------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_tiny_models_are_the_same_every_time(model):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first, second = load_pipeline(model), load_pipeline(model)
    assert torch.equal(torch.rand(3), expected_next)  # building them leaves the global RNG alone
    for name, part in first.components.items():
        if isinstance(part, torch.nn.Module):
            assert same_weights(part, second.components[name]), name
            assert not part.training, name  # inference mode, like from_pretrained
    np.testing.assert_array_equal(edit(first), edit(second))
    other_seed = tiny_components(model, seed=1)["unet"]
    assert not same_weights(first.unet, other_seed)


def test_tiny_tokenizer_is_local_and_clip_like():
    tokenizer = tiny_tokenizer()
    assert tokenizer.model_max_length == 77
    ids = tokenizer("A Red Boat", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77
    assert ids[0] == tokenizer.bos_token_id and ids[ids.index(tokenizer.eos_token_id) - 1] != 0
    assert tokenizer("a red boat").input_ids == tokenizer("A RED BOAT").input_ids  # lower-cased
    assert tokenizer("a red boat").input_ids != tokenizer("a red cat").input_ids


def test_tiny_refiner_is_only_a_refiner():
    with pytest.raises(ValueError, match="refiner='tiny-sdxl-refiner'"):
        load_pipeline("tiny-sdxl-refiner")
    with pytest.raises(ValueError, match="SDXL base"):
        load_pipeline("tiny-sd", refiner="tiny-sdxl-refiner")


# -- local diffusers folders ------------------------------------------------------------------------
def test_sd_folder_saved_with_safetensors_loads_and_gives_the_same_images(tiny_sd, tmp_path):
    folder = save_sd_folder(tiny_components("tiny-sd"), tmp_path / "sd", safe_serialization=True)
    assert not list(folder.rglob("*.bin"))
    loaded = load_pipeline(str(folder))
    assert isinstance(loaded, StableDiffusionDifferentialPipeline)
    for name in ("unet", "vae", "text_encoder"):
        assert same_weights(loaded.components[name], tiny_sd.components[name]), name
    np.testing.assert_array_equal(edit(loaded), edit(tiny_sd))


def test_folders_and_single_files_load_in_the_requested_dtype(single_file, tmp_path):
    # bfloat16 runs on the CPU; the server asks for float16 on GPUs the same way.
    checkpoint, config, components = single_file
    folder = save_sd_folder(components, tmp_path / "sd", safe_serialization=True)
    for loaded in (load_pipeline(str(folder), dtype=torch.bfloat16),
                   load_pipeline(str(checkpoint), config=str(config), dtype=torch.bfloat16)):
        for name in ("unet", "vae", "text_encoder"):
            assert {p.dtype for p in loaded.components[name].parameters()} == {torch.bfloat16}, name


def test_sdxl_base_and_refiner_folders_load_and_give_the_same_images(tiny_sdxl_refined, tmp_path):
    base = tiny_components("tiny-sdxl")
    StableDiffusionXLPipeline(**base).save_pretrained(tmp_path / "base", safe_serialization=True)
    parts = tiny_components("tiny-sdxl-refiner")
    StableDiffusionXLImg2ImgPipeline(
        vae=base["vae"], text_encoder=None, tokenizer=None, text_encoder_2=parts["text_encoder_2"],
        tokenizer_2=parts["tokenizer_2"], unet=parts["unet"], scheduler=base["scheduler"],
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
    ).save_pretrained(tmp_path / "refiner", safe_serialization=True)
    loaded = load_pipeline(str(tmp_path / "base"), refiner=str(tmp_path / "refiner"))
    assert isinstance(loaded, StableDiffusionXLDifferentialPipeline) and loaded.refiner is not None
    np.testing.assert_array_equal(edit(loaded, refiner_split=0.7, scheduler="Euler"),
                                  edit(tiny_sdxl_refined, refiner_split=0.7, scheduler="Euler"))
    with pytest.raises(ValueError, match="refiner"):
        load_pipeline(str(tmp_path / "refiner"))  # a refiner alone is not a base model


def test_folder_with_only_pickled_weights_is_refused_before_reading(tmp_path, monkeypatch):
    folder = save_sd_folder(tiny_components("tiny-sd"), tmp_path / "pickled")
    for weights in folder.rglob("*.safetensors"):  # every component as a pickle
        torch.save(load_file(weights), weights.with_suffix(".bin"))
        weights.unlink()

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called on a refused model")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(ModelNotFoundError) as caught:
        load_pipeline(str(folder))
    message = str(caught.value)
    assert "\n" not in message
    assert "Refusing" in message and ".safetensors only" in message and "safe_serialization=True" in message
    assert all(name in message for name in ("text_encoder", "unet", "vae"))


def test_folder_with_some_pickled_components_is_refused(tmp_path):
    # transformers always writes safetensors; diffusers models can still be pickled.
    folder = save_sd_folder(tiny_components("tiny-sd"), tmp_path / "mixed", safe_serialization=False)
    assert list(folder.glob("text_encoder/*.safetensors")) and list(folder.glob("unet/*.bin"))
    with pytest.raises(ModelNotFoundError, match=r"only pickled weights \(diffusion_pytorch_model.bin\) in "
                                                 r"unet, vae; this server loads .safetensors only"):
        load_pipeline(str(folder))


def test_pickled_single_file_is_refused(tmp_path):
    checkpoint = tmp_path / "model.ckpt"
    torch.save({"x": torch.zeros(1)}, checkpoint)
    with pytest.raises(ModelNotFoundError, match=r"only .safetensors checkpoints.*\.ckpt"):
        load_pipeline(str(checkpoint))


def test_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model_index.json"):
        load_pipeline(str(tmp_path))


# -- single-file checkpoints ------------------------------------------------------------------------
# The original (LDM / A1111) layout of an SD 1.x checkpoint, written here from diffusers components
# so the test needs no download. diffusers' own single-file conversion reads it back.
_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
               "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
_VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                  ("to_out.0", "proj_out"))


def _resnet(rest: str) -> str:
    for new, old in _RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def _ldm_unet_key(key: str, per_block: int, up_with_attention: list[bool]) -> str:
    for new, old in _UNET_FIXED.items():
        if key.startswith(new + "."):
            return old + key[len(new):]
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        kind, block, part, layer, rest = m.groups()
        down = kind == "down"
        index = int(block) * (per_block + 1) + int(layer) + down
        prefix = f"{'input' if down else 'output'}_blocks.{index}"
        return f"{prefix}.0.{_resnet(rest)}" if part == "resnets" else f"{prefix}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * (per_block + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        block = int(m[1])
        slot = 2 if up_with_attention[block] else 1
        return f"output_blocks.{block * (per_block + 1) + per_block}.{slot}.conv.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    raise KeyError(key)


def _ldm_vae_key(key: str, up_blocks: int) -> str:
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(.*)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(.*)", key):
        return f"decoder.up.{up_blocks - 1 - int(m[1])}.block.{m[2]}"  # LDM counts up blocks upward
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
        return f"decoder.up.{up_blocks - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
        rest = m[2]
        for new, old in _VAE_ATTENTION:
            if rest.startswith(new + "."):
                rest = old + rest[len(new):]
        return f"{m[1]}.mid.attn_1.{rest}"
    return key


def _open_clip(text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """SDXL's second text encoder in OpenCLIP's layout (fused q/k/v, transposed projection)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in text_encoder.state_dict().items():
        key = key.removeprefix("text_model.")
        if key.endswith("position_ids"):
            continue
        if m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            fused.setdefault(f"transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}", {})[m[2]] = value
            continue
        renamed = {"embeddings.position_embedding.weight": "positional_embedding",
                   "embeddings.token_embedding.weight": "token_embedding.weight",
                   "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias",
                   "text_projection.weight": "text_projection"}.get(key)
        if renamed == "text_projection":
            value = value.T
        if renamed is None:
            renamed = ("transformer." + key.replace("encoder.layers.", "resblocks.")
                       .replace("layer_norm1", "ln_1").replace("layer_norm2", "ln_2")
                       .replace(".fc1.", ".c_fc.").replace(".fc2.", ".c_proj.").replace(".self_attn", ".attn"))
        out[renamed] = value
    for key, parts in fused.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def ldm_checkpoint(components: dict) -> dict[str, torch.Tensor]:
    """SD 1.x (one text encoder) or SDXL (two) components as one original-layout state dict."""
    unet, vae, text_encoder = components["unet"], components["vae"], components["text_encoder"]
    per_block = unet.config.layers_per_block
    up_with_attention = [getattr(block, "attentions", None) is not None for block in unet.up_blocks]
    out = {f"model.diffusion_model.{_ldm_unet_key(k, per_block, up_with_attention)}": v
           for k, v in unet.state_dict().items()}
    for key, value in vae.state_dict().items():
        new = _ldm_vae_key(key, len(vae.config.up_block_types))
        if ".mid.attn_1." in new and value.ndim == 2:
            value = value[:, :, None, None]  # 1x1 convolutions in the original layout
        out[f"first_stage_model.{new}"] = value
    clip_prefix = "conditioner.embedders.0" if "text_encoder_2" in components else "cond_stage_model"
    for key, value in text_encoder.state_dict().items():
        if not key.endswith("position_ids"):
            out[f"{clip_prefix}.transformer.text_model.{key.removeprefix('text_model.')}"] = value
    if "text_encoder_2" in components:
        for key, value in _open_clip(components["text_encoder_2"]).items():
            out[f"conditioner.embedders.1.model.{key}"] = value
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


@pytest.fixture
def single_file(tmp_path) -> tuple[Path, Path, dict]:
    """tiny-sd as one .safetensors file, plus a diffusers config folder with no weights in it."""
    components = tiny_components("tiny-sd")
    checkpoint = tmp_path / "tiny-sd.safetensors"
    save_file(ldm_checkpoint(components), str(checkpoint))
    config = save_sd_folder(components, tmp_path / "config", safe_serialization=True)
    for weights in config.rglob("*.safetensors"):
        weights.unlink()
    return checkpoint, config, components


def test_single_file_checkpoint_loads_offline_with_a_config_folder(single_file, tiny_sd):
    checkpoint, config, _ = single_file
    loaded = load_pipeline(str(checkpoint), config=str(config))
    assert isinstance(loaded, StableDiffusionDifferentialPipeline)
    for name in ("unet", "vae", "text_encoder"):
        assert same_weights(loaded.components[name], tiny_sd.components[name]), name
    np.testing.assert_array_equal(edit(loaded), edit(tiny_sd))


def sdxl_with_distinct_text_encoders() -> dict:
    """tiny-sdxl with a wider second text encoder (48 instead of 32): in a single file diffusers
    tells SDXL's two encoders apart by their width (768 and 1280 in the real model)."""
    parts = tiny_components("tiny-sdxl")
    tokenizer = parts["tokenizer_2"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, projection_dim=48, hidden_act="gelu",
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)).eval()
        parts["unet"] = UNet2DConditionModel.from_config(
            {**parts["unet"].config, "cross_attention_dim": 32 + 48,
             "projection_class_embeddings_input_dim": 6 * 8 + 48}).eval()
    return parts


def test_sdxl_single_file_checkpoint_loads_offline_with_a_config_folder(tmp_path):
    components = sdxl_with_distinct_text_encoders()
    checkpoint = tmp_path / "tiny-sdxl.safetensors"
    save_file(ldm_checkpoint(components), str(checkpoint))
    original = StableDiffusionXLPipeline(**components)
    original.save_pretrained(tmp_path / "config", safe_serialization=True)
    for weights in (tmp_path / "config").rglob("*.safetensors"):
        weights.unlink()
    loaded = load_pipeline(str(checkpoint), config=str(tmp_path / "config"))
    assert isinstance(loaded, StableDiffusionXLDifferentialPipeline)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert same_weights(loaded.components[name], components[name]), name
    reference = StableDiffusionXLDifferentialPipeline(
        **{n: components[n] for n in StableDiffusionXLDifferentialPipeline.component_names})
    np.testing.assert_array_equal(edit(loaded), edit(reference))


def test_single_file_with_a_missing_config_folder_says_so(single_file, tmp_path):
    checkpoint, _, _ = single_file
    with pytest.raises(ModelNotFoundError, match=r"config folder .*nowhere for tiny-sd.safetensors does not"):
        load_pipeline(str(checkpoint), config=str(tmp_path / "nowhere"))


def test_single_file_uses_the_config_folder_beside_it(single_file, tiny_sd):
    checkpoint, config, _ = single_file
    config.rename(checkpoint.with_suffix(""))  # tiny-sd.safetensors + tiny-sd/model_index.json ...
    loaded = load_pipeline(str(checkpoint))
    assert same_weights(loaded.unet, tiny_sd.unet)


def test_single_file_without_configs_fails_with_one_clear_line(single_file):
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest: the hub is never contacted
    checkpoint, _, _ = single_file
    with pytest.raises(ModelNotFoundError) as caught:
        load_pipeline(str(checkpoint))
    message = str(caught.value)
    assert "\n" not in message and len(message) < 700
    assert str(checkpoint) in message and "config=" in message and "model_index.json" in message
    assert "not in the local cache, and offline mode (HF_HUB_OFFLINE) is on" in message


def test_v_prediction_single_file_and_folder(single_file, tmp_path):
    checkpoint, config, components = single_file
    scheduler_config = config / "scheduler" / "scheduler_config.json"
    settings = json.loads(scheduler_config.read_text())
    scheduler_config.write_text(json.dumps({**settings, "prediction_type": "v_prediction"}))
    v_pipe = load_pipeline(str(checkpoint), config=str(config))
    assert v_pipe.scheduler.config.prediction_type == "v_prediction"
    # Every scheduler the UI offers keeps the model's prediction type.
    assert all(make_scheduler(name, v_pipe.scheduler.config).config.prediction_type == "v_prediction"
               for name in SCHEDULER_NAMES)
    # A uniform map still equals diffusers' img2img on the same (v-prediction) components.
    change_map = np.full((64, 64), 0.6, np.float32)
    ours = v_pipe(prompt=PROMPT, image=make_test_image(), change_map=change_map, num_inference_steps=5,
                  generator=torch.Generator().manual_seed(0), output_type="np", scheduler="Euler").images
    reference = StableDiffusionImg2ImgPipeline(
        **{**v_pipe.components, "scheduler": make_scheduler("Euler", v_pipe.scheduler.config)},
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    theirs = reference(prompt=PROMPT, image=make_test_image(), strength=0.6, num_inference_steps=5,
                       generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_array_equal(ours, theirs)
    # The same model as a folder with a v-prediction scheduler.
    components = {**components, "scheduler": DDIMScheduler.from_config(
        components["scheduler"].config, prediction_type="v_prediction")}
    folder = save_sd_folder(components, tmp_path / "v-folder", safe_serialization=True)
    from_folder = load_pipeline(str(folder))
    assert from_folder.scheduler.config.prediction_type == "v_prediction"
    epsilon = load_pipeline("tiny-sd")
    assert not np.array_equal(edit(from_folder, scheduler="Euler"), edit(epsilon, scheduler="Euler"))


# -- hub ids (from the local cache: tests never download) ----------------------------------------------
@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """Put a pipeline into a Hugging Face cache as a finished download leaves it."""
    import huggingface_hub.constants

    root = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))

    def put(repo: str, pipe, **index_changes) -> None:
        entry = root / f"models--{repo.replace('/', '--')}"
        revision = "0123456789abcdef0123456789abcdef01234567"
        (entry / "refs").mkdir(parents=True)
        (entry / "refs" / "main").write_text(revision)
        snapshot = entry / "snapshots" / revision
        pipe.save_pretrained(snapshot, safe_serialization=True)
        index = snapshot / "model_index.json"
        index.write_text(json.dumps({**json.loads(index.read_text()), **index_changes}))

    put.root = root
    return put


def test_hub_ids_load_from_the_cache_by_their_declared_class(hub_cache, tiny_sd, tiny_sdxl):
    # SD 1.5 repositories declare a safety checker; it is never loaded (nor downloaded).
    hub_cache("painter/my-sd", StableDiffusionPipeline(
        **tiny_components("tiny-sd"), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False),
        safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
        feature_extractor=["transformers", "CLIPImageProcessor"])
    hub_cache("painter/big-model", StableDiffusionXLPipeline(**tiny_components("tiny-sdxl")))
    sd = load_pipeline("painter/my-sd")
    assert isinstance(sd, StableDiffusionDifferentialPipeline)
    np.testing.assert_array_equal(edit(sd), edit(tiny_sd))
    xl = load_pipeline("painter/big-model")  # no "xl" in the name: its model_index.json decides
    assert isinstance(xl, StableDiffusionXLDifferentialPipeline)
    np.testing.assert_array_equal(edit(xl), edit(tiny_sdxl))



def test_a_cached_hub_model_with_pickled_weights_is_never_unpickled(hub_cache, monkeypatch):
    hub_cache("painter/pickled", StableDiffusionPipeline(
        **tiny_components("tiny-sd"), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False))
    snapshot = next((hub_cache.root / "models--painter--pickled" / "snapshots").iterdir())
    for weights in snapshot.glob("unet/*.safetensors"):  # the UNet as a pickle only
        torch.save(load_file(weights), weights.with_suffix(".bin"))
        weights.unlink()

    unpickled: list = []

    def no_unpickling(*args, **kwargs):  # recorded: the loader turns any exception into its own error
        unpickled.append(args)
        raise RuntimeError("torch.load was called on a hub model's pickled weights")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(ModelNotFoundError, match="painter/pickled") as caught:
        load_pipeline("painter/pickled")
    assert unpickled == [], "the pickled UNet was read"
    assert "safetensors" in str(caught.value)

def test_single_file_uses_the_original_repositorys_configs_from_the_cache(single_file, hub_cache, tiny_sd):
    # No config given and none beside it: diffusers picks the original repository from the
    # checkpoint's keys (SD 1.5 here) and its configs come from the local cache, offline.
    checkpoint, _, components = single_file
    hub_cache("stable-diffusion-v1-5/stable-diffusion-v1-5", StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False))
    loaded = load_pipeline(str(checkpoint))
    assert same_weights(loaded.unet, tiny_sd.unet)
    np.testing.assert_array_equal(edit(loaded), edit(tiny_sd))


def test_models_of_another_kind_are_refused_clearly(hub_cache, tmp_path):
    hub_cache("painter/sound", StableDiffusionPipeline(
        **tiny_components("tiny-sd"), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False), _class_name="AudioLDMPipeline")
    with pytest.raises(ModelNotFoundError, match="painter/sound is a AudioLDMPipeline; this loader runs"):
        load_pipeline("painter/sound")
    components = tiny_components("tiny-sd")
    components["unet"] = UNet2DConditionModel.from_config({**components["unet"].config, "in_channels": 9})
    folder = save_sd_folder(components, tmp_path / "inpainting", safe_serialization=True)
    with pytest.raises(ModelNotFoundError, match="9-channel UNet"):
        load_pipeline(str(folder))


def _hub_answer(kind: type, message: str = "hub says no") -> Exception:
    import types

    response = types.SimpleNamespace(headers={}, status_code=404, json=lambda: {}, text="",
                                     request=None, url="https://huggingface.co/x")
    return kind(message, response=response)


@pytest.mark.parametrize("info_error, download_error, expected", [
    ("RepositoryNotFoundError", None, "no such repository on the hub (or it is private"),
    ("GatedRepoError", None, "a gated model: accept its licence"),
    ("ConnectionError", None, "not in the local cache, and the hub could not be reached"),
    (None, "RemoteEntryNotFoundError", "has no model_index.json, so it is not a diffusers model"),
])
def test_hub_answers_become_one_line_a_painter_can_act_on(monkeypatch, info_error, download_error,
                                                          expected):
    # The hub cannot be reached from tests: its two calls answer as the real hub would.
    import huggingface_hub
    import huggingface_hub.errors as errors

    def model_info(repo, *args, **kwargs):
        if info_error == "ConnectionError":
            raise ConnectionError("Name or service not known")
        if info_error:
            raise _hub_answer(getattr(errors, info_error))
        return object()

    def hf_hub_download(repo, filename, *args, local_files_only=False, **kwargs):
        if local_files_only:
            raise errors.LocalEntryNotFoundError("not cached")
        raise _hub_answer(getattr(errors, download_error))

    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # both calls are fakes
    with pytest.raises(ModelNotFoundError) as caught:
        load_pipeline("painter/some-model")
    message = str(caught.value)
    assert "\n" not in message and expected in message and "painter/some-model" in message


# -- ids that are nothing -----------------------------------------------------------------------------
@pytest.mark.parametrize("model, reason", [
    ("nobody/no-such-model", "the Hugging Face hub id 'nobody/no-such-model': not in the local cache"),
    ("no-such-model", "not a Hugging Face hub id"),
    ("./missing/folder", "not a Hugging Face hub id"),
    ("/nonexistent/model.safetensors", "not a Hugging Face hub id"),
    ("~/nonexistent/a/b", "not a Hugging Face hub id"),
])
def test_unknown_model_gives_one_line_naming_what_was_tried(model, reason):
    with pytest.raises(ModelNotFoundError) as caught:
        load_pipeline(model)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 500
    assert message.startswith(f"Model {model!r} not found. Tried: the built-in ids (tiny-sd, tiny-sdxl")
    assert str(Path(model).expanduser().resolve()) in message  # the local path it looked at
    assert reason in message
