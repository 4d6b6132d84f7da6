"""Every built-in tiny model: random weights from small configs, seeded, built in memory.

Nothing is read or downloaded, and the same seed gives the same weights, so tests and the
offline demo run anywhere. Shapes follow the real models where the differential loop cares:

- ``tiny-sd`` / ``tiny-sdxl`` (+ ``tiny-sdxl-refiner``): a VAE with a scale factor of 8 and 4
  latent channels, CLIP conditioning (SDXL: two encoders, pooled projection, size time ids).
- ``tiny-sd3`` / ``tiny-flux``: 16 latent channels normalised with a shift and a scale, 2 x 2
  patches, CLIP (+ T5 for Flux), flow-matching Euler schedules (SD3's static shift, Flux's
  resolution-dependent one).
- ``tiny-kandinsky22``: a CLIP-text prior that samples an image embedding, a decoder UNet
  conditioned on it (learned variance) and a MoVQ autoencoder (scale factor 8, 4 channels).
- ``tiny-if``: pixel-space UNets on T5 states, stage I at 16 x 16, stage II x4 (the noisy image
  plus the upscaled stage-I image, a noise-level class label); IF's DDPM schedule.
"""

from __future__ import annotations

import string
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    PriorTransformer,
    SD3Transformer2DModel,
    StableDiffusionUpscalePipeline,
    UnCLIPScheduler,
    UNet2DConditionModel,
    VQModel,
)
from transformers import (
    CLIPImageProcessorPil,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from server.pipelines.deepfloyd_if import DeepFloydIFDifferentialPipeline
from server.pipelines.flux import FluxDifferentialPipeline
from server.pipelines.kandinsky import PRIOR_COMPONENTS, KandinskyV22DifferentialPipeline
from server.pipelines.sd import StableDiffusionDifferentialPipeline, StableDiffusionXLDifferentialPipeline
from server.pipelines.sd3 import StableDiffusion3DifferentialPipeline

TINY_MODELS = ("tiny-sd", "tiny-sdxl", "tiny-sd3", "tiny-flux", "tiny-kandinsky22", "tiny-if")
TINY_REFINER = "tiny-sdxl-refiner"  # only as the refiner of tiny-sdxl
TINY_SEED = 0
WIDTH = 32  # every tiny text encoder's width, and Kandinsky's image-embedding size


# -- text ------------------------------------------------------------------------------------------
def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer with a byte-level vocabulary and no merges (every character is a token).

    It behaves like CLIP's (lower-casing, ``</w>`` word ends, start/end tokens, padding to
    ``model_max_length=77``) without a vocabulary file to download."""
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


def tiny_t5_tokenizer() -> T5Tokenizer:
    """A T5 (Unigram) tokenizer over single printable characters, built in memory.

    No sentencepiece file: the vocabulary is a list of (piece, score); ``"\u2581"`` marks a word
    start, as in T5's own vocabulary. Characters outside it become ``<unk>``."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase + string.ascii_uppercase]
    pieces += [(c, -4.0) for c in string.digits + string.punctuation]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def tiny_clip_encoder(tokenizer: Any, with_projection: bool = False) -> Any:
    """A two-layer CLIP text encoder (with a pooled projection when asked)."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=WIDTH,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_act="gelu",
    )
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def tiny_t5_encoder(tokenizer: T5Tokenizer) -> T5EncoderModel:
    """A two-layer T5 encoder (gated GELU, like T5 v1.1 which Flux and IF use)."""
    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=WIDTH, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    ))


def _eval(parts: dict[str, Any]) -> dict[str, Any]:
    # Inference mode, as from_pretrained leaves models: no dropout drawing from the global RNG,
    # and a tiny model saved and reloaded runs the same kernels and gives the same images.
    for part in parts.values():
        if isinstance(part, torch.nn.Module):
            part.eval()
    return parts


# -- SD and SDXL -----------------------------------------------------------------------------------
def _sd_vae() -> AutoencoderKL:
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
    """Components of ``tiny-sd``, ``tiny-sdxl`` or ``tiny-sdxl-refiner`` (the refiner: its UNet,
    second text encoder and tokenizer only)."""
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
            return _eval({"vae": _sd_vae(), "text_encoder": tiny_clip_encoder(tokenizer),
                          "tokenizer": tokenizer, "unet": unet, "scheduler": scheduler})
        # SDXL: two text encoders (penultimate hidden states concatenated, 32 + 32), pooled
        # projection and size/crop time ids as added conditioning.
        refiner = model == TINY_REFINER
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
                                 "text_encoder_2": tiny_clip_encoder(tokenizer, True),
                                 "tokenizer_2": tokenizer}
        if refiner:
            return _eval(parts)
        parts.update(
            vae=_sd_vae(), text_encoder=tiny_clip_encoder(tokenizer), tokenizer=tokenizer,
            scheduler=EulerDiscreteScheduler(**_SD_SCHEDULE, timestep_spacing="leading"),
        )
        return _eval(parts)


# -- SD3 and Flux ----------------------------------------------------------------------------------
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
    """Components of ``tiny-sd3`` or ``tiny-flux``."""
    if model not in ("tiny-sd3", "tiny-flux"):
        raise ValueError(f"Unknown tiny flow model {model!r}; choose tiny-sd3 or tiny-flux.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip_tokenizer = tiny_tokenizer()
        if model == "tiny-sd3":
            # Two CLIP encoders with projections (pooled 32 + 32); the T5 encoder is left out,
            # which SD3 allows (its part of the prompt embedding is zeros then).
            transformer = SD3Transformer2DModel(
                sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                attention_head_dim=8, num_attention_heads=4, joint_attention_dim=2 * WIDTH,
                caption_projection_dim=32, pooled_projection_dim=2 * WIDTH,
                pos_embed_max_size=96,
            )
            return _eval({
                "transformer": transformer,
                "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
                "vae": _flow_vae(scaling_factor=1.5305, shift_factor=0.0609),
                "text_encoder": tiny_clip_encoder(clip_tokenizer, with_projection=True),
                "tokenizer": clip_tokenizer,
                "text_encoder_2": tiny_clip_encoder(clip_tokenizer, with_projection=True),
                "tokenizer_2": clip_tokenizer,
                "text_encoder_3": None,
                "tokenizer_3": None,
            })
        # Flux: CLIP pooled output + T5 sequence, packed 2 x 2 latents (16 x 4 = 64 channels per
        # token), rotary position ids, distilled guidance as an embedding (like FLUX.1-dev).
        t5_tokenizer = tiny_t5_tokenizer()
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=WIDTH,
            pooled_projection_dim=WIDTH, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
        )
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        )
        return _eval({
            "transformer": transformer,
            "scheduler": scheduler,
            "vae": _flow_vae(scaling_factor=0.3611, shift_factor=0.1159),
            "text_encoder": tiny_clip_encoder(clip_tokenizer, with_projection=False),
            "tokenizer": clip_tokenizer,
            "text_encoder_2": tiny_t5_encoder(t5_tokenizer),
            "tokenizer_2": t5_tokenizer,
        })


# -- Kandinsky 2.2 ---------------------------------------------------------------------------------
def tiny_kandinsky22_components(seed: int = TINY_SEED) -> tuple[dict[str, Any], dict[str, Any]]:
    """(prior components, decoder components) of ``tiny-kandinsky22``, as diffusers'
    ``KandinskyV22PriorPipeline`` and ``KandinskyV22Img2ImgPipeline`` take them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = tiny_tokenizer()
        text_encoder = tiny_clip_encoder(tokenizer, with_projection=True)
        prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12,
                                 embedding_dim=WIDTH, num_layers=1)
        # The real prior stores CLIP statistics; all-zero std would map every sample to the mean.
        prior.clip_std = torch.nn.Parameter(torch.ones_like(prior.clip_std))
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=WIDTH, image_size=16, patch_size=8, projection_dim=WIDTH,
            intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, num_channels=3,
        ))
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=8, layers_per_block=1,
            block_out_channels=(32, 64), norm_num_groups=8, attention_head_dim=4,
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn", addition_embed_type="image",
            encoder_hid_dim=WIDTH, encoder_hid_dim_type="image_proj", cross_attention_dim=32,
            resnet_time_scale_shift="scale_shift", class_embed_type=None,
        )
        movq = VQModel(
            in_channels=3, out_channels=3, latent_channels=4, vq_embed_dim=4, num_vq_embeddings=16,
            down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
            up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
            # MoVQ's spatial norms use 32 groups, hence 32 channels at every level.
            block_out_channels=(32, 32, 32, 32), layers_per_block=1, norm_num_groups=8,
            norm_type="spatial", sample_size=64,
        )
    prior_parts = _eval({
        "prior": prior, "image_encoder": image_encoder, "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                     num_train_timesteps=1000, clip_sample=True,
                                     clip_sample_range=10.0),
        "image_processor": CLIPImageProcessorPil(
            crop_size=16, size=16, do_center_crop=True, do_normalize=True, do_resize=True,
            image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711], resample=3),
    })
    decoder_parts = _eval({
        "unet": unet, "movq": movq,
        "scheduler": DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                   beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                   set_alpha_to_one=False, steps_offset=1,
                                   prediction_type="epsilon", thresholding=False),
    })
    return prior_parts, decoder_parts


# -- DeepFloyd IF ----------------------------------------------------------------------------------
def _if_schedule() -> dict[str, Any]:
    # IF's own DDPM settings (squared-cosine betas, learned variance, dynamic thresholding).
    return {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
            "variance_type": "learned_range", "thresholding": True,
            "dynamic_thresholding_ratio": 0.95, "sample_max_value": 1.0, "clip_sample": True,
            "clip_sample_range": 1.0, "prediction_type": "epsilon"}


def _if_unet(sample_size: int, in_channels: int, super_resolution: bool) -> UNet2DConditionModel:
    extra: dict[str, Any] = {
        "block_out_channels": (32, 64),
        "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        "up_block_types": ("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    }
    if super_resolution:
        # The noise level of the upscaled stage-I image is a class label. One more level, with
        # attention only at the lowest, keeps the full-size pixel UNet cheap (like IF-II, which
        # attends at its low-resolution levels only).
        extra = {"class_embed_type": "timestep", "mid_block_scale_factor": 1.414,
                 "time_embedding_act_fn": "gelu", "block_out_channels": (16, 32, 64),
                 "down_block_types": ("ResnetDownsampleBlock2D",) * 2
                 + ("SimpleCrossAttnDownBlock2D",),
                 "up_block_types": ("SimpleCrossAttnUpBlock2D",)
                 + ("ResnetUpsampleBlock2D",) * 2}
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=6, layers_per_block=1,
        norm_num_groups=8, attention_head_dim=8,
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=WIDTH,
        encoder_hid_dim=WIDTH, encoder_hid_dim_type="text_proj", addition_embed_type="text",
        addition_embed_type_num_heads=2,
        resnet_time_scale_shift="scale_shift", act_fn="gelu", only_cross_attention=False,
        **extra,
    )


def tiny_if_components(seed: int = TINY_SEED) -> tuple[dict[str, Any], dict[str, Any]]:
    """(stage I components, stage II components) of ``tiny-if``: stage I at 16 x 16 pixels,
    stage II x4 to 64 x 64; one T5 encoder shared by both, like the real stages' identical T5."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = tiny_t5_tokenizer()
        text_encoder = tiny_t5_encoder(tokenizer)
        stage_1 = _if_unet(16, 3, super_resolution=False)
        stage_2 = _if_unet(64, 6, super_resolution=True)
    first = _eval({"tokenizer": tokenizer, "text_encoder": text_encoder, "unet": stage_1,
                   "scheduler": DDPMScheduler(**_if_schedule())})
    second = _eval({"tokenizer": tokenizer, "text_encoder": text_encoder, "unet": stage_2,
                    "scheduler": DDPMScheduler(**_if_schedule()),
                    "image_noising_scheduler": DDPMScheduler(num_train_timesteps=1000,
                                                             beta_schedule="squaredcos_cap_v2",
                                                             clip_sample=False)})
    return first, second


def tiny_if_upscaler(seed: int = TINY_SEED) -> StableDiffusionUpscalePipeline:
    """A tiny stage III: diffusers' x4 latent upscaler (CLIP text, a scale-4 VAE, a UNet fed the
    latents plus the noised low-resolution image, the noise level as a class label)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = tiny_tokenizer()
        text_encoder = tiny_clip_encoder(tokenizer)
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=7, out_channels=4, layers_per_block=1,
            block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=WIDTH,
            attention_head_dim=8, use_linear_projection=True, num_class_embeds=1000,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        )
        vae = AutoencoderKL(  # three blocks: scale factor 4, like the real x4 upscaler's VAE
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(8, 8, 16), norm_num_groups=4, scaling_factor=0.08333,
        )
    _eval({"text_encoder": text_encoder, "unet": unet, "vae": vae})
    return StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        low_res_scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                        beta_start=0.0001, beta_end=0.02),
        scheduler=DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                set_alpha_to_one=False, prediction_type="v_prediction"),
        max_noise_level=350,
    )


# -- as differential pipelines ---------------------------------------------------------------------
def load_tiny(model: str, seed: int = TINY_SEED) -> Any:
    """A built-in tiny model (one of :data:`TINY_MODELS`) as its family's differential pipeline."""
    if model == "tiny-sd":
        return StableDiffusionDifferentialPipeline(**tiny_components(model, seed))
    if model == "tiny-sdxl":
        return StableDiffusionXLDifferentialPipeline(**tiny_components(model, seed))
    if model in ("tiny-sd3", "tiny-flux"):
        cls = StableDiffusion3DifferentialPipeline if model == "tiny-sd3" \
            else FluxDifferentialPipeline
        pipe = cls(**tiny_flow_components(model, seed), native_resolution=64)
        pipe.max_sequence_length = 32  # T5 tokens (one per character here): short prompts
        return pipe
    if model == "tiny-kandinsky22":
        prior_parts, decoder_parts = tiny_kandinsky22_components(seed)
        return KandinskyV22DifferentialPipeline(
            **{n: prior_parts[n] for n in PRIOR_COMPONENTS if n != "scheduler"},
            prior_scheduler=prior_parts["scheduler"], **decoder_parts)
    if model == "tiny-if":
        first, second = tiny_if_components(seed)
        return DeepFloydIFDifferentialPipeline(
            **first, unet_2=second["unet"], scheduler_2=second["scheduler"],
            image_noising_scheduler=second["image_noising_scheduler"])
    if model == TINY_REFINER:
        raise ValueError(f"{TINY_REFINER!r} is a refiner: use load_pipeline('tiny-sdxl', "
                         f"refiner={TINY_REFINER!r}).")
    raise ValueError(f"Unknown built-in model {model!r}; choose one of {', '.join(TINY_MODELS)}.")
