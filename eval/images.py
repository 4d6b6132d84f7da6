"""A small deterministic set of input pictures for the adherence study, made here (no downloads).

The paper used 1,000 ImageNet validation images. Offline we draw pictures with what a real one
has, so a perceptual distance has something to see everywhere: smooth colour gradients (sky,
walls), flat-coloured objects with edges, a patterned region (fabric, foliage) and fine grain.
"""

from __future__ import annotations

import numpy as np


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Bilinear upsampling of a small random grid: low-frequency colour variation, HxWx3 in [0, 1]."""
    grid = rng.random((cells + 1, cells + 1, 3))
    y = np.linspace(0, cells, height)
    x = np.linspace(0, cells, width)
    y0 = np.minimum(y.astype(int), cells - 1)
    x0 = np.minimum(x.astype(int), cells - 1)
    fy = (y - y0)[:, None, None]
    fx = (x - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def synthetic_image(width: int, height: int, seed: int) -> np.ndarray:
    """One input picture, uint8 HxWx3, the same for the same arguments on every machine."""
    rng = np.random.default_rng(seed)
    image = 0.2 + 0.6 * _smooth_field(rng, height, width, cells=3)
    y, x = np.mgrid[0:height, 0:width]
    u, v = (x + 0.5) / width, (y + 0.5) / height
    for _ in range(5):
        colour = rng.random(3)
        cx, cy = rng.uniform(0.1, 0.9, size=2)
        if rng.random() < 0.5:
            inside = (u - cx) ** 2 + (v - cy) ** 2 <= rng.uniform(0.05, 0.2) ** 2
        else:
            hw, hh = rng.uniform(0.05, 0.2, size=2)
            inside = (np.abs(u - cx) <= hw) & (np.abs(v - cy) <= hh)
        image[inside] = 0.3 * image[inside] + 0.7 * colour
    # A patterned band (stripes at a random angle) where a texture change is visible.
    angle, period = rng.uniform(0, np.pi), rng.uniform(0.02, 0.06)
    band = np.abs(v - rng.uniform(0.3, 0.7)) < 0.12
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (u * np.cos(angle) + v * np.sin(angle)) / period)
    image[band] = image[band] * (0.6 + 0.4 * stripes[band, None])
    image += rng.normal(0.0, 0.02, size=image.shape)  # film grain
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def image_set(count: int, width: int, height: int, first_seed: int = 0) -> list[np.ndarray]:
    """`count` pictures with seeds first_seed, first_seed + 1, …"""
    return [synthetic_image(width, height, first_seed + i) for i in range(count)]
