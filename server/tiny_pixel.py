"""Built-in tiny models for the unCLIP / cascade families: ``tiny-kandinsky22`` and ``tiny-if``.

Random weights from small configs, seeded, built offline in memory (nothing is read or
downloaded): the same seed gives the same weights. Their shapes follow the real models where
the differential loop cares:

- Kandinsky 2.2: a CLIP-text-conditioned prior that samples an image embedding (unCLIP
  schedule), a decoder UNet conditioned on image embeddings only (learned variance: twice the
  latent channels out) and a MoVQ (VQ) autoencoder with a scale factor of 8 and 4 channels.
- DeepFloyd IF: pixel-space UNets conditioned on T5 states; stage I at a small square size,
  stage II a x4 super-resolution UNet that takes the noisy image and the upscaled stage-I image
  (6 channels in) plus a noise-level class label; both predict a learned variance and use IF's
  DDPM schedule (squared-cosine betas, dynamic thresholding).
"""

from __future__ import annotations

import string
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    PriorTransformer,
    StableDiffusionUpscalePipeline,
    UnCLIPScheduler,
    UNet2DConditionModel,
    VQModel,
)
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

TINY_PIXEL_MODELS = ("tiny-kandinsky22", "tiny-if")
TINY_SEED = 0
_EMBED = 32  # CLIP / T5 width of every tiny encoder, and the image-embedding size


# -- Kandinsky 2.2 -------------------------------------------------------------------------------
def tiny_kandinsky22_components(seed: int = TINY_SEED) -> tuple[dict[str, Any], dict[str, Any]]:
    """(prior components, decoder components) of ``tiny-kandinsky22``, like diffusers'
    ``KandinskyV22PriorPipeline`` and ``KandinskyV22Img2ImgPipeline`` take them."""
    from server.models import _tiny_text_encoder, tiny_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = tiny_tokenizer()
        text_encoder = _tiny_text_encoder(tokenizer, with_projection=True)
        prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12,
                                 embedding_dim=_EMBED, num_layers=1)
        # The real prior stores CLIP statistics; all-zero std would map every sample to the mean.
        prior.clip_std = torch.nn.Parameter(torch.ones_like(prior.clip_std))
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=_EMBED, image_size=16, patch_size=8, projection_dim=_EMBED,
            intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, num_channels=3,
        ))
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=8, layers_per_block=1,
            block_out_channels=(32, 64), norm_num_groups=8, attention_head_dim=4,
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn", addition_embed_type="image",
            encoder_hid_dim=_EMBED, encoder_hid_dim_type="image_proj", cross_attention_dim=32,
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
    for module in (text_encoder, prior, image_encoder, unet, movq):
        module.eval()  # as from_pretrained leaves them: no dropout at inference
    prior_parts = {
        "prior": prior, "image_encoder": image_encoder, "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                     num_train_timesteps=1000, clip_sample=True,
                                     clip_sample_range=10.0),
        "image_processor": CLIPImageProcessorPil(
            crop_size=16, size=16, do_center_crop=True, do_normalize=True, do_resize=True,
            image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711], resample=3),
    }
    decoder_parts = {
        "unet": unet, "movq": movq,
        "scheduler": DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                   beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                   set_alpha_to_one=False, steps_offset=1,
                                   prediction_type="epsilon", thresholding=False),
    }
    return prior_parts, decoder_parts


# -- DeepFloyd IF --------------------------------------------------------------------------------
def tiny_t5_tokenizer() -> T5Tokenizer:
    """A T5 (Unigram) tokenizer over single characters, built in memory (no sentencepiece file).

    ``"\u2581"`` marks a word start as in T5's own vocabulary; other characters become ``<unk>``."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase]
    pieces += [(c, -4.0) for c in string.digits + string.punctuation]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


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
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=_EMBED,
        encoder_hid_dim=_EMBED, encoder_hid_dim_type="text_proj", addition_embed_type="text",
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
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer), d_model=_EMBED, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        ))
        stage_1 = _if_unet(16, 3, super_resolution=False)
        stage_2 = _if_unet(64, 6, super_resolution=True)
    for module in (text_encoder, stage_1, stage_2):
        module.eval()  # T5 has dropout; inference never wants it (from_pretrained does this too)
    first = {"tokenizer": tokenizer, "text_encoder": text_encoder, "unet": stage_1,
             "scheduler": DDPMScheduler(**_if_schedule())}
    second = {"tokenizer": tokenizer, "text_encoder": text_encoder, "unet": stage_2,
              "scheduler": DDPMScheduler(**_if_schedule()),
              "image_noising_scheduler": DDPMScheduler(num_train_timesteps=1000,
                                                       beta_schedule="squaredcos_cap_v2",
                                                       clip_sample=False)}
    return first, second


def tiny_if_upscaler(seed: int = TINY_SEED) -> StableDiffusionUpscalePipeline:
    """A tiny stage III: diffusers' x4 latent upscaler (CLIP text, a scale-4 VAE, a UNet fed the
    latents plus the noised low-resolution image, the noise level as a class label)."""
    from server.models import _tiny_text_encoder, tiny_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = tiny_tokenizer()
        text_encoder = _tiny_text_encoder(tokenizer)
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=7, out_channels=4, layers_per_block=1,
            block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=_EMBED,
            attention_head_dim=8, use_linear_projection=True, num_class_embeds=1000,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        )
        vae = AutoencoderKL(  # three blocks: scale factor 4, like the real x4 upscaler's VAE
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(8, 8, 16), norm_num_groups=4, scaling_factor=0.08333,
        )
    for module in (text_encoder, unet, vae):
        module.eval()
    return StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        low_res_scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                        beta_start=0.0001, beta_end=0.02),
        scheduler=DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                set_alpha_to_one=False, prediction_type="v_prediction"),
        max_noise_level=350,
    )
