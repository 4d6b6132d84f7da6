"""Differential diffusion for Flux (FLUX.1 dev / schnell and fine-tunes).

The loop is the flow-matching one in ``server.pipelines.flow`` (noised originals from the
scheduler's ``scale_noise``; the method: ``docs/method.md``). What Flux changes:

- **Packed latents.** The transformer takes each 2 x 2 block of 16-channel latent cells as one
  token of 64 channels (B x h/2*w/2 x 64). ``z_init``, the noise *and the per-cell step counts*
  are packed the same way, so the re-injection test stays per latent cell (finer than a token)
  and ``torch.where`` works on the packed tensors directly; previews and ``output_type="latent"``
  get unpacked B x 16 x h x w latents.
- **Guidance.** ``guidance_scale`` is the distilled guidance the dev model takes as an input
  (ignored by schnell, which has none); it is not classifier-free guidance, so the negative
  prompt only counts with ``true_cfg_scale > 1`` (two transformer calls per step), as in
  diffusers' ``FluxImg2ImgPipeline``.
- **Schedule.** Sigmas ``linspace(1, 1/k, k)``, shifted by the image's token count.

A uniform map of value ``s`` (``s*k`` whole) reproduces ``FluxImg2ImgPipeline`` at
``strength=s`` on the same components, seed and steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers import FluxImg2ImgPipeline
from diffusers.pipelines.flux.pipeline_flux_img2img import calculate_shift

from server.pipelines.flow import FlowConditioning, FlowMatchingDifferentialPipeline
from shared import protocol as p


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """B x C x h x w -> B x (h/2 * w/2) x 4C: one token per 2 x 2 cell block, rows first.

    A token's channels are ordered (channel, row in block, column in block), Flux's layout."""
    b, c, h, w = x.shape
    blocks = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return blocks.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """The inverse of :func:`pack_latents` for an h x w latent grid."""
    h, w = latent_hw
    b, _, packed_c = x.shape
    c = packed_c // 4
    blocks = x.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return blocks.reshape(b, c, h, w)


class FluxDifferentialPipeline(FlowMatchingDifferentialPipeline):
    """Flux with a per-pixel change map (packed latents, distilled guidance)."""

    family = "flux"
    component_names = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2",
                       "tokenizer_2", "transformer")
    max_sequence_length = 512  # T5 tokens, diffusers' default

    def __init__(
        self,
        scheduler: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        text_encoder_2: Any,
        tokenizer_2: Any,
        transformer: Any,
        native_resolution: int | None = None,
    ) -> None:
        self.helper = FluxImg2ImgPipeline(
            scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
        )
        self._init_common(native_resolution, patch_size=2)

    def options(self) -> list[p.OptionSpec]:
        return [p.OptionSpec(
            "true_cfg_scale", "float", 1.0, 1.0, p.MAX_GUIDANCE, label="True CFG",
            help="Above 1: real classifier-free guidance, so the negative prompt counts "
                 "(two model calls per step).")]

    def encode_prompt(self, prompt: str, negative_prompt: str | None, num_images: int,
                      guidance_scale: float, true_cfg_scale: float) -> FlowConditioning:
        embeds, pooled, text_ids = self.helper.encode_prompt(
            prompt=prompt, prompt_2=None, device=self.device, num_images_per_prompt=num_images,
            max_sequence_length=self.max_sequence_length,
        )
        extra: dict[str, Any] = {"text_ids": text_ids}
        if true_cfg_scale > 1.0 and negative_prompt is not None:
            negative, negative_pooled, _ = self.helper.encode_prompt(
                prompt=negative_prompt, prompt_2=None, device=self.device,
                num_images_per_prompt=num_images, max_sequence_length=self.max_sequence_length,
            )
            extra.update(negative=negative, negative_pooled=negative_pooled)
        return FlowConditioning(embeds, pooled, extra)

    def set_timesteps(self, scheduler: Any, num_inference_steps: int,
                      latent_hw: tuple[int, int]) -> None:
        k = num_inference_steps
        cfg = scheduler.config
        tokens = (latent_hw[0] // 2) * (latent_hw[1] // 2)
        mu = calculate_shift(tokens, cfg.get("base_image_seq_len", 256),
                             cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                             cfg.get("max_shift", 1.15))
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / k, k), device=self.device, mu=mu)

    def to_model_layout(self, x: torch.Tensor) -> torch.Tensor:
        return pack_latents(x)

    def from_model_layout(self, x: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
        return unpack_latents(x, latent_hw)

    def predict(self, latents: torch.Tensor, t: torch.Tensor, cond: FlowConditioning,
                guidance_scale: float, true_cfg_scale: float,
                latent_hw: tuple[int, int]) -> torch.Tensor:
        batch = latents.shape[0]
        if "img_ids" not in cond.extra:  # the token grid's (0, row, column) position ids
            ids = torch.zeros(latent_hw[0] // 2, latent_hw[1] // 2, 3)
            ids[..., 1] = torch.arange(latent_hw[0] // 2)[:, None]
            ids[..., 2] = torch.arange(latent_hw[1] // 2)[None, :]
            cond.extra["img_ids"] = ids.reshape(-1, 3).to(self.device, latents.dtype)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full([batch], guidance_scale, device=self.device, dtype=torch.float32)
        timestep = t.expand(batch).to(latents.dtype) / 1000

        def call(embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
            return self.transformer(
                hidden_states=latents, timestep=timestep, guidance=guidance,
                pooled_projections=pooled, encoder_hidden_states=embeds,
                txt_ids=cond.extra["text_ids"], img_ids=cond.extra["img_ids"],
                joint_attention_kwargs={}, return_dict=False,
            )[0]

        velocity = call(cond.prompt_embeds, cond.pooled)
        if "negative" in cond.extra:
            negative = call(cond.extra["negative"], cond.extra["negative_pooled"])
            velocity = negative + true_cfg_scale * (velocity - negative)
        return velocity
