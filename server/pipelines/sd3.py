"""Differential diffusion for Stable Diffusion 3 / 3.5 (MMDiT, flow matching).

The loop is the flow-matching one (``server.pipelines.flow``; the method: ``docs/method.md``);
this file says how SD3 encodes its prompt (CLIP L + CLIP G, optional T5), sets its schedule (a
static shift, or SD3.5's resolution-dependent one) and calls its transformer. A uniform map of
value ``s`` (``s*k`` whole) reproduces ``StableDiffusion3Img2ImgPipeline`` at ``strength=s``
exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableDiffusion3Img2ImgPipeline
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3_img2img import (
    calculate_shift,
)

from server.pipelines.flow import FlowConditioning, FlowMatchingDifferentialPipeline


class StableDiffusion3DifferentialPipeline(FlowMatchingDifferentialPipeline):
    """Stable Diffusion 3 / 3.5: MMDiT on 2 x 2 patches, CLIP L + CLIP G (+ optional T5)."""

    family = "sd3"
    component_names = ("transformer", "scheduler", "vae", "text_encoder", "tokenizer",
                       "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")
    max_sequence_length = 256  # T5 tokens, diffusers' default

    def __init__(
        self,
        transformer: Any,
        scheduler: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        text_encoder_2: Any,
        tokenizer_2: Any,
        text_encoder_3: Any = None,
        tokenizer_3: Any = None,
        native_resolution: int | None = None,
    ) -> None:
        self.helper = StableDiffusion3Img2ImgPipeline(
            transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
            tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
            text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
        )
        self._init_common(native_resolution, int(transformer.config.patch_size))

    def _default_resolution(self) -> int:
        return int(self.transformer.config.sample_size * self.vae_scale_factor)

    def encode_prompt(self, prompt: str, negative_prompt: str | None, num_images: int,
                      guidance_scale: float, true_cfg_scale: float) -> FlowConditioning:
        do_cfg = guidance_scale > 1.0
        embeds, negative, pooled, negative_pooled = self.helper.encode_prompt(
            prompt=prompt, prompt_2=None, prompt_3=None, negative_prompt=negative_prompt,
            do_classifier_free_guidance=do_cfg, device=self.device,
            num_images_per_prompt=num_images, max_sequence_length=self.max_sequence_length,
        )
        if do_cfg:
            embeds = torch.cat([negative, embeds])
            pooled = torch.cat([negative_pooled, pooled])
        return FlowConditioning(embeds, pooled)

    def set_timesteps(self, scheduler: Any, num_inference_steps: int,
                      latent_hw: tuple[int, int]) -> None:
        kwargs: dict[str, Any] = {}
        if scheduler.config.get("use_dynamic_shifting", False):  # SD3.5-style configs
            cfg = scheduler.config
            seq_len = (latent_hw[0] // self.patch_size) * (latent_hw[1] // self.patch_size)
            kwargs["mu"] = calculate_shift(seq_len, cfg.get("base_image_seq_len", 256),
                                           cfg.get("max_image_seq_len", 4096),
                                           cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.16))
        scheduler.set_timesteps(num_inference_steps, device=self.device, **kwargs)

    def predict(self, latents: torch.Tensor, t: torch.Tensor, cond: FlowConditioning,
                guidance_scale: float, true_cfg_scale: float,
                latent_hw: tuple[int, int]) -> torch.Tensor:
        do_cfg = guidance_scale > 1.0
        model_input = torch.cat([latents] * 2) if do_cfg else latents
        velocity = self.transformer(
            hidden_states=model_input, timestep=t.expand(model_input.shape[0]),
            encoder_hidden_states=cond.prompt_embeds, pooled_projections=cond.pooled,
            return_dict=False,
        )[0]
        if do_cfg:
            uncond, text = velocity.chunk(2)
            velocity = uncond + guidance_scale * (text - uncond)
        return velocity
