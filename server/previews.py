"""Cheap previews: latents -> RGB by a linear map per model family, no VAE decode.

The factors are the widely used least-squares fits of RGB on latent channels for the SD 1.x/2.x
and SDXL VAEs; a preview is one matrix product on the latent grid (1/8 of the image per side).
"""

from __future__ import annotations

import numpy as np
import torch

# family -> (4 x 3 factors, RGB bias)
LATENT_RGB_FACTORS: dict[str, tuple[list[list[float]], list[float]]] = {
    "sd": (
        [
            [0.3512, 0.2297, 0.3227],
            [0.3250, 0.4974, 0.2350],
            [-0.2829, 0.1762, 0.2721],
            [-0.2120, -0.2616, -0.7177],
        ],
        [0.0, 0.0, 0.0],
    ),
    "sdxl": (
        [
            [0.3651, 0.4232, 0.4341],
            [-0.2533, -0.0042, 0.1068],
            [0.1076, 0.1111, -0.0362],
            [-0.3165, -0.2492, -0.2188],
        ],
        [0.1084, -0.0175, -0.0011],
    ),
}


def latents_to_rgb(latents: torch.Tensor, family: str) -> np.ndarray:
    """One latent (C x h x w, C = 4) as a uint8 h x w x 3 RGB preview."""
    factors, bias = LATENT_RGB_FACTORS[family]
    weight = torch.tensor(factors, dtype=torch.float32)
    lat = latents.detach().to("cpu", torch.float32)
    if lat.ndim == 4:
        lat = lat[0]
    if lat.shape[0] != weight.shape[0]:
        raise ValueError(f"Previews need {weight.shape[0]} latent channels, got {lat.shape[0]}.")
    rgb = torch.einsum("chw,cr->hwr", lat, weight) + torch.tensor(bias)
    rgb = ((rgb + 1.0) / 2.0).clamp(0.0, 1.0)
    return (rgb * 255.0).round().to(torch.uint8).numpy()
