"""Differential diffusion for Kandinsky 2.2 (prior + decoder, MoVQ latent space).

The method's loop fits unchanged (``docs/method.md``, "How each family differs"): the prompt
goes through the unCLIP *prior*, which samples a CLIP image embedding; the decoder UNet
is conditioned on that embedding (no text states) and denoises MoVQ latents with the per-pixel
change map. Convention: **1 (white) = change fully, 0 (black) = keep**; the paper's map is
``mu_paper = 1 - change_map``.

The prior and the image pre/post-processing are diffusers' own pipelines, used by composition
(``self.prior_pipe``, ``self.helper``), so a uniform map of value ``s`` reproduces
``KandinskyV22PriorPipeline`` followed by ``KandinskyV22Img2ImgPipeline`` at ``strength=s``
exactly (same generator, drawn in the same order: prior first, then the decoder's noise).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import KandinskyV22Img2ImgPipeline, KandinskyV22PriorPipeline
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
    uses_learned_variance,
)
from shared import protocol as p

PRIOR_COMPONENTS = ("prior", "image_encoder", "text_encoder", "tokenizer", "scheduler",
                    "image_processor")


@dataclass
class KandinskyStepInfo(StepInfo):
    """A step of the decoder; previews map MoVQ latents to RGB with a per-model linear fit."""

    rgb_fit: torch.Tensor | None = None  # (C + 1) x 3: latent channels and a bias -> RGB

    def generated_preview(self, variant: int = 0) -> np.ndarray:
        source = self.denoised if self.denoised is not None else self.latents
        lat = source[variant].detach().to("cpu", torch.float32)
        if self.rgb_fit is None:  # no fit: show the first three channels, centred
            rgb = (lat[:3].permute(1, 2, 0) + 1.0) / 2.0
        else:
            ones = torch.ones(1, *lat.shape[1:])
            rgb = torch.einsum("chw,cr->hwr", torch.cat([lat, ones]), self.rgb_fit)
        if self.latent_size is not None:
            rgb = rgb[: self.latent_size[1], : self.latent_size[0]]
        return np.ascontiguousarray((rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy())


class KandinskyV22DifferentialPipeline(DifferentialPipeline):
    """Kandinsky 2.2: text -> prior -> image embedding -> differential loop on the decoder."""

    family = "kandinsky22"
    component_names = ("prior", "image_encoder", "text_encoder", "tokenizer", "prior_scheduler",
                       "image_processor", "unet", "scheduler", "movq")

    def __init__(
        self,
        prior: Any,
        image_encoder: Any,
        text_encoder: Any,
        tokenizer: Any,
        prior_scheduler: Any,
        image_processor: Any,
        unet: Any,
        scheduler: Any,
        movq: Any,
        native_resolution: int | None = None,
        prior_num_inference_steps: int = 25,
        prior_guidance_scale: float = 4.0,
    ) -> None:
        self.prior_pipe = KandinskyV22PriorPipeline(
            prior=prior, image_encoder=image_encoder, text_encoder=text_encoder,
            tokenizer=tokenizer, scheduler=prior_scheduler, image_processor=image_processor,
        )
        self.helper = KandinskyV22Img2ImgPipeline(unet=unet, scheduler=scheduler, movq=movq)
        for pipe in (self.prior_pipe, self.helper):
            pipe.set_progress_bar_config(disable=True)
        self.vae_scale_factor: int = 2 ** (len(movq.config.block_out_channels) - 1)
        self.native_resolution: int = native_resolution or int(
            unet.config.sample_size * self.vae_scale_factor)
        self.prior_num_inference_steps = prior_num_inference_steps
        self.prior_guidance_scale = prior_guidance_scale
        self._rgb_fit: torch.Tensor | None = None

    # -- components ------------------------------------------------------------------------------
    @property
    def components(self) -> dict[str, Any]:
        parts = {name: getattr(self.prior_pipe, name) for name in PRIOR_COMPONENTS}
        parts["prior_scheduler"] = parts.pop("scheduler")
        parts.update(unet=self.unet, scheduler=self.scheduler, movq=self.movq)
        return parts

    @property
    def unet(self) -> Any:
        return self.helper.unet

    @property
    def pad_multiple(self) -> int:
        # Kandinsky's resnet up/down blocks need latents divisible by every downsampling too.
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def movq(self) -> Any:
        return self.helper.movq

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        for pipe in (self.prior_pipe, self.helper):
            same = dtype is not None and all(
                getattr(m, "dtype", dtype) == dtype for m in pipe.components.values()
                if isinstance(m, torch.nn.Module))
            pipe.to(device=device, dtype=None if same else dtype)
        self._rgb_fit = None
        return self

    def options(self) -> list[p.OptionSpec]:
        return [
            p.OptionSpec("prior_num_inference_steps", "int", int(self.prior_num_inference_steps),
                         1, p.MAX_STEPS, label="Prior steps",
                         help="Steps of the prior (prompt to image embedding)."),
            p.OptionSpec("prior_guidance_scale", "float", float(self.prior_guidance_scale), 0.0,
                         p.MAX_GUIDANCE, label="Prior guidance"),
        ]

    # -- steps of a run --------------------------------------------------------------------------
    def image_embeddings(
        self, prompt: str, negative_prompt: str | None, num_images: int, generator: Generator,
        num_inference_steps: int, guidance_scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The prior's image embedding for the prompt and for the negative prompt (or the
        embedding of a blank image when there is none), one row per image.

        With one generator per image the prior runs once per image, so that variant ``i`` is
        reproduced alone by its own generator (and diffusers' prior, which needs one generator
        per prompt *and* negative prompt row, never sees a mismatched list)."""
        def run(count: int, gen: Generator) -> tuple[torch.Tensor, torch.Tensor]:
            embeds, negative = self.prior_pipe(
                prompt=prompt, negative_prompt=negative_prompt, num_images_per_prompt=count,
                num_inference_steps=num_inference_steps, generator=gen,
                guidance_scale=guidance_scale, output_type="pt", return_dict=False,
            )
            return embeds, negative

        if isinstance(generator, list):
            check_generators(generator, num_images)
            pairs = [run(1, g) for g in generator]
            return torch.cat([e for e, _ in pairs]), torch.cat([n for _, n in pairs])
        return run(num_images, generator)

    def prepare_image(self, image: Image.Image) -> tuple[torch.Tensor, np.ndarray]:
        """Image -> (1 x 3 x H' x W' in [-1, 1], H x W x 3 float input in [0, 1]); H', W' are
        rounded up to ``pad_multiple`` (MoVQ's cell times the UNet's downsampling) by repeating
        border pixels, cropped back afterwards."""
        padded, original = padded_pixels(image, self.pad_multiple)
        tensor = self.helper.image_processor.preprocess(
            Image.fromarray(padded), padded.shape[0], padded.shape[1])
        return tensor, original

    def prepare_latents(
        self, image: torch.Tensor, batch_size: int, generator: Generator, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``z_init`` (MoVQ's pre-quantisation latents, B copies) and the one noise tensor."""
        image = image.to(device=self.device, dtype=self.movq.dtype)
        z_init = self.movq.encode(image)["latents"].to(dtype)
        z_init = z_init.repeat_interleave(batch_size, dim=0)
        noise = randn_tensor(z_init.shape, generator=generator, device=self.device, dtype=dtype)
        return z_init, noise

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> B x H' x W' x 3 float32 in [0, 1] (padded size)."""
        decoded = self.movq.decode(latents.to(self.movq.dtype), force_not_quantize=True)["sample"]
        return self.helper.image_processor.postprocess(decoded, output_type="np")

    def rgb_fit(self) -> torch.Tensor:
        """A least-squares linear map from MoVQ latents (+ bias) to RGB, fitted once per model
        on a colourful calibration picture: published latent->RGB factors exist for the SD VAEs,
        not for MoVQ, and a fit works for any MoVQ (tiny ones included)."""
        if self._rgb_fit is None:
            size = max(16 * self.vae_scale_factor, self.pad_multiple)
            y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
            rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(9.0 * (x + 0.5 * y))], axis=-1)
            rgb[: size // 2, : size // 2] = rgb[: size // 2, : size // 2][..., ::-1]
            picture = Image.fromarray((rgb * 255).round().astype(np.uint8))
            tensor, _ = self.prepare_image(picture)
            with torch.no_grad():
                lat = self.movq.encode(tensor.to(self.device, self.movq.dtype))["latents"]
            lat = lat[0].float().cpu().flatten(1).T  # cells x C
            target = F.avg_pool2d(torch.from_numpy(rgb).permute(2, 0, 1)[None],
                                  self.vae_scale_factor)[0].flatten(1).T  # cells x 3
            design = torch.cat([lat, torch.ones(lat.shape[0], 1)], dim=1)
            self._rgb_fit = torch.linalg.lstsq(design, target).solution
        return self._rgb_fit

    # -- the run ---------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str = "",
        image: Image.Image | None = None,
        change_map: Any = None,
        negative_prompt: str | None = None,
        num_inference_steps: int = 30,
        guidance_scale: float = 4.0,
        generator: Generator = None,
        num_images_per_prompt: int = 1,
        scheduler: str | None = None,
        output_type: str = "pil",
        keep_unchanged_exact: bool = True,
        callback: Callable[[StepInfo], None] | None = None,
        cancel: threading.Event | None = None,
        refiner_split: float | None = None,
        prior_num_inference_steps: int | None = None,
        prior_guidance_scale: float | None = None,
    ) -> DifferentialDiffusionOutput:
        """Edit ``image`` where ``change_map`` allows (1 = change fully, 0 = keep exactly).

        Same arguments as the SD pipeline; ``guidance_scale`` is the decoder's, the prior has
        its own (``prior_guidance_scale``, ``prior_num_inference_steps``; defaults 4.0 and 25
        like diffusers' combined pipeline). ``negative_prompt`` steers both: the prior samples an
        image embedding for it, which is the decoder's unconditional branch.
        """
        prior_steps = int(prior_num_inference_steps or self.prior_num_inference_steps)
        prior_guidance = self.prior_guidance_scale if prior_guidance_scale is None \
            else float(prior_guidance_scale)

        # 1. Image and map: steps per latent pixel; Algorithm 2 skips what changes nothing (an
        #    all-zero map runs no model at all, not even the prior).
        run = self.prepare_run(image, change_map, num_inference_steps, num_images_per_prompt,
                               output_type, keep_unchanged_exact, refiner_split)
        if run.longest == 0:
            return self.unchanged_result(run, generator)
        raise_if_cancelled(cancel, 0, run.longest)
        sched, start, timesteps = self.prepare_timesteps(run, scheduler)
        k, batch, steps = run.k, run.batch, run.steps

        # 2. Prior -> image embeddings (drawn first, like diffusers' combined pipeline).
        do_cfg = guidance_scale > 1.0
        embeds, negative = self.image_embeddings(prompt, negative_prompt, batch, generator,
                                                 prior_steps, prior_guidance)
        if do_cfg:
            embeds = torch.cat([negative, embeds])
        embeds = embeds.to(device=self.device, dtype=self.unet.dtype)
        dtype = embeds.dtype

        # 3. Latents and the one noise tensor.
        z_init, noise = self.prepare_latents(run.image_tensor, batch, generator, dtype)
        latents = sched.add_noise(z_init, noise, timesteps[:1].repeat(batch))
        step_kwargs = extra_step_kwargs(sched, generator)
        learned_variance = uses_learned_variance(sched)
        channels = latents.shape[1]
        rgb_fit = self.rgb_fit() if callback is not None else None

        # 4. The loop. Step index i runs from `start` (noisiest) to k-1.
        for j, t in enumerate(timesteps):
            raise_if_cancelled(cancel, j, len(timesteps))
            i = start + j // sched.order
            # Nested masks: a region with n steps is re-injected up to and including step k-n.
            latents = self.reinject(sched, latents, z_init, noise, t, keep=steps <= k - i,
                                    changes=reinjection_changes(j, i, k, run.fewest))
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_input = sched.scale_model_input(model_input, t)
            noise_pred = self.unet(
                sample=model_input, timestep=t, encoder_hidden_states=None,
                added_cond_kwargs={"image_embeds": embeds}, return_dict=False,
            )[0]
            if do_cfg:  # guide the noise; the variance comes from the conditional branch
                noise_pred, variance = noise_pred.split(channels, dim=1)
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + guidance_scale * (text - uncond)
                noise_pred = torch.cat([noise_pred, variance.chunk(2)[1]], dim=1)
            if not learned_variance:
                noise_pred = noise_pred[:, :channels]
            out = sched.step(noise_pred, t, latents, **step_kwargs, return_dict=True)
            latents = out.prev_sample
            if callback is not None:
                callback(KandinskyStepInfo(
                    step=j + 1, total=len(timesteps), latents=latents,
                    denoised=clean_estimate(sched, out), family=self.family,
                    latent_size=run.latent_size, backdrop=run.backdrop, rgb_fit=rgb_fit))
        if run.fewest == 0:  # strength-0 regions end exactly on the original latent
            latents = torch.where(steps == 0, z_init, latents)

        # 5. Decode, crop the padding, put the kept pixels back exactly.
        return self.finish_run(run, latents, len(timesteps))
