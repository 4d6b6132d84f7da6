"""Cheap previews: latents -> RGB by a linear map per model family, no VAE decode, then
composited over the input like the result will be.

The factors are the widely used least-squares fits of RGB on latent channels for the SD 1.x/2.x
and SDXL VAEs; a preview is one matrix product on the latent grid (1/8 of the image per side).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

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
    # 16-channel flow-matching VAEs (normalised latents: (z - shift) * scale), same kind of fit.
    "sd3": (
        [
            [-0.0922, -0.0175, 0.0749], [0.0311, 0.0633, 0.0954], [0.1994, 0.0927, 0.0458],
            [0.0856, 0.0339, 0.0902], [0.0587, 0.0272, -0.0496], [-0.0006, 0.1104, 0.0309],
            [0.0978, 0.0306, 0.0427], [-0.0042, 0.1038, 0.1358], [-0.0194, 0.0020, 0.0669],
            [-0.0488, 0.0130, -0.0268], [0.0922, 0.0988, 0.0951], [-0.0278, 0.0524, -0.0542],
            [0.0332, 0.0456, 0.0895], [-0.0069, -0.0030, -0.0810], [-0.0596, -0.0465, -0.0293],
            [-0.1448, -0.1463, -0.1189],
        ],
        [0.2394, 0.2135, 0.1925],
    ),
    "flux": (
        [
            [-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433],
            [-0.0174, 0.0160, 0.0617], [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115],
            [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259], [-0.0245, 0.0250, 0.1180],
            [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
            [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499],
            [-0.1262, -0.0982, -0.0778],
        ],
        [-0.0329, -0.0718, -0.0851],
    ),
}


def latents_to_rgb(latents: torch.Tensor, family: str) -> np.ndarray:
    """One latent (C x h x w; C = 4, or 16 for sd3 / flux) as a uint8 h x w x 3 RGB preview."""
    if family not in LATENT_RGB_FACTORS:
        raise ValueError(f"No preview factors for model family {family!r}; known: "
                         f"{', '.join(LATENT_RGB_FACTORS)}.")
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


@dataclass
class PreviewBackdrop:
    """What a preview is composited over, so that it shows the picture as it will look: the
    input (H x W x 3 floats in [0, 1]) and the weight the result gives the generated pixels
    (H x W, 0 = the input exactly), both at the input's size."""

    picture: np.ndarray
    weight: np.ndarray
    _at_size: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, repr=False)

    def composite(self, generated: np.ndarray) -> np.ndarray:
        """``generated`` (uint8 h x w x 3, a preview) over the input scaled to its size, blended
        with the weights scaled the same way (area averages); uint8 h x w x 3."""
        height, width = generated.shape[:2]
        picture, weight = self.at_size(width, height)
        rgb = generated.astype(np.float64)
        blended = rgb + (picture - rgb) * (1.0 - weight)[..., None]
        return np.clip(np.round(blended), 0, 255).astype(np.uint8)

    def at_size(self, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """The input (0 ... 255) and the weights area-averaged to ``width`` x ``height``; once
        per size (a run's previews all have one)."""
        if (width, height) not in self._at_size:
            both = np.concatenate([self.picture * 255.0, self.weight[..., None]], axis=-1)
            tensor = torch.from_numpy(np.ascontiguousarray(both, np.float64)).permute(2, 0, 1)
            small = F.adaptive_avg_pool2d(tensor[None], (height, width))[0].permute(1, 2, 0)
            small = small.numpy()
            self._at_size[(width, height)] = (small[..., :3], small[..., 3])
        return self._at_size[(width, height)]
