"""Adherence of an edit to its change map: the paper's edit-strength map, CAM and DAM (§5.2).

Maps here use the project's convention: 1 (white) = change fully, 0 (black) = keep
(the paper writes the map the other way round: `mu_paper = 1 - map`). With this convention a
pipeline that follows its map gives a *positive* correlation between the map and the edit.

- `edit_strength_map`: mean per-pixel perceptual distance between inputs and outputs made with
  map M, minus the same mean for an all-change map (removes spatial bias such as image borders
  or busy regions that always change more).
- `cam`: Pearson correlation between M and E_M (higher is better, 1 = perfect).
- `dam`: min over scalars a, b of ||M - (a * E_M + b)||_F, a least-squares fit (lower is better).
  It is a Frobenius norm, so it grows with the square root of the pixel count: compare DAMs
  only at the same resolution.

Perceptual distance: LPIPS (AlexNet, spatial) when the `lpips` package, torchvision and the
AlexNet weights are all on this machine already (nothing is downloaded); otherwise the
documented fallback `ms-lab-ssim` (see eval/README.md), and every result names the one used.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

FALLBACK_DISTANCE = "ms-lab-ssim"
LPIPS_DISTANCE = "lpips-alex"
# torchvision's file name for the ImageNet AlexNet weights that LPIPS' backbone loads.
_ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"
# Blur radii (px) of the fallback's scales, for images of about 512 px; scaled with image size.
_FALLBACK_SIGMAS_AT_512 = (1.0, 2.0, 4.0, 8.0)


# --------------------------------------------------------------------------------------------
# The two metrics
# --------------------------------------------------------------------------------------------


def _as_same_shape(change_map: np.ndarray, edit_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(change_map, dtype=np.float64)
    e = np.asarray(edit_map, dtype=np.float64)
    if m.shape != e.shape or m.ndim != 2:
        raise ValueError(f"change map {m.shape} and edit-strength map {e.shape} must be two HxW arrays of one size")
    if not (np.isfinite(m).all() and np.isfinite(e).all()):
        raise ValueError("change map and edit-strength map must be finite (no NaN or inf)")
    return m, e


def cam(change_map: np.ndarray, edit_map: np.ndarray) -> float:
    """Correlation to the Adherence Map: Pearson correlation between M and E_M.

    NaN when either map is constant (a correlation is undefined there, e.g. a binary baseline
    whose threshold left nothing to edit); callers choosing a best threshold skip NaNs.
    """
    m, e = _as_same_shape(change_map, edit_map)
    m = m - m.mean()
    e = e - e.mean()
    denominator = np.sqrt((m * m).sum() * (e * e).sum())
    # Relative tolerance: float noise on a constant map must not pass for a signal.
    if denominator <= 1e-12 * max(1.0, float(np.abs(m).max() * np.abs(e).max() * m.size)):
        return float("nan")
    return float((m * e).sum() / denominator)


def dam(change_map: np.ndarray, edit_map: np.ndarray) -> float:
    """Distance to the Adherence Map: min over a, b of ||M - (a E_M + b)||_F (least squares).

    Always defined: a constant E_M fits M by its mean alone.
    """
    m, e = _as_same_shape(change_map, edit_map)
    design = np.stack([e.ravel(), np.ones(e.size)], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, m.ravel(), rcond=None)
    residual = m.ravel() - design @ coefficients
    return float(np.sqrt((residual * residual).sum()))


# --------------------------------------------------------------------------------------------
# Edit-strength map
# --------------------------------------------------------------------------------------------


class MeanDistanceMap:
    """Running mean of per-pixel distance maps between inputs and their outputs."""

    def __init__(self, distance: Distance) -> None:
        self.distance = distance
        self.total: np.ndarray | None = None
        self.count = 0

    def add(self, image: np.ndarray, output: np.ndarray) -> None:
        d = self.distance(image, output).astype(np.float64)
        if self.total is None:
            self.total = np.zeros_like(d)
        elif self.total.shape != d.shape:
            raise ValueError(f"all pairs must have one size: got {d.shape}, earlier {self.total.shape}")
        self.total += d
        self.count += 1

    def mean(self) -> np.ndarray:
        if self.total is None:
            raise ValueError("no input/output pair was added")
        return self.total / self.count


def edit_strength_map(mean_with_map: np.ndarray, mean_all_change: np.ndarray) -> np.ndarray:
    """E_M: the mean distance map for map M minus the mean distance map for an all-change map."""
    a = np.asarray(mean_with_map, dtype=np.float64)
    b = np.asarray(mean_all_change, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"mean distance maps differ in size: {a.shape} vs {b.shape}")
    return a - b


# --------------------------------------------------------------------------------------------
# Perceptual distances: per-pixel maps between two uint8 HxWx3 RGB images
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Distance:
    """A per-pixel distance between two RGB images (uint8 HxWx3) -> float HxW, with its name."""

    name: str
    compute: Callable[[np.ndarray, np.ndarray], np.ndarray]

    def __call__(self, image: np.ndarray, other: np.ndarray) -> np.ndarray:
        a, b = _as_rgb(image), _as_rgb(other)
        if a.shape != b.shape:
            raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
        return self.compute(a, b)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {array.dtype}")
    return array


def lpips_unavailable_reason() -> str | None:
    """Why LPIPS cannot run here without a download, or None when it can."""
    for module in ("lpips", "torchvision"):
        if importlib.util.find_spec(module) is None:
            return f"the '{module}' package is not installed"
    import torch

    weights = os.path.join(torch.hub.get_dir(), "checkpoints", _ALEXNET_WEIGHTS)
    if not os.path.exists(weights):
        return f"the AlexNet backbone weights are not on this machine ({weights}); LPIPS would download them"
    return None


def _lpips_distance() -> Distance:
    import lpips  # optional; see lpips_unavailable_reason()
    import torch

    model = lpips.LPIPS(net="alex", spatial=True, verbose=False).eval()

    def compute(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        def to_tensor(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1.0

        with torch.no_grad():
            return model(to_tensor(a), to_tensor(b))[0, 0].numpy().astype(np.float64)

    return Distance(LPIPS_DISTANCE, compute)


def get_distance(name: str = "auto") -> Distance:
    """The perceptual distance called `name`: "auto", "lpips-alex" or "ms-lab-ssim".

    "auto" takes LPIPS when it runs here without downloading anything, else the fallback.
    """
    if name == "auto":
        name = LPIPS_DISTANCE if lpips_unavailable_reason() is None else FALLBACK_DISTANCE
    if name == LPIPS_DISTANCE:
        reason = lpips_unavailable_reason()
        if reason is not None:
            raise RuntimeError(
                f"LPIPS is not available: {reason}. Install 'lpips' and 'torchvision' and place the AlexNet "
                f"weights in torch's hub cache, or use --distance {FALLBACK_DISTANCE}."
            )
        return _lpips_distance()
    if name == FALLBACK_DISTANCE:
        return Distance(FALLBACK_DISTANCE, ms_lab_ssim_distance)
    raise ValueError(f"unknown distance {name!r}; choose auto, {LPIPS_DISTANCE} or {FALLBACK_DISTANCE}")


def srgb_to_lab(image: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of a uint8 sRGB image, float64 HxWx3 (L in 0..100)."""
    c = image.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
    )
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lightness = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return np.stack([lightness, a, b], axis=-1)


def gaussian_blur(array: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the first two axes, edges reflected (numpy only)."""
    if sigma <= 0:
        return array.astype(np.float64)
    radius = max(1, int(round(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    out = array.astype(np.float64)
    for axis in (0, 1):
        # Reflect padding needs radius < size; tiny images fall back to edge padding.
        mode = "reflect" if out.shape[axis] > radius else "edge"
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode=mode)
        acc = np.zeros_like(out)
        for i, weight in enumerate(kernel):
            acc += weight * np.take(padded, np.arange(i, i + out.shape[axis]), axis=axis)
        out = acc
    return out


def ms_lab_ssim_distance(image: np.ndarray, other: np.ndarray) -> np.ndarray:
    """The fallback perceptual distance map (float HxW, about 0..1), numpy only.

    At four blur scales it averages two terms, each roughly in [0, 1]:
    - colour: CIELAB difference of the blurred images (Delta E 1976 / 100), the change a viewer
      sees in local average colour;
    - structure: 1 - the contrast-structure term of SSIM on lightness, the change in local
      texture and edges even where the average colour stays the same.
    Blurring at several scales makes the map local but not pixel-exact, like LPIPS' spatial map.
    """
    lab_a, lab_b = srgb_to_lab(image), srgb_to_lab(other)
    size = min(image.shape[:2])
    c2 = (0.03 * 100.0) ** 2  # SSIM's stabiliser for a dynamic range of 100 (L*)
    total = np.zeros(image.shape[:2], dtype=np.float64)
    for sigma_512 in _FALLBACK_SIGMAS_AT_512:
        sigma = max(0.5, sigma_512 * size / 512)
        mean_a, mean_b = gaussian_blur(lab_a, sigma), gaussian_blur(lab_b, sigma)
        colour = np.sqrt(((mean_a - mean_b) ** 2).sum(axis=-1)) / 100.0
        la, lb = lab_a[..., 0], lab_b[..., 0]
        mu_a, mu_b = mean_a[..., 0], mean_b[..., 0]
        var_a = np.maximum(gaussian_blur(la * la, sigma) - mu_a * mu_a, 0.0)
        var_b = np.maximum(gaussian_blur(lb * lb, sigma) - mu_b * mu_b, 0.0)
        cov = gaussian_blur(la * lb, sigma) - mu_a * mu_b
        structure = 1.0 - (2 * cov + c2) / (var_a + var_b + c2)
        total += 0.5 * (np.minimum(colour, 1.0) + 0.5 * structure)
    return total / len(_FALLBACK_SIGMAS_AT_512)


# --------------------------------------------------------------------------------------------
# Convenience: everything for one map from finished pairs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Adherence:
    cam: float
    dam: float
    distance: str
    pairs: int


def adherence(
    change_map: np.ndarray,
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    all_change_pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    distance: Distance,
) -> tuple[Adherence, np.ndarray]:
    """CAM and DAM of `change_map` from (input, output) pairs and (input, all-change output) pairs.

    Returns the scores and E_M.
    """
    with_map, all_change = MeanDistanceMap(distance), MeanDistanceMap(distance)
    for image, output in pairs:
        with_map.add(image, output)
    for image, output in all_change_pairs:
        all_change.add(image, output)
    e = edit_strength_map(with_map.mean(), all_change.mean())
    return Adherence(cam(change_map, e), dam(change_map, e), distance.name, with_map.count), e
