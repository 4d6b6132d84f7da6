"""Differential-diffusion pipelines, one file per model family (the loop written out in each).

Shared here: the per-step report (:class:`StepInfo`), the cancellation exception, the output,
and the two small pieces of Algorithm 1 that every family uses in the same way.
Change maps follow the painter's convention (1 = change fully, 0 = keep; ``mu_paper = 1 - map``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from server.previews import latents_to_rgb

# floor(m*k + tiny): a float32 map of 0.7 is 0.69999999, and 10 steps of it must still be 7.
STEP_TOLERANCE = 1e-4


class Cancelled(Exception):
    """Raised between steps when the job's cancel event is set."""


@dataclass
class StepInfo:
    """What the per-step hook receives after each denoising step."""

    step: int  # steps done, 1-based
    total: int  # steps this run will do
    latents: torch.Tensor  # current latents, B x C x h x w (h, w: padded image / 8)
    denoised: torch.Tensor | None = None  # the scheduler's clean estimate, when it gives one
    family: str = "sd"
    latent_size: tuple[int, int] | None = None  # (w, h) of the unpadded image on the latent grid

    def preview(self, variant: int = 0) -> np.ndarray:
        """A cheap uint8 h x w x 3 RGB preview of one variant at latent resolution (1/8 size)."""
        source = self.denoised if self.denoised is not None else self.latents
        rgb = latents_to_rgb(source[variant], self.family)
        if self.latent_size is not None:
            rgb = rgb[: self.latent_size[1], : self.latent_size[0]]
        return np.ascontiguousarray(rgb)


@dataclass
class DifferentialDiffusionOutput:
    images: Any  # list of PIL images, a B x H x W x 3 float array, or latents
    steps_run: int = 0
    steps_per_latent_pixel: torch.Tensor | None = field(default=None, repr=False)


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
    t = np.clip(change_map.astype(np.float64) * num_inference_steps, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)

