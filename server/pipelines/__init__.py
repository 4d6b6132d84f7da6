"""Differential-diffusion pipelines, one file per model family (the loop written out in each).

The method as this project implements it is told in ``docs/method.md``. Shared here: the
per-step report (:class:`StepInfo`), the cancellation exception, the output, the pieces of the
method that every family uses the same way (the map's steps per latent pixel, the skipped
steps, re-injection, the pixel composite) and the base class :class:`DifferentialPipeline`,
whose ``prepare_run`` / ``finish_run`` open and close every family's run. A family's file holds
its components, its prompt encoding and its loop; loading models is ``server.models``' job.
Change maps follow the painter's convention (1 = change fully, 0 = keep; ``mu_paper = 1 - map``).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils import numpy_to_pil
from PIL import Image

from server.maps import to_change_map
from server.previews import PreviewBackdrop, latents_to_rgb
from server.schedulers import copy_scheduler, make_scheduler
from shared import protocol as p

Generator = torch.Generator | list[torch.Generator] | None

# floor(m*k + tiny): a float32 map of 0.7 is 0.69999999, and 10 steps of it must still be 7.
STEP_TOLERANCE = 1e-4


class Cancelled(Exception):
    """Raised between steps when the job's cancel event is set."""


def raise_if_cancelled(cancel: threading.Event | None, done: int, total: int) -> None:
    """Stop the run here when the job was cancelled (checked before every model call)."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("Cancelled before the first step." if done == 0 else
                        f"Cancelled after {done} of {total} steps.")


@dataclass
class StepInfo:
    """What the per-step hook receives after each denoising step."""

    step: int  # steps done, 1-based
    total: int  # steps this run will do
    latents: torch.Tensor  # current latents, B x C x h x w (h, w: padded image / 8)
    denoised: torch.Tensor | None = None  # the scheduler's clean estimate, when it gives one
    family: str = "sd"
    latent_size: tuple[int, int] | None = None  # (w, h) of the unpadded image on the latent grid
    backdrop: PreviewBackdrop | None = None  # the input and the composite's weights
    decoder: Callable[[torch.Tensor], np.ndarray] | None = None  # a tiny autoencoder; None: linear

    def preview(self, variant: int = 0) -> np.ndarray:
        """A cheap uint8 h x w x 3 RGB preview of one variant, composited over the input like
        the result will be (kept pixels show the input), at latent resolution (1/8 size)."""
        rgb = self.generated_preview(variant)
        return rgb if self.backdrop is None else self.backdrop.composite(rgb)

    def generated_preview(self, variant: int = 0) -> np.ndarray:
        """The generated picture alone: the clean estimate (or the latents) mapped to RGB, by the
        linear map (latent size) or the pipeline's preview decoder (a few times larger)."""
        source = self.denoised if self.denoised is not None else self.latents
        if self.decoder is not None:
            rgb = self.decoder(source[variant])
        else:
            rgb = latents_to_rgb(source[variant], self.family)
        if self.latent_size is not None:
            scale = rgb.shape[0] // source.shape[-2]
            rgb = rgb[: self.latent_size[1] * scale, : self.latent_size[0] * scale]
        return np.ascontiguousarray(rgb)


@dataclass
class DifferentialDiffusionOutput:
    images: Any  # list of PIL images, a B x H x W x 3 float array, or latents
    steps_run: int = 0
    steps_per_latent_pixel: torch.Tensor | None = field(default=None, repr=False)


# -- the map -----------------------------------------------------------------------------------------
def latent_change_map(change_map: np.ndarray, scale_factor: int) -> torch.Tensor:
    """Average the (padded) pixel map over each latent cell -> 1 x 1 x h x w float64 tensor.

    The map aligns with latents ("locality"): each latent pixel gets the mean of the pixels it
    covers.
    """
    pixels = torch.from_numpy(np.ascontiguousarray(change_map, dtype=np.float64))[None, None]
    return F.avg_pool2d(pixels, kernel_size=scale_factor, stride=scale_factor)


def steps_per_pixel(latent_map: torch.Tensor, num_inference_steps: int) -> torch.Tensor:
    """``n = floor(m * k + tiny)``: how many of the last steps each latent pixel receives."""
    n = torch.floor(latent_map * num_inference_steps + STEP_TOLERANCE)
    return n.clamp(0, num_inference_steps).to(torch.int64)


def unchanged_blend_weight(change_map: np.ndarray, num_inference_steps: int) -> np.ndarray:
    """Pixel weight of the generated image when compositing over the input.

    0 where the map is 0 (the input pixel, exactly), 1 from ``1/k`` up, smoothstep in between:
    values below ``1/k`` buy no denoising step, so blending them loses nothing the model made and
    avoids a seam at the border of kept regions.
    """
    return _smoothstep(_steps_fraction(change_map, num_inference_steps))


def _steps_fraction(change_map: np.ndarray, k: int) -> np.ndarray:
    """``clip(m * k, 0, 1)`` in float64: 1 from one whole step up."""
    return np.clip(change_map.astype(np.float64) * k, 0.0, 1.0)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def pad_to_multiple(array: np.ndarray, multiple: int) -> np.ndarray:
    """Repeat the last row/column until both sides are multiples of ``multiple``."""
    height, width = array.shape[:2]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
        return array
    pad = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, mode="edge")


def prepare_steps(pixel_map: np.ndarray, pad_multiple: int, scale_factor: int, k: int,
                  device: torch.device) -> torch.Tensor:
    """The pixel map -> steps each latent pixel receives (1 x 1 x h x w int64 on ``device``):
    padded like the image, averaged over each latent cell ("locality"), ``n = floor(m*k + tiny)``.
    """
    latent_map = latent_change_map(pad_to_multiple(pixel_map, pad_multiple), scale_factor)
    return steps_per_pixel(latent_map, k).to(device)


# -- the run's arguments -----------------------------------------------------------------------------
def check_call_args(image: Any, change_map: Any, output_type: str, num_inference_steps: int,
                    num_images_per_prompt: int) -> tuple[int, int]:
    """The checks every family makes first; returns ``(k, batch)`` as whole numbers."""
    if image is None or change_map is None:
        raise ValueError("Both an image and a change map are needed.")
    if output_type not in ("pil", "np", "latent"):
        raise ValueError(f"output_type must be 'pil', 'np' or 'latent', got {output_type!r}.")
    k = int(num_inference_steps)
    if k < 1:
        raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}.")
    batch = int(num_images_per_prompt)
    if batch < 1:
        raise ValueError(f"num_images_per_prompt must be at least 1, got {batch}.")
    return k, batch


def check_generators(generator: Generator, batch: int) -> None:
    """One generator for the whole batch, or one per image."""
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(f"Got {len(generator)} generators for {batch} images; pass one per image.")


def check_image(image: Any) -> None:
    """A non-empty PIL image, or a message saying what is wrong."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL image, got {type(image).__name__}.")
    if image.width < 1 or image.height < 1:
        raise ValueError("The image is empty (0 pixels).")


def padded_pixels(image: Image.Image, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """A checked image -> (its RGB pixels padded to ``multiple`` by repeating the border, uint8;
    the unpadded input as H x W x 3 float in [0, 1]). The result is cropped back afterwards."""
    check_image(image)
    pixels = np.asarray(image.convert("RGB"))
    return pad_to_multiple(pixels, multiple), pixels.astype(np.float32) / 255.0


# -- the run's scheduler -----------------------------------------------------------------------------
def skip_to_longest(sched: Any, k: int, longest: int) -> tuple[int, torch.Tensor]:
    """Algorithm 2 on a scheduler set to ``k`` steps: only the last ``longest`` steps can change
    anything (none when ``longest`` is 0). The first step index that runs, and the timesteps
    that will run; the scheduler is told where it begins."""
    start = k - longest
    # (PNDM lists more than k timesteps, so "from k on" is not empty by itself.)
    timesteps = sched.timesteps[start * sched.order :] if start < k else sched.timesteps[:0]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(start * sched.order)
    return start, timesteps


def reinjection_changes(j: int, i: int, k: int, fewest: int) -> bool:
    """Whether re-injection at the ``j``-th step run (step index ``i`` of ``k``) can change the
    latents: not at the first step (every region is the noised original already: the latents
    were made by the same ``add_noise`` at the same timestep), and not once every region runs
    (``k - i < fewest``: no cell is held; a uniform map's whole run)."""
    return j > 0 and k - i >= fewest


def run_timesteps(name: str | None, base_scheduler: Any, k: int, longest: int,
                  device: torch.device) -> tuple[Any, int, torch.Tensor]:
    """A fresh scheduler for one run (``name``, or a copy of the model's), set to ``k`` steps;
    with the first step index that runs and the timesteps that will run (see
    :func:`skip_to_longest`)."""
    sched = make_scheduler(name, base_scheduler.config) if name else copy_scheduler(base_scheduler)
    sched.set_timesteps(k, device=device)
    return (sched, *skip_to_longest(sched, k, longest))


def extra_step_kwargs(scheduler: Any, generator: Generator) -> dict[str, Any]:
    # Not every scheduler takes eta / a generator (ancestral ones draw fresh noise each step).
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = 0.0
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def uses_learned_variance(scheduler: Any) -> bool:
    """Whether ``scheduler.step`` takes the model's variance channels too (DDPM, DPM-Solver with
    a ``learned`` / ``learned_range`` variance type); other schedulers get the noise only. The
    config alone does not say: ``from_config`` keeps keys the new scheduler class ignores."""
    if "variance_type" not in inspect.signature(type(scheduler).__init__).parameters:
        return False
    return getattr(scheduler.config, "variance_type", None) in ("learned", "learned_range")


def clean_estimate(scheduler: Any, out: Any) -> torch.Tensor | None:
    """The scheduler's estimate of the finished sample after a step (previews show it)."""
    estimate = getattr(out, "pred_original_sample", None)
    if estimate is None:
        estimate = getattr(out, "denoised", None)  # LCM
    if estimate is not None:  # DDIM, DDPM, Euler (a), LMS, LCM
        return estimate
    # DPM-Solver++ and UniPC (predict_x0) keep their clean prediction as the last model output;
    # the noisy sample would preview as noise for most of the run.
    config = scheduler.config
    predicts_x0 = config.get("algorithm_type") in ("dpmsolver++", "sde-dpmsolver++") or (
        config.get("predict_x0") is True)
    outputs = getattr(scheduler, "model_outputs", None)
    if predicts_x0 and outputs and outputs[-1] is not None:
        return outputs[-1]
    return None


# -- the output --------------------------------------------------------------------------------------
def unchanged_output(image: Image.Image, original: np.ndarray, batch: int,
                     output_type: str) -> DifferentialDiffusionOutput:
    """An all-zero map: nothing may change, so no model runs at all."""
    if output_type == "pil":
        return DifferentialDiffusionOutput([image.convert("RGB") for _ in range(batch)], 0)
    return DifferentialDiffusionOutput(np.stack([original] * batch), 0)


def composite_unchanged(generated: np.ndarray, original: np.ndarray, pixel_map: np.ndarray,
                        k: int) -> np.ndarray:
    """The kept pixels put back exactly: B x H x W x 3 generated over the H x W x 3 input, as
    ``generated * w + original * (1 - w)`` (``w``: :func:`unchanged_blend_weight`), written into
    ``generated``. Where ``w`` is 1 (a map at or above ``1/k``) that is ``generated`` itself, so
    only the box around the pixels below ``1/k`` is computed: a uniform map costs one ``min``."""
    t = _steps_fraction(pixel_map, k)
    rows, cols = np.flatnonzero(t.min(axis=1) < 1.0), np.flatnonzero(t.min(axis=0) < 1.0)
    if rows.size == 0:
        return generated
    if not generated.flags.writeable:
        generated = generated.copy()
    box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    weight = _smoothstep(t[box])[None, :, :, None]
    inside = generated[(slice(None), *box)]
    np.add(inside * weight, original[box][None] * (1.0 - weight), out=inside)
    return generated


def output_images(generated: np.ndarray, output_type: str) -> Any:
    """B x H x W x 3 floats in [0, 1] -> PIL images (``"pil"``) or a float32 array (``"np"``)."""
    generated = generated.astype(np.float32)
    return numpy_to_pil(generated) if output_type == "pil" else generated


# -- one run -----------------------------------------------------------------------------------------
@dataclass
class Run:
    """One call's inputs, read once: what ``prepare_run`` makes and ``finish_run`` uses."""

    image: Image.Image
    original: np.ndarray  # H x W x 3 float in [0, 1], the input as given (unpadded)
    pixel_map: np.ndarray  # H x W change map in [0, 1], at the input's size
    steps: torch.Tensor  # 1 x 1 x h x w: steps each latent pixel receives (0 ... k)
    k: int  # the job's steps (the composite blends below 1/k)
    batch: int
    output_type: str
    keep_unchanged_exact: bool
    image_tensor: torch.Tensor | None = None  # the padded input, ready for the encoder
    latent_size: tuple[int, int] | None = None  # (w, h) of the unpadded input on the latent grid

    @cached_property
    def longest(self) -> int:
        """Algorithm 2: only the last ``longest`` steps can change anything."""
        return int(self.steps.max())

    @cached_property
    def fewest(self) -> int:
        """The fewest steps a latent pixel receives: re-injection holds some region at step
        index ``i`` while ``k - i >= fewest``, and strength-0 cells exist when it is 0."""
        return int(self.steps.min())

    @property
    def latent_hw(self) -> tuple[int, int]:
        return int(self.steps.shape[-2]), int(self.steps.shape[-1])

    @cached_property
    def backdrop(self) -> PreviewBackdrop | None:
        """What previews are composited over: the input, with the result's own weights."""
        if not self.keep_unchanged_exact:
            return None
        return PreviewBackdrop(self.original, unchanged_blend_weight(self.pixel_map, self.k))


class DifferentialPipeline:
    """What every family shares: its components (``self.helper``, a diffusers pipeline it is
    built on), the opening and closing of a run, re-injection and its model options.

    ``model_name`` names the helper's denoising model (``"unet"`` or ``"transformer"``): a run
    uses its device, and moving to its own dtype is no cast."""

    family = ""
    component_names: tuple[str, ...] = ()
    model_name = "unet"
    helper: Any
    vae_scale_factor: int
    # Set by server.models.performance: the VAE runs tiled for pictures with a side above this
    # many pixels (None: never); previews through a tiny autoencoder (None: the linear map).
    vae_tile_above: int | None = None
    preview_decoder: Callable[[torch.Tensor], np.ndarray] | None = None

    # -- components --------------------------------------------------------------------------------
    @property
    def components(self) -> dict[str, Any]:
        return {name: getattr(self.helper, name) for name in self.component_names}

    @property
    def scheduler(self) -> Any:
        return self.helper.scheduler

    @property
    def device(self) -> torch.device:
        # A parameter's device. diffusers' _execution_device, and even ModelMixin.device, walk
        # every module of the model on each read (a group-offloading check: ~1,100 modules on SD
        # 1.x), and a run reads this five times; the profile of sd15-size showed them.
        return next(getattr(self.helper, self.model_name).parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self.helper, self.model_name).dtype

    @property
    def pad_multiple(self) -> int:
        """Images are padded to multiples of this many pixels (one latent cell here)."""
        return self.vae_scale_factor

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        if dtype is not None and dtype == self.dtype:
            dtype = None  # diffusers warns on every dtype cast, even a no-op one
        self.helper.to(device=device, dtype=dtype)
        return self

    # -- what a family offers ----------------------------------------------------------------------
    def options(self) -> list[p.OptionSpec]:
        """The keyword arguments this model's call takes beyond the common ones, with their
        defaults, for the parts it really has (the handshake advertises them)."""
        return []

    def check_refiner_split(self, refiner_split: float | None) -> None:
        """Only SDXL with a refiner takes ``refiner_split``; every other model refuses it here."""
        if refiner_split is not None:
            raise ValueError(f"refiner_split is for SDXL with a refiner; this is a {self.family} "
                             "model.")

    # -- what a family fills in --------------------------------------------------------------------
    def prepare_image(self, image: Image.Image) -> tuple[torch.Tensor, np.ndarray]:
        raise NotImplementedError

    def prepare_latents(self, image: torch.Tensor, batch_size: int, generator: Generator,
                        dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    # -- the opening: image, map, steps per latent pixel, timesteps --------------------------------
    def prepare_run(self, image: Any, change_map: Any, num_inference_steps: int,
                    num_images_per_prompt: int, output_type: str, keep_unchanged_exact: bool,
                    refiner_split: float | None = None) -> Run:
        """Check the call, read the image and the map, and give each latent pixel its steps
        (the map averaged over each latent cell, ``n = floor(m*k + tiny)``)."""
        k, batch = check_call_args(image, change_map, output_type, num_inference_steps,
                                   num_images_per_prompt)
        self.check_refiner_split(refiner_split)
        image_tensor, original = self.prepare_image(image)
        height, width = original.shape[:2]
        self.tile_vae_for(height, width)
        pixel_map = to_change_map(change_map, (width, height))
        steps = prepare_steps(pixel_map, self.pad_multiple, self.vae_scale_factor, k, self.device)
        cell = self.vae_scale_factor
        return Run(image, original, pixel_map, steps, k, batch, output_type, keep_unchanged_exact,
                   image_tensor, latent_size=(-(-width // cell), -(-height // cell)))

    def tile_vae_for(self, height: int, width: int) -> None:
        """Above ``vae_tile_above`` px per side the VAE encodes and decodes in overlapping tiles
        (diffusers' tiling: tiles of its ``sample_size``), so its memory stays that of a tile."""
        vae = getattr(self.helper, "vae", None)
        if vae is not None and hasattr(vae, "enable_tiling"):
            vae.use_tiling = self.vae_tile_above is not None and max(height, width) > self.vae_tile_above

    def unchanged_result(self, run: Run, generator: Generator) -> DifferentialDiffusionOutput:
        """An all-zero map: nothing may change, so no prompt is read and no model step runs
        (latents asked for are the input's, encoded)."""
        if run.output_type == "latent":
            z_init, _ = self.prepare_latents(run.image_tensor, run.batch, generator, self.dtype)
            return DifferentialDiffusionOutput(z_init, 0, run.steps)
        return unchanged_output(run.image, run.original, run.batch, run.output_type)

    def new_scheduler(self, name: str | None) -> Any:
        """A fresh scheduler for one run: the named one, or a copy of the model's."""
        return make_scheduler(name, self.scheduler.config) if name else \
            copy_scheduler(self.scheduler)

    def set_timesteps(self, scheduler: Any, k: int, latent_hw: tuple[int, int]) -> None:
        scheduler.set_timesteps(k, device=self.device)

    def prepare_timesteps(self, run: Run, name: str | None) -> tuple[Any, int, torch.Tensor]:
        """The run's scheduler set to ``k`` steps, the first step index that runs and the
        timesteps that will run (Algorithm 2)."""
        sched = self.new_scheduler(name)
        self.set_timesteps(sched, run.k, run.latent_hw)
        return (sched, *skip_to_longest(sched, run.k, run.longest))

    # -- inside the loop ---------------------------------------------------------------------------
    def reinject(
        self, scheduler: Any, latents: torch.Tensor, z_init: torch.Tensor, noise: torch.Tensor,
        t: torch.Tensor, keep: torch.Tensor, changes: bool = True,
    ) -> torch.Tensor:
        """Regions whose own run has not started yet go back to the original, noised to ``t``.

        ``changes``: False where it is known to change nothing (:func:`reinjection_changes`),
        so the original is not noised for nothing (a few kernels a step on a GPU)."""
        if not changes:
            return latents
        noised = scheduler.add_noise(z_init, noise, t.repeat(z_init.shape[0]))
        return torch.where(keep, noised, latents)

    # -- the closing: decode, crop, composite ------------------------------------------------------
    def generated_pixels(self, run: Run, latents: torch.Tensor) -> np.ndarray:
        """The result before the composite: B x H x W x 3 floats in [0, 1] at the input's size
        (decoded, the padding cropped)."""
        height, width = run.original.shape[:2]
        return self.decode_latents(latents)[:, :height, :width]

    def finish_run(self, run: Run, latents: torch.Tensor,
                   steps_run: int) -> DifferentialDiffusionOutput:
        """Decode, crop the padding, put the kept pixels back exactly (blending below 1/k)."""
        if run.output_type == "latent":
            return DifferentialDiffusionOutput(latents, steps_run, run.steps)
        generated = self.generated_pixels(run, latents)
        if run.keep_unchanged_exact:
            generated = composite_unchanged(generated, run.original, run.pixel_map, run.k)
        return DifferentialDiffusionOutput(output_images(generated, run.output_type), steps_run,
                                           run.steps)
