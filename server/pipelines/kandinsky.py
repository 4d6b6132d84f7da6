"""Differential diffusion for Kandinsky 2.2 (prior + decoder, MoVQ latent space).

The paper's loop fits unchanged (see /work/shared/paper-notes.md, "Other model families"): the
prompt goes through the unCLIP *prior*, which samples a CLIP image embedding; the decoder UNet
is conditioned on that embedding (no text states) and denoises MoVQ latents with the per-pixel
change map. Convention: **1 (white) = change fully, 0 (black) = keep**; the paper's map is
``mu_paper = 1 - change_map``.

The prior and the image pre/post-processing are diffusers' own pipelines, used by composition
(``self.prior_pipe``, ``self.helper``), so a uniform map of value ``s`` reproduces
``KandinskyV22PriorPipeline`` followed by ``KandinskyV22Img2ImgPipeline`` at ``strength=s``
exactly (same generator, drawn in the same order: prior first, then the decoder's noise).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import KandinskyV22Img2ImgPipeline, KandinskyV22PriorPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from server.maps import to_change_map
from server.pipelines import (
    Cancelled,
    DifferentialDiffusionOutput,
    Generator,
    HelperPipeline,
    StepInfo,
    check_call_args,
    check_generators,
    composite_unchanged,
    extra_step_kwargs,
    output_images,
    padded_pixels,
    prepare_steps,
    run_timesteps,
    unchanged_output,
    uses_learned_variance,
)

DEFAULT_PRIOR = "kandinsky-community/kandinsky-2-2-prior"
PRIOR_COMPONENTS = ("prior", "image_encoder", "text_encoder", "tokenizer", "scheduler",
                    "image_processor")


@dataclass
class KandinskyStepInfo(StepInfo):
    """A step of the decoder; previews map MoVQ latents to RGB with a per-model linear fit."""

    rgb_fit: torch.Tensor | None = None  # (C + 1) x 3: latent channels and a bias -> RGB

    def preview(self, variant: int = 0) -> np.ndarray:
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


class KandinskyV22DifferentialPipeline(HelperPipeline):
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
        # Kandinsky's resnet up/down blocks need latents divisible by every downsampling too.
        self.pad_multiple = self.vae_scale_factor * 2 ** (len(unet.config.block_out_channels) - 1)
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
        if refiner_split is not None:
            raise ValueError("refiner_split is for SDXL with a refiner; this is Kandinsky 2.2.")
        k, batch = check_call_args(image, change_map, output_type, num_inference_steps,
                                   num_images_per_prompt)
        prior_steps = int(prior_num_inference_steps or self.prior_num_inference_steps)
        prior_guidance = self.prior_guidance_scale if prior_guidance_scale is None \
            else float(prior_guidance_scale)

        # 1. Image and map; the map is averaged over each latent cell ("locality").
        image_tensor, original = self.prepare_image(image)
        height, width = original.shape[:2]
        pixel_map = to_change_map(change_map, (width, height))
        steps = prepare_steps(pixel_map, self.pad_multiple, self.vae_scale_factor, k, self.device)
        longest = int(steps.max())  # Algorithm 2: only the last `longest` steps can change anything
        if longest == 0:  # an all-zero map: nothing may change, so no model (not even the prior) runs
            if output_type == "latent":
                z_init, _ = self.prepare_latents(image_tensor, batch, None, self.unet.dtype)
                return DifferentialDiffusionOutput(z_init, 0, steps)
            return unchanged_output(image, original, batch, output_type)

        # 2. Scheduler (a fresh one per run) and the timesteps that will run.
        sched, start, timesteps = run_timesteps(scheduler, self.scheduler, k, longest, self.device)

        # 3. Prior -> image embeddings (drawn first, like diffusers' combined pipeline).
        if cancel is not None and cancel.is_set():
            raise Cancelled("Cancelled before the first step.")
        do_cfg = guidance_scale > 1.0
        embeds, negative = self.image_embeddings(prompt, negative_prompt, batch, generator,
                                                 prior_steps, prior_guidance)
        if do_cfg:
            embeds = torch.cat([negative, embeds])
        embeds = embeds.to(device=self.device, dtype=self.unet.dtype)
        dtype = embeds.dtype

        # 4. Latents and the one noise tensor.
        z_init, noise = self.prepare_latents(image_tensor, batch, generator, dtype)
        latents = sched.add_noise(z_init, noise, timesteps[:1].repeat(batch))
        step_kwargs = extra_step_kwargs(sched, generator)
        learned_variance = uses_learned_variance(sched)
        channels = latents.shape[1]
        latent_size = (-(-width // self.vae_scale_factor), -(-height // self.vae_scale_factor))
        rgb_fit = self.rgb_fit() if callback is not None else None

        # 5. The loop. Step index i runs from `start` (noisiest) to k-1.
        for j, t in enumerate(timesteps):
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"Cancelled after {j} of {len(timesteps)} steps.")
            i = start + j // sched.order
            latents = self.reinject(sched, latents, z_init, noise, t, keep=steps <= k - i)
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
                    denoised=getattr(out, "pred_original_sample", None), family=self.family,
                    latent_size=latent_size, rgb_fit=rgb_fit))
        latents = torch.where(steps == 0, z_init, latents)

        # 6. Decode, crop the padding, put the kept pixels back exactly.
        if output_type == "latent":
            return DifferentialDiffusionOutput(latents, len(timesteps), steps)
        generated = self.decode_latents(latents)[:, :height, :width]
        if keep_unchanged_exact:
            generated = composite_unchanged(generated, original, pixel_map, k)
        return DifferentialDiffusionOutput(output_images(generated, output_type), len(timesteps),
                                           steps)


# -- loading -------------------------------------------------------------------------------------
def is_kandinsky22(model: str) -> bool:
    """Whether ``model`` names a Kandinsky 2.2 model (built-in id, hub id or local folder)."""
    if model == "tiny-kandinsky22":
        return True
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "prior").is_dir() and (path / "decoder").is_dir():
            return True
        return model_index_class(path).startswith("KandinskyV22")
    return not path.exists() and "kandinsky-2-2" in model.lower()


def load_kandinsky22(model: str, dtype: torch.dtype = torch.float32,
                     prior: str | None = None) -> KandinskyV22DifferentialPipeline:
    """``tiny-kandinsky22``; a local folder holding ``prior/`` and ``decoder/`` diffusers
    folders; a local decoder folder or a hub decoder id (the prior then comes from ``prior``, by
    default the hub's ``kandinsky-community/kandinsky-2-2-prior``, cached). Safetensors only."""
    if model == "tiny-kandinsky22":
        from server.tiny_pixel import tiny_kandinsky22_components

        prior_parts, decoder_parts = tiny_kandinsky22_components()
        return KandinskyV22DifferentialPipeline(
            **{n: prior_parts[n] for n in PRIOR_COMPONENTS if n != "scheduler"},
            prior_scheduler=prior_parts["scheduler"], **decoder_parts)
    from server.models import _check_safetensors_folder

    path = Path(model).expanduser()
    if path.is_dir():
        _check_safetensors_folder(path)  # a clear refusal of pickled weights
    prior_source = prior or DEFAULT_PRIOR
    decoder_source = model
    if path.is_dir() and (path / "prior").is_dir() and (path / "decoder").is_dir():
        prior_source, decoder_source = str(path / "prior"), str(path / "decoder")
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True}
    prior_pipe = KandinskyV22PriorPipeline.from_pretrained(prior_source, **kwargs)
    decoder = KandinskyV22Img2ImgPipeline.from_pretrained(decoder_source, **kwargs)
    parts = {n: getattr(prior_pipe, n) for n in PRIOR_COMPONENTS}
    parts["prior_scheduler"] = parts.pop("scheduler")
    return KandinskyV22DifferentialPipeline(
        **parts, unet=decoder.unet, scheduler=decoder.scheduler, movq=decoder.movq)


def model_index_class(path: Path) -> str:
    """The ``_class_name`` a diffusers folder's model_index.json gives, or "" if none."""
    index = path / "model_index.json"
    if not index.is_file():
        return ""
    try:
        return str(json.loads(index.read_text()).get("_class_name", ""))
    except (OSError, ValueError):
        return ""
