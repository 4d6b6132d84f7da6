"""Change maps: conversion, validation and the builders the server uses for each job mode.

Convention everywhere in this project: a change map is float32 H x W in [0, 1] where
**1 (white) = change fully and 0 (black) = keep**, like a Krita selection. The paper's map is the
opposite (``mu_paper = 1 - change_map``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from shared.fan import fan_columns

# ITU-R 601-2 luma, the weights PIL uses for RGB -> "L".
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_change_map(change_map: Any, size: tuple[int, int]) -> np.ndarray:
    """A change map as float32 H x W in [0, 1], resized to ``size = (width, height)``.

    Accepts a PIL image (any mode; colour maps use their luminance, alpha is ignored) or an
    array H x W, H x W x 1, H x W x 3 or H x W x 4 (uint8 0..255, or floats in [0, 1]).
    Raises ``ValueError`` with a readable reason for empty, NaN, out-of-range or oddly shaped maps.
    """
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1:
        raise ValueError(f"Cannot fit a change map to an empty image ({width}x{height}).")
    values = _as_float_array(change_map)
    if values.shape != (height, width):
        resized = Image.fromarray(values, mode="F").resize((width, height), Image.BILINEAR)
        # Bilinear never overshoots, but float rounding can leave 1.0000001.
        values = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    return np.ascontiguousarray(values, dtype=np.float32)


def _as_float_array(change_map: Any) -> np.ndarray:
    if isinstance(change_map, Image.Image):
        if change_map.width == 0 or change_map.height == 0:
            raise ValueError("The change map is empty (0 pixels).")
        if change_map.mode in ("L", "1", "P", "LA"):
            arr = np.asarray(change_map.convert("L"), dtype=np.float32) / 255.0
        elif change_map.mode.startswith("I;16"):  # 16-bit grey, whatever its values
            arr = np.asarray(change_map, dtype=np.float32) / 65535.0
        elif change_map.mode in ("I", "F"):
            arr = np.asarray(change_map.convert("F"), dtype=np.float32)
            if change_map.mode == "I":  # 32-bit ints: 8- or 16-bit data, judged by its range
                arr = arr / (65535.0 if arr.max(initial=0) > 255 else 255.0)
        else:
            rgb = np.asarray(change_map.convert("RGB"), dtype=np.float32) / 255.0
            arr = rgb @ _LUMA
        return _checked(arr)

    try:
        arr = np.asarray(change_map)
    except Exception as exc:  # e.g. a ragged list
        raise ValueError(f"The change map is not an image or array: {exc}") from exc
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise ValueError(f"The change map must hold numbers, got dtype {arr.dtype}.")
    if arr.size == 0:
        raise ValueError(f"The change map is empty (shape {arr.shape}).")
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        if arr.shape[2] == 1:
            arr = arr[..., 0]
        else:
            return _checked(_to_unit(arr[..., :3]) @ _LUMA)
    if arr.ndim != 2:
        raise ValueError(
            f"The change map must be one channel (H x W) or an RGB(A) image, got shape {arr.shape}."
        )
    return _checked(_to_unit(arr))


def _to_unit(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    return arr.astype(np.float32)


def _checked(arr: np.ndarray) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise ValueError("The change map contains NaN or infinite values.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"Change map values must lie in [0, 1] (1 = change fully, 0 = keep); "
            f"got values from {lo:g} to {hi:g}."
        )
    return arr.astype(np.float32, copy=False)


def soft_inpaint_map(mask: Any, softness_px: float, grow_px: int = 0) -> np.ndarray:
    """Soft-inpainting change map (paper §4.1) from a mask (white/1 = repaint).

    The mask is binarised at 0.5, grown (or shrunk, for negative ``grow_px``) by a square of
    that radius, then faded outward: the painted area changes fully and the strength falls
    smoothly to about 0 at ``softness_px`` outside it, so new content blends in.
    """
    if not math.isfinite(softness_px) or softness_px < 0:
        raise ValueError(f"softness_px must be a finite number >= 0, got {softness_px}.")
    values = _as_float_array(mask)
    binary = values >= 0.5
    if grow_px:
        binary = _dilate(binary, grow_px) if grow_px > 0 else ~_dilate(~binary, -grow_px)
    hard = binary.astype(np.float32)
    if softness_px == 0:
        return hard
    # Twice a Gaussian blur (sigma = softness/2), capped at 1: exactly 1 inside and at the mask
    # edge, about 0.05 at `softness_px` outside it, with no step anywhere.
    soft = np.minimum(1.0, 2.0 * _gaussian_blur(hard, softness_px / 2.0))
    return np.maximum(hard, soft).astype(np.float32)


def fan_map(width: int, height: int, strengths: Sequence[float]) -> np.ndarray:
    """Strength-fan change map (paper §4.2): column j (spans from ``shared.fan``) is uniformly
    ``strengths[j]``."""
    strengths = [float(s) for s in strengths]
    if not strengths:
        raise ValueError("A strength fan needs at least one strength.")
    if any(not 0.0 <= s <= 1.0 for s in strengths):
        raise ValueError(f"Fan strengths must lie in [0, 1], got {strengths}.")
    if height < 1:
        raise ValueError(f"Cannot build a fan map {height} pixels high.")
    out = np.empty((height, width), dtype=np.float32)
    for (x0, x1), strength in zip(fan_columns(width, len(strengths)), strengths, strict=False):
        out[:, x0:x1] = strength
    return out


def _dilate(binary: np.ndarray, radius: int) -> np.ndarray:
    """Square max filter of the given radius, separable (rows, then columns)."""
    out = binary
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="constant", constant_values=False)
        windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1, axis=axis)
        out = windows.any(axis=-1)
    return out


def _gaussian_blur(values: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur; beyond the border the nearest pixel repeats."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    out = values.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for tap, weight in enumerate(kernel):
            acc += weight * (padded[tap : tap + n, :] if axis == 0 else padded[:, tap : tap + n])
        out = acc
    return out.astype(np.float32)
