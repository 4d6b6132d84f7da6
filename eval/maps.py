"""The change maps of the paper's adherence study (§5.2): gradient, shapes and triangles.

Project convention: 1 (white) = change fully, 0 (black) = keep (`mu_paper = 1 - map`).
Every map is float32 HxW in [0, 1] and deterministic for a given size and seed, so runs on
two machines score the same maps.
"""

from __future__ import annotations

import numpy as np

MAP_KINDS: tuple[str, ...] = ("gradient", "shapes", "triangles")
# Strength levels the discrete maps draw from: the whole range, so CAM measures all of it.
_LEVELS = np.linspace(0.0, 1.0, 11)


def gradient_map(width: int, height: int) -> np.ndarray:
    """A horizontal ramp: keep at the left edge (0), change fully at the right edge (1)."""
    return np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))


def shapes_map(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Overlapping discs and rectangles, each at its own strength, on a background of strength 0."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x = (x + 0.5) / width
    y = (y + 0.5) / height
    out = np.zeros((height, width), dtype=np.float32)
    # Levels without replacement (and without 0, the background) keep every shape distinct.
    levels = rng.permutation(_LEVELS[1:])[:6]
    for i, level in enumerate(levels):
        cx, cy = rng.uniform(0.15, 0.85, size=2)
        if i % 2 == 0:
            radius = rng.uniform(0.12, 0.25)
            inside = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
        else:
            hw, hh = rng.uniform(0.1, 0.22, size=2)
            inside = (np.abs(x - cx) <= hw) & (np.abs(y - cy) <= hh)
        out[inside] = level
    return out


def triangles_map(width: int, height: int, seed: int = 0, cells: int = 3) -> np.ndarray:
    """A grid of `cells` x `cells` squares, each cut along a diagonal into two triangles of their own strength."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u = (x + 0.5) / width * cells
    v = (y + 0.5) / height * cells
    col = np.minimum(u.astype(int), cells - 1)
    row = np.minimum(v.astype(int), cells - 1)
    fu, fv = u - col, v - row
    # Per cell: which diagonal, and the two triangles' levels.
    flips = rng.integers(0, 2, size=(cells, cells)).astype(bool)
    levels = rng.choice(_LEVELS, size=(cells, cells, 2))
    upper = np.where(flips[row, col], fu + fv < 1.0, fu > fv)
    return np.where(upper, levels[row, col, 0], levels[row, col, 1]).astype(np.float32)


def make_map(kind: str, width: int, height: int, seed: int = 0) -> np.ndarray:
    """The map of `kind` (one of MAP_KINDS) at `width` x `height`."""
    if kind == "gradient":
        return gradient_map(width, height)
    if kind == "shapes":
        return shapes_map(width, height, seed)
    if kind == "triangles":
        return triangles_map(width, height, seed)
    raise ValueError(f"unknown map kind {kind!r}; choose one of {', '.join(MAP_KINDS)}")
