"""Differential diffusion for Stable Diffusion 1.x / 2.x and SDXL (incl. base + refiner).

The method (``docs/method.md``) on diffusers components. The change map uses the painter's
convention: **1 (white) = change fully, 0 (black) = keep**; the paper's map is
``mu_paper = 1 - change_map``.

Prompt encoding, image pre/post-processing and SDXL's extra conditioning are borrowed from the
diffusers img2img pipelines by composition (``self.helper``), so a uniform map of value ``s``
reproduces ``StableDiffusion(XL)Img2ImgPipeline`` at ``strength=s`` exactly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (
    retrieve_latents,
)
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from server.pipelines import (
    DifferentialDiffusionOutput,
    DifferentialPipeline,
    Generator,
    StepInfo,
    check_generators,
    clean_estimate,
    extra_step_kwargs,
    padded_pixels,
    raise_if_cancelled,
    reinjection_changes,
)
from shared import protocol as p


@dataclass
class Conditioning:
    """What one UNet needs besides latents and timestep (already doubled for CFG)."""

    prompt_embeds: torch.Tensor
    added_cond_kwargs: dict[str, torch.Tensor] | None = None


@dataclass
class Denoiser:
    """A UNet and its conditioning, used from step index ``first_step`` on (base / refiner)."""

    first_step: int
    unet: torch.nn.Module
    cond: Conditioning


class StableDiffusionDifferentialPipeline(DifferentialPipeline):
    """SD 1.x / 2.x (epsilon or v-prediction) with a per-pixel change map."""

    family = "sd"
    component_names = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        scheduler: Any,
        native_resolution: int | None = None,
    ) -> None:
        self.helper = StableDiffusionImg2ImgPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        self.helper.set_progress_bar_config(disable=True)
        self._init_common(native_resolution)

    def _init_common(self, native_resolution: int | None) -> None:
        self.vae_scale_factor: int = self.helper.vae_scale_factor
        self.native_resolution: int = native_resolution or int(
            self.unet.config.sample_size * self.vae_scale_factor
        )

    # -- components (scheduler, device, to: DifferentialPipeline) -----------------------------------
    @property
    def vae(self) -> Any:
        return self.helper.vae

    @property
    def unet(self) -> Any:
        return self.helper.unet

    # -- steps of a run --------------------------------------------------------------------------
    def encode_prompt(
        self, prompt: str, negative_prompt: str | None, num_images: int, do_cfg: bool,
        size: tuple[int, int],
    ) -> Conditioning:
        embeds, negative = self.helper.encode_prompt(
            prompt, self.device, num_images, do_cfg, negative_prompt
        )
        if do_cfg:
            embeds = torch.cat([negative, embeds])
        return Conditioning(embeds)

    def prepare_denoisers(
        self, prompt: str, negative_prompt: str | None, num_images: int, do_cfg: bool,
        size: tuple[int, int], scheduler: Any, refiner_split: float | None,
    ) -> list[Denoiser]:
        cond = self.encode_prompt(prompt, negative_prompt, num_images, do_cfg, size)
        return [Denoiser(0, self.unet, cond)]

    def prepare_image(self, image: Image.Image) -> tuple[torch.Tensor, np.ndarray]:
        """Image -> (1 x 3 x H' x W' tensor in [-1, 1], H x W x 3 float input in [0, 1]).

        H', W' are H, W rounded up to the VAE's cell size by repeating the border pixels, so any
        size works and the result is cropped back afterwards.
        """
        padded, original = padded_pixels(image, self.vae_scale_factor)
        tensor = self.helper.image_processor.preprocess(Image.fromarray(padded))
        return tensor, original

    def prepare_latents(
        self, image: torch.Tensor, batch_size: int, generator: Generator, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``z_init`` (the encoded image, B copies) and ``noise``, the one Gaussian draw reused
        for every noised original. Same generator order as diffusers' img2img."""
        check_generators(generator, batch_size)
        vae = self.vae
        image = image.to(device=self.device, dtype=dtype)
        upcast = self._vae_needs_fp32()
        if upcast:  # fp16 SDXL VAEs overflow; diffusers encodes in fp32 too
            image = image.float()
            vae.to(dtype=torch.float32)
        if isinstance(generator, list):
            z_init = torch.cat([retrieve_latents(vae.encode(image), generator=g) for g in generator])
        else:
            z_init = retrieve_latents(vae.encode(image), generator=generator)
        if upcast:
            vae.to(dtype=dtype)
        z_init = self._scale_latents(z_init.to(dtype))
        if z_init.shape[0] != batch_size:
            z_init = torch.cat([z_init] * batch_size)
        noise = randn_tensor(z_init.shape, generator=generator, device=self.device, dtype=dtype)
        return z_init, noise

    def _vae_needs_fp32(self) -> bool:
        # As diffusers' SD img2img: the SD 1.x/2.x VAE runs in fp16 as it is.
        return False

    def _scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config
        return cfg.scaling_factor * z

    def _unscale_latents(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> B x H' x W' x 3 float32 in [0, 1] (padded size)."""
        vae = self.vae
        upcast = self._vae_needs_fp32()
        if upcast:
            vae.to(dtype=torch.float32)
        latents = self._unscale_latents(latents.to(vae.dtype))  # unscaled in the VAE's precision
        decoded = vae.decode(latents, return_dict=False)[0]
        if upcast:
            vae.to(dtype=torch.float16)
        return self.helper.image_processor.postprocess(decoded, output_type="np")

    # -- the run ---------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str = "",
        image: Image.Image | None = None,
        change_map: Any = None,
        negative_prompt: str | None = None,
        num_inference_steps: int = 30,
        guidance_scale: float = 7.5,
        generator: Generator = None,
        num_images_per_prompt: int = 1,
        scheduler: str | None = None,
        output_type: str = "pil",
        keep_unchanged_exact: bool = True,
        callback: Callable[[StepInfo], None] | None = None,
        cancel: threading.Event | None = None,
        refiner_split: float | None = None,
    ) -> DifferentialDiffusionOutput:
        """Edit ``image`` where ``change_map`` allows (1 = change fully, 0 = keep exactly).

        ``change_map``: PIL image or H x W array in [0, 1], any size (resized to the image).
        ``generator``: one, or one per image (variant i of seed S is reproduced alone by S + i).
        ``refiner_split`` (SDXL with a refiner): fraction of the schedule run on the base,
        like diffusers' ``denoising_end``; the rest runs on the refiner.
        """
        # 1. Image and map: steps per latent pixel; Algorithm 2 skips what changes nothing.
        run = self.prepare_run(image, change_map, num_inference_steps, num_images_per_prompt,
                               output_type, keep_unchanged_exact, refiner_split)
        if run.longest == 0:
            return self.unchanged_result(run, generator)
        raise_if_cancelled(cancel, 0, run.longest)
        sched, start, timesteps = self.prepare_timesteps(run, scheduler)
        k, batch, steps = run.k, run.batch, run.steps

        # 2. Prompt(s), latents and the one noise tensor.
        do_cfg = guidance_scale > 1.0
        padded_size = (run.image_tensor.shape[-2], run.image_tensor.shape[-1])
        denoisers = self.prepare_denoisers(prompt, negative_prompt, batch, do_cfg, padded_size,
                                           sched, refiner_split)
        dtype = denoisers[0].cond.prompt_embeds.dtype
        z_init, noise = self.prepare_latents(run.image_tensor, batch, generator, dtype)
        latents = sched.add_noise(z_init, noise, timesteps[:1].repeat(batch))
        step_kwargs = extra_step_kwargs(sched, generator)

        # 3. The loop. Step index i runs from `start` (noisiest) to k-1.
        for j, t in enumerate(timesteps):
            raise_if_cancelled(cancel, j, len(timesteps))
            i = start + j // sched.order
            # Nested masks: a region with n steps is re-injected up to and including step k-n.
            # At the first step every region is the noised original already (a no-op there).
            latents = self.reinject(sched, latents, z_init, noise, t, keep=steps <= k - i,
                                    changes=reinjection_changes(j, i, k, run.fewest))
            denoiser = [d for d in denoisers if d.first_step <= i][-1]
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_input = sched.scale_model_input(model_input, t)
            noise_pred = denoiser.unet(
                model_input, t, encoder_hidden_states=denoiser.cond.prompt_embeds,
                added_cond_kwargs=denoiser.cond.added_cond_kwargs, return_dict=False,
            )[0]
            if do_cfg:
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + guidance_scale * (text - uncond)
            out = sched.step(noise_pred, t, latents, **step_kwargs, return_dict=True)
            latents = out.prev_sample
            if callback is not None:
                callback(StepInfo(step=j + 1, total=len(timesteps), latents=latents,
                                  denoised=clean_estimate(sched, out), family=self.family,
                                  latent_size=run.latent_size, backdrop=run.backdrop,
                                  decoder=self.preview_decoder))
        if run.fewest == 0:  # strength-0 regions end exactly on the original latent
            latents = torch.where(steps == 0, z_init, latents)

        # 4. Decode, crop the padding, put the kept pixels back exactly.
        return self.finish_run(run, latents, len(timesteps))


class StableDiffusionXLDifferentialPipeline(StableDiffusionDifferentialPipeline):
    """SDXL, optionally with a refiner that takes over the low-noise end of the schedule."""

    family = "sdxl"
    component_names = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                       "unet", "scheduler")
    default_refiner_split = 0.8

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        text_encoder_2: Any,
        tokenizer: Any,
        tokenizer_2: Any,
        unet: Any,
        scheduler: Any,
        native_resolution: int | None = None,
        force_zeros_for_empty_prompt: bool = True,
        refiner: StableDiffusionXLImg2ImgPipeline | None = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
    ) -> None:
        self.helper = StableDiffusionXLImg2ImgPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
            tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
            requires_aesthetics_score=False,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=False,
        )
        self.helper.set_progress_bar_config(disable=True)
        # The refiner is a diffusers SDXL img2img pipeline (its own UNet and text encoder, the
        # base's VAE); only its prompt encoding and UNet are used here.
        self.refiner = refiner
        if refiner is not None:
            refiner.set_progress_bar_config(disable=True)
        self.aesthetic_score = aesthetic_score
        self.negative_aesthetic_score = negative_aesthetic_score
        self._init_common(native_resolution)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        if self.refiner is not None:
            refiner_dtype = None if dtype == self.refiner.unet.dtype else dtype
            self.refiner.to(device=device, dtype=refiner_dtype)
        super().to(device, dtype)
        return self

    def encode_prompt(
        self, prompt: str, negative_prompt: str | None, num_images: int, do_cfg: bool,
        size: tuple[int, int], helper: StableDiffusionXLImg2ImgPipeline | None = None,
    ) -> Conditioning:
        helper = helper or self.helper
        embeds, negative, pooled, negative_pooled = helper.encode_prompt(
            prompt=prompt, device=self.device, num_images_per_prompt=num_images,
            do_classifier_free_guidance=do_cfg, negative_prompt=negative_prompt,
        )
        projection_dim = (helper.text_encoder_2.config.projection_dim
                          if helper.text_encoder_2 is not None else int(pooled.shape[-1]))
        time_ids, negative_time_ids = helper._get_add_time_ids(
            size, (0, 0), size, self.aesthetic_score, self.negative_aesthetic_score,
            size, (0, 0), size, dtype=embeds.dtype, text_encoder_projection_dim=projection_dim,
        )
        time_ids = time_ids.repeat(num_images, 1)
        if do_cfg:
            embeds = torch.cat([negative, embeds])
            pooled = torch.cat([negative_pooled, pooled])
            time_ids = torch.cat([negative_time_ids.repeat(num_images, 1), time_ids])
        added = {"text_embeds": pooled.to(self.device), "time_ids": time_ids.to(self.device)}
        return Conditioning(embeds.to(self.device), added)

    def options(self) -> list[p.OptionSpec]:
        if self.refiner is None:
            return []
        return [p.OptionSpec(
            "refiner_split", "float", float(self.default_refiner_split), 0.0, 1.0,
            min_exclusive=True, label="Refiner split",
            help="Fraction of the steps run on the base model; the refiner does the rest "
                 "(1 = no refiner).")]

    def check_refiner_split(self, refiner_split: float | None) -> None:
        if refiner_split is None:
            return
        if self.refiner is None:
            if refiner_split < 1.0:
                raise ValueError("refiner_split needs a refiner; load the model with refiner=...")
        elif not 0.0 < float(refiner_split) <= 1.0:
            raise ValueError(f"refiner_split must be in (0, 1], got {refiner_split}.")

    def prepare_denoisers(
        self, prompt: str, negative_prompt: str | None, num_images: int, do_cfg: bool,
        size: tuple[int, int], scheduler: Any, refiner_split: float | None,
    ) -> list[Denoiser]:
        base = Denoiser(0, self.unet, self.encode_prompt(prompt, negative_prompt, num_images,
                                                         do_cfg, size))
        split = self.default_refiner_split if refiner_split is None else float(refiner_split)
        if self.refiner is None or split == 1.0:
            return [base]
        # Same cut as diffusers' denoising_end / denoising_start: timesteps >= cutoff go to base.
        train_steps = scheduler.config.num_train_timesteps
        cutoff = int(round(train_steps - split * train_steps))
        first_refiner_step = int((scheduler.timesteps >= cutoff).sum()) // scheduler.order
        refiner_cond = self.encode_prompt(prompt, negative_prompt, num_images, do_cfg, size,
                                          helper=self.refiner)
        return [base, Denoiser(first_refiner_step, self.refiner.unet, refiner_cond)]

    def _vae_needs_fp32(self) -> bool:
        # As diffusers' SDXL img2img: a VAE marked force_upcast (SDXL's overflows in fp16)
        # encodes and decodes in fp32.
        return bool(self.vae.config.get("force_upcast", False)) and self.vae.dtype == torch.float16

    def _latent_stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The VAE's per-channel latent mean and std (1 x C x 1 x 1, like ``z``), if it has them."""
        cfg = self.vae.config
        mean, std = cfg.get("latents_mean"), cfg.get("latents_std")
        if mean is None or std is None:
            return None
        return tuple(torch.tensor(v).view(1, -1, 1, 1).to(z.device, z.dtype) for v in (mean, std))

    def _scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        scaling, stats = self.vae.config.scaling_factor, self._latent_stats(z)
        if stats is not None:
            mean, std = stats
            return (z - mean) * scaling / std
        return scaling * z

    def _unscale_latents(self, z: torch.Tensor) -> torch.Tensor:
        scaling, stats = self.vae.config.scaling_factor, self._latent_stats(z)
        if stats is not None:
            mean, std = stats
            return z * std / scaling + mean
        return z / scaling
