"""Differential diffusion for DeepFloyd IF (a pixel-space cascade).

The method (``docs/method.md``, "How each family differs") applies the loop to IF's stage I
(a small square-ish image from the prompt) and stage II (x4 super-resolution conditioned on the
upscaled stage-I image); stage III, when present, upscales as usual. Here the loop runs
on *pixels*: ``x_init`` is the input image resized to each stage's resolution and the change
map is averaged down to that resolution (box filter, the pixel-space analogue of the latent-cell
mean). Convention: **1 (white) = change fully, 0 (black) = keep**; ``mu_paper = 1 - change_map``.

Prompt encoding and image preprocessing are diffusers' IF img2img pipelines, by composition
(``self.helper``, ``self.helper_2``), so a uniform map of value ``s`` reproduces
``IFImg2ImgPipeline`` at ``strength=s`` on stage I and ``IFImg2ImgSuperResolutionPipeline`` at
``strength=s`` on stage II, on the same components, seed and steps. IF's pipelines only offer
the old per-step ``callback(i, t, x)``; this loop reports :class:`StepInfo` like every family,
with a downscaled pixel preview.

The result comes back at the input's size (the last stage's image resized), with strength-0
pixels put back exactly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import IFImg2ImgPipeline, IFImg2ImgSuperResolutionPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from server.maps import to_change_map
from server.pipelines import (
    DifferentialDiffusionOutput,
    DifferentialPipeline,
    Generator,
    Run,
    StepInfo,
    check_call_args,
    check_generators,
    check_image,
    clean_estimate,
    extra_step_kwargs,
    raise_if_cancelled,
    reinjection_changes,
    run_timesteps,
    steps_per_pixel,
    unchanged_output,
    uses_learned_variance,
)
from shared import protocol as p

NO_SAFETY = {"safety_checker": None, "feature_extractor": None, "watermarker": None,
             "requires_safety_checker": False}


@dataclass
class PixelStepInfo(StepInfo):
    """A step of a pixel-space stage; ``latents`` are pixels in [-1, 1] at that stage's size."""

    stage: int = 1
    preview_size: tuple[int, int] | None = None  # (w, h): every preview at stage I's size

    def generated_preview(self, variant: int = 0) -> np.ndarray:
        """A uint8 h x w x 3 preview: the clean estimate (or the noisy image), area-downscaled."""
        source = self.denoised if self.denoised is not None else self.latents
        x = source[variant : variant + 1].detach().to("cpu", torch.float32)
        if self.preview_size is not None and tuple(x.shape[-2:]) != self.preview_size[::-1]:
            x = F.interpolate(x, size=self.preview_size[::-1], mode="area")
        rgb = ((x[0].permute(1, 2, 0) + 1.0) / 2.0).clamp(0.0, 1.0)
        return np.ascontiguousarray((rgb * 255.0).round().to(torch.uint8).numpy())


@dataclass
class Stage:
    """One pixel-space stage of the cascade and what its loop needs."""

    number: int
    unet: Any
    scheduler: Any  # a fresh scheduler for this run
    x_init: torch.Tensor  # B x 3 x h x w in [-1, 1]
    steps: torch.Tensor  # 1 x 1 x h x w: steps each pixel receives
    k: int
    guidance_scale: float
    start: int = 0  # first step index that runs (Algorithm 2: k - max steps)
    timesteps: torch.Tensor | None = None  # the timesteps that will run
    condition: torch.Tensor | None = None  # stage II: the noised, upscaled stage-I image
    noise_level: torch.Tensor | None = None  # stage II: its noise level (a class label)


class DeepFloydIFDifferentialPipeline(DifferentialPipeline):
    """DeepFloyd IF: the differential loop on stage I and on stage II; stage III as usual."""

    family = "if"
    component_names = ("tokenizer", "text_encoder", "unet", "scheduler", "unet_2", "scheduler_2",
                       "image_noising_scheduler")

    def __init__(
        self,
        tokenizer: Any,
        text_encoder: Any,
        unet: Any,
        scheduler: Any,
        unet_2: Any = None,
        scheduler_2: Any = None,
        image_noising_scheduler: Any = None,
        upscaler: Any = None,
        native_resolution: int | None = None,
        noise_level: int = 250,
        upscaler_noise_level: int = 100,
    ) -> None:
        self.helper = IFImg2ImgPipeline(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet,
                                        scheduler=scheduler, **NO_SAFETY)
        self.helper_2: IFImg2ImgSuperResolutionPipeline | None = None
        if unet_2 is not None:
            # Stage II shares stage I's T5 (the real stages ship the same encoder).
            self.helper_2 = IFImg2ImgSuperResolutionPipeline(
                tokenizer=tokenizer, text_encoder=text_encoder, unet=unet_2,
                scheduler=scheduler_2, image_noising_scheduler=image_noising_scheduler,
                **NO_SAFETY)
        self.upscaler = upscaler  # stage III: diffusers' StableDiffusionUpscalePipeline, or None
        for pipe in (self.helper, self.helper_2, self.upscaler):
            if pipe is not None:
                pipe.set_progress_bar_config(disable=True)
        last = self.helper_2 or self.helper
        self.native_resolution: int = native_resolution or int(
            last.unet.config.sample_size * (4 if upscaler is not None else 1))
        self.noise_level = noise_level
        self.upscaler_noise_level = upscaler_noise_level

    # -- components ------------------------------------------------------------------------------
    @property
    def components(self) -> dict[str, Any]:
        parts = {"tokenizer": self.helper.tokenizer, "text_encoder": self.helper.text_encoder,
                 "unet": self.helper.unet, "scheduler": self.helper.scheduler}
        if self.helper_2 is not None:
            parts.update(unet_2=self.helper_2.unet, scheduler_2=self.helper_2.scheduler,
                         image_noising_scheduler=self.helper_2.image_noising_scheduler)
        return parts

    @property
    def unet(self) -> Any:
        return self.helper.unet

    @property
    def stages(self) -> dict[str, bool]:
        """Which optional stages this model has (``stage_2`` / ``stage_3`` in a call)."""
        return {"stage_2": self.helper_2 is not None, "stage_3": self.upscaler is not None}

    def options(self) -> list[p.OptionSpec]:
        specs: list[p.OptionSpec] = []
        if self.helper_2 is not None:
            specs += [
                p.OptionSpec("stage_2", "bool", True, label="Stage II (x4 upscale)",
                             help="Off: stage I only, scaled up to the picture's size."),
                p.OptionSpec("num_inference_steps_2", "int", None, 1, p.MAX_STEPS,
                             label="Stage II steps", help="Default: the job's steps."),
                p.OptionSpec("guidance_scale_2", "float", None, 0.0, p.MAX_GUIDANCE,
                             label="Stage II guidance", help="Default: the job's guidance."),
            ]
        if self.upscaler is not None:
            specs.append(p.OptionSpec("stage_3", "bool", True, label="Stage III (x4 upscaler)",
                                      help="Runs after stage II, as usual (not differential)."))
        return specs

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        for pipe in (self.helper, self.helper_2, self.upscaler):
            if pipe is None:
                continue
            same = dtype is not None and pipe.unet.dtype == dtype
            pipe.to(device=device, dtype=None if same else dtype)
        return self

    # -- pieces of a run -------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, negative_prompt: str | None, num_images: int,
                      do_cfg: bool) -> torch.Tensor:
        embeds, negative = self.helper.encode_prompt(
            prompt, do_cfg, num_images_per_prompt=num_images, device=self.device,
            negative_prompt=negative_prompt, clean_caption=False)
        return torch.cat([negative, embeds]) if do_cfg else embeds

    def stage_input(self, image: Image.Image, stage: int) -> torch.Tensor:
        """The input image at a stage's resolution, 1 x 3 x h x w in [-1, 1].

        IF's own resize (the short side to the UNet's sample size, the long side a multiple of
        8), unless that size does not divide by the UNet's downsampling (IF's resnet blocks
        cannot upsample to odd sizes, e.g. IF-II on a wide crop): then both sides are rounded
        to multiples of it."""
        helper = self.helper if stage == 1 else self.helper_2
        x = helper.preprocess_image(image) if stage == 1 else \
            helper.preprocess_original_image(image)
        multiple = 2 ** (len(helper.unet.config.block_out_channels) - 1)
        height, width = x.shape[-2:]
        if height % multiple == 0 and width % multiple == 0:
            return x
        size = tuple(max(multiple, int(round(n / multiple)) * multiple) for n in (width, height))
        resized = np.asarray(image.convert("RGB").resize(size, Image.BICUBIC), np.float32)
        return torch.from_numpy(resized / 127.5 - 1.0).permute(2, 0, 1)[None]

    @staticmethod
    def stage_map(pixel_map: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """The change map averaged down (or box-resized up) to ``size = (w, h)``: 1 x 1 x h x w."""
        if pixel_map.shape != (size[1], size[0]):
            resized = Image.fromarray(pixel_map, mode="F").resize(size, Image.BOX)
            pixel_map = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
        return torch.from_numpy(np.ascontiguousarray(pixel_map, dtype=np.float64))[None, None]

    def stage_2_condition(self, stage_1: torch.Tensor, size: tuple[int, int],
                          generator: Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage II's conditioning: stage I's image upscaled to ``size = (h, w)`` and noised to
        ``noise_level`` (also returned, as the class label), drawn like diffusers draws it."""
        upscaled = F.interpolate(stage_1, size, mode="bilinear", align_corners=True)
        level = torch.tensor([self.noise_level] * upscaled.shape[0], device=upscaled.device)
        noise = randn_tensor(upscaled.shape, generator=generator, device=upscaled.device,
                             dtype=upscaled.dtype)
        noising = self.helper_2.image_noising_scheduler
        return noising.add_noise(upscaled, noise, timesteps=level), level

    def run_stage(
        self, stage: Stage, noise: torch.Tensor, embeds: torch.Tensor, generator: Generator,
        callback: Callable[[StepInfo], None] | None, cancel: threading.Event | None,
        progress: list[int], run: Run, preview_size: tuple[int, int],
    ) -> torch.Tensor:
        """Algorithms 1 + 2 in pixel space for one stage; returns B x 3 x h x w in [-1, 1].

        ``noise``: the one Gaussian draw reused for every noised original at this stage."""
        sched, k, x_init = stage.scheduler, stage.k, stage.x_init
        start, timesteps = stage.start, stage.timesteps
        if len(timesteps) == 0:  # nothing changes at this stage's resolution
            return x_init
        x = sched.add_noise(x_init, noise, timesteps[:1].repeat(x_init.shape[0]))
        do_cfg = stage.guidance_scale > 1.0
        step_kwargs = extra_step_kwargs(sched, generator)
        learned_variance = uses_learned_variance(sched)
        class_labels = None
        if stage.noise_level is not None:
            class_labels = torch.cat([stage.noise_level] * 2) if do_cfg else stage.noise_level
        steps = stage.steps
        fewest = int(steps.min())
        for j, t in enumerate(timesteps):
            raise_if_cancelled(cancel, progress[0], progress[1])
            i = start + j // sched.order
            # Nested masks: a region with n steps is re-injected up to and including step k-n.
            x = self.reinject(sched, x, x_init, noise, t, keep=steps <= k - i,
                              changes=reinjection_changes(j, i, k, fewest))
            model_input = x if stage.condition is None else torch.cat([x, stage.condition], dim=1)
            model_input = torch.cat([model_input] * 2) if do_cfg else model_input
            model_input = sched.scale_model_input(model_input, t)
            noise_pred = stage.unet(model_input, t, encoder_hidden_states=embeds,
                                    class_labels=class_labels, return_dict=False)[0]
            if do_cfg:  # guide the noise; the variance comes from the conditional branch
                uncond, text = noise_pred.chunk(2)
                uncond, text, variance = uncond[:, :3], text[:, :3], text[:, 3:]
                noise_pred = torch.cat([uncond + stage.guidance_scale * (text - uncond),
                                        variance], dim=1)
            if not learned_variance:
                noise_pred = noise_pred[:, :3]
            out = sched.step(noise_pred, t, x, **step_kwargs, return_dict=True)
            x = out.prev_sample
            progress[0] += 1
            if callback is not None:
                callback(PixelStepInfo(
                    step=progress[0], total=progress[1], latents=x,
                    denoised=clean_estimate(sched, out), family=self.family,
                    backdrop=run.backdrop, stage=stage.number, preview_size=preview_size))
        if fewest > 0:
            return x
        return torch.where(steps == 0, x_init, x)  # strength 0 ends exactly on the original

    def upscale(
        self, x: torch.Tensor, prompt: str, negative_prompt: str | None, num_inference_steps: int,
        guidance_scale: float, generator: Generator, callback: Callable[[StepInfo], None] | None,
        cancel: threading.Event | None, progress: list[int], run: Run,
        preview_size: tuple[int, int],
    ) -> torch.Tensor:
        """Stage III as usual (diffusers' x4 upscaler); B x 3 x 4h x 4w in [-1, 1].

        Its steps are reported too (previews keep showing stage II's result: its latents are
        the upscaler's VAE's) and a cancel stops it between steps."""
        batch = x.shape[0]

        def on_step(i: int, t: Any, latents: torch.Tensor) -> None:
            progress[0] += 1
            if callback is not None:
                callback(PixelStepInfo(step=progress[0], total=progress[1], latents=x,
                                       family=self.family, backdrop=run.backdrop, stage=3,
                                       preview_size=preview_size))
            raise_if_cancelled(cancel, progress[0], progress[1])

        out = self.upscaler(
            prompt=[prompt] * batch,
            negative_prompt=None if negative_prompt is None else [negative_prompt] * batch,
            image=(x.float() / 2.0 + 0.5).clamp(0.0, 1.0), noise_level=self.upscaler_noise_level,
            generator=generator,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            output_type="pt", callback=on_step, callback_steps=1).images
        return out.to(x.dtype) * 2.0 - 1.0

    # -- the run ---------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str = "",
        image: Image.Image | None = None,
        change_map: Any = None,
        negative_prompt: str | None = None,
        num_inference_steps: int = 30,
        guidance_scale: float = 7.0,
        generator: Generator = None,
        num_images_per_prompt: int = 1,
        scheduler: str | None = None,
        output_type: str = "pil",
        keep_unchanged_exact: bool = True,
        callback: Callable[[StepInfo], None] | None = None,
        cancel: threading.Event | None = None,
        refiner_split: float | None = None,
        stage_2: bool = True,
        stage_3: bool = True,
        num_inference_steps_2: int | None = None,
        guidance_scale_2: float | None = None,
    ) -> DifferentialDiffusionOutput:
        """Edit ``image`` where ``change_map`` allows (1 = change fully, 0 = keep exactly).

        Same arguments as the SD pipeline. ``stage_2`` / ``stage_3``: run those stages when the
        model has them; stage II uses ``num_inference_steps_2`` / ``guidance_scale_2`` when given
        (defaults: the stage-I values). ``output_type="latent"`` gives the last stage's pixels,
        B x 3 x h x w in [-1, 1] at that stage's size. ``steps_run`` counts UNet steps over all
        stages (stage III: all its steps); ``steps_per_latent_pixel`` is the last differential
        stage's map. Steps are numbered across stages in ``StepInfo`` (``.stage`` says which).
        """
        k, batch = check_call_args(image, change_map, output_type, num_inference_steps,
                                   num_images_per_prompt)
        self.check_refiner_split(refiner_split)
        check_image(image)
        k2 = k if num_inference_steps_2 is None else int(num_inference_steps_2)
        if k2 < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {k2}.")
        check_generators(generator, batch)
        image = image.convert("RGB")
        original = np.asarray(image).astype(np.float32) / 255.0
        height, width = original.shape[:2]
        pixel_map = to_change_map(change_map, (width, height))
        if float(pixel_map.max()) * max(k, k2) < 1.0 - 1e-4 and output_type != "latent":
            # No stage would run a step: nothing may change, so no model runs at all.
            return unchanged_output(image, original, batch, output_type)
        use_2 = stage_2 and self.helper_2 is not None
        use_3 = use_2 and stage_3 and self.upscaler is not None

        # 1. Stages: inputs, maps, schedulers (fresh per run) and their step counts.
        def make_stage(number: int, k_stage: int, unet: Any, base_scheduler: Any,
                       guidance: float) -> Stage:
            x_init = self.stage_input(image, number).to(self.device, unet.dtype)
            size = (x_init.shape[-1], x_init.shape[-2])
            steps = steps_per_pixel(self.stage_map(pixel_map, size), k_stage).to(self.device)
            # Algorithm 2: skip what changes nothing (all of it where no pixel gets a step).
            sched, start, timesteps = run_timesteps(scheduler, base_scheduler, k_stage,
                                                    int(steps.max()), self.device)
            return Stage(number, unet, sched, x_init.repeat_interleave(batch, dim=0), steps,
                         k_stage, guidance, start, timesteps)

        stages = [make_stage(1, k, self.helper.unet, self.helper.scheduler, guidance_scale)]
        if use_2:
            g2 = guidance_scale if guidance_scale_2 is None else float(guidance_scale_2)
            stages.append(make_stage(2, k2, self.helper_2.unet, self.helper_2.scheduler, g2))
        # UNet calls over all stages (stage III runs all its steps).
        total = sum(len(s.timesteps) for s in stages) + (k2 if use_3 else 0)
        progress = [0, total]
        preview_size = (stages[0].x_init.shape[-1], stages[0].x_init.shape[-2])
        # The composite blends below 1/k of the stage with fewer steps (its coarsest strength).
        run = Run(image, original, pixel_map, stages[-1].steps, min(k, k2), batch, output_type,
                  keep_unchanged_exact)

        # 2. Prompt embeddings (T5, shared by both stages), one set per guidance setting.
        raise_if_cancelled(cancel, 0, total)
        embeds = {cfg: self.encode_prompt(prompt, negative_prompt, batch, cfg)
                  for cfg in {s.guidance_scale > 1.0 for s in stages}}

        # 3. Stage I, then stage II conditioned on stage I's result. Random draws in diffusers'
        #    order: each stage's image noise, then (stage II) the conditioning noise.
        x = stages[0].x_init
        for stage in stages:
            noise = randn_tensor(stage.x_init.shape, generator=generator, device=self.device,
                                 dtype=stage.x_init.dtype)
            if stage.number == 2:
                stage.condition, stage.noise_level = self.stage_2_condition(
                    x, tuple(stage.x_init.shape[-2:]), generator)
            x = self.run_stage(stage, noise, embeds[stage.guidance_scale > 1.0], generator,
                               callback, cancel, progress, run, preview_size)
        if use_3:
            raise_if_cancelled(cancel, progress[0], progress[1])
            x = self.upscale(x, prompt, negative_prompt, k2, guidance_scale, generator,
                             callback, cancel, progress, run, preview_size)

        # 4. Output at the input's size, kept pixels put back exactly.
        return self.finish_run(run, x, total)

    def generated_pixels(self, run: Run, latents: torch.Tensor) -> np.ndarray:
        """The last stage's pixels (B x 3 x h x w in [-1, 1]) -> B x H x W x 3 floats in [0, 1]
        at the input's size (the last stage's size is IF's own)."""
        rgb = (latents.float() / 2.0 + 0.5).clamp(0.0, 1.0)
        height, width = run.original.shape[:2]
        if tuple(rgb.shape[-2:]) != (height, width):
            rgb = F.interpolate(rgb, size=(height, width), mode="bicubic", antialias=True,
                                align_corners=False).clamp(0.0, 1.0)
        return rgb.permute(0, 2, 3, 1).cpu().numpy()
