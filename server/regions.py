"""Large canvases: run the model only where the change map asks for change.

A job's change map is kept as a :class:`CanvasMap` — the box of the canvas that holds every
non-zero value, zero elsewhere — so a 4K canvas with a small edit never builds a 4K float map.
:func:`plan_region` picks the rectangle to process (the map's bounding box plus context, at least
the model's native resolution, within a pixel budget) and :func:`paste_back` turns the model's
output for that rectangle into the final pixels of the rectangle.

Maps use the painter's convention: 1 = change fully, 0 = keep (``mu_paper = 1 - map``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from server.maps import fan_map, soft_inpaint_map
from server.pipelines import unchanged_blend_weight
from shared.fan import fan_strengths
from shared.protocol import Region
from shared.regions import CONTEXT, LATENT_CELL_PX, context_crop



@dataclass
class CanvasMap:
    """A change map over a ``canvas`` (width, height), stored as ``values`` at (x, y).

    Everything outside the stored box is 0 (keep). ``values`` is float32 in [0, 1].
    """

    canvas: tuple[int, int]
    values: np.ndarray
    x: int = 0
    y: int = 0

    @classmethod
    def empty(cls, canvas: tuple[int, int]) -> CanvasMap:
        return cls(canvas, np.zeros((0, 0), dtype=np.float32))

    def bbox(self) -> Region | None:
        """The smallest rectangle holding every non-zero value (None for an all-keep map)."""
        box = _nonzero_box(self.values > 0)
        if box is None:
            return None
        x0, y0, x1, y1 = box
        return Region(self.x + x0, self.y + y0, x1 - x0, y1 - y0)

    def crop(self, region: Region) -> np.ndarray:
        """The map over ``region`` as float32 H x W (zeros where nothing is stored)."""
        out = np.zeros((region.height, region.width), dtype=np.float32)
        h, w = self.values.shape
        # Intersection of the stored box and the region, in canvas coordinates.
        x0, y0 = max(self.x, region.x), max(self.y, region.y)
        x1 = min(self.x + w, region.x + region.width)
        y1 = min(self.y + h, region.y + region.height)
        if x1 > x0 and y1 > y0:
            out[y0 - region.y:y1 - region.y, x0 - region.x:x1 - region.x] = \
                self.values[y0 - self.y:y1 - self.y, x0 - self.x:x1 - self.x]
        return out

    def full(self) -> np.ndarray:
        """The whole canvas map (only for small canvases and tests)."""
        return self.crop(Region(0, 0, *self.canvas))


def _nonzero_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    if mask.size == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _clip_to(box: Region, bounds: Region | None) -> Region | None:
    if bounds is None:
        return box
    x0, y0 = max(box.x, bounds.x), max(box.y, bounds.y)
    x1 = min(box.x + box.width, bounds.x + bounds.width)
    y1 = min(box.y + box.height, bounds.y + bounds.height)
    if x1 <= x0 or y1 <= y0:
        return None
    return Region(x0, y0, x1 - x0, y1 - y0)


# --- building a job's map from what the client sent -------------------------------------------


def _gray8(data: bytes, canvas: tuple[int, int]) -> np.ndarray:
    width, height = canvas
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width)


def map_from_gray8(data: bytes, canvas: tuple[int, int], region: Region | None) -> CanvasMap:
    """``change_map`` mode: 8-bit map, 255 = change fully; zero outside ``region``."""
    gray = _gray8(data, canvas)
    box = _nonzero_box(gray > 0)
    if box is None:
        return CanvasMap.empty(canvas)
    x0, y0, x1, y1 = box
    box = _clip_to(Region(x0, y0, x1 - x0, y1 - y0), region)
    if box is None:
        return CanvasMap.empty(canvas)
    values = gray[box.y:box.y + box.height, box.x:box.x + box.width].astype(np.float32) / 255.0
    return CanvasMap(canvas, values, box.x, box.y)


def map_from_mask(data: bytes, canvas: tuple[int, int], softness_px: float, grow_px: int,
                  region: Region | None) -> CanvasMap:
    """``soft_inpaint`` mode: a mask (white = repaint) grown and blurred by ``server.maps``.

    Only the mask's neighbourhood is blurred: the box around it is widened by the reach of the
    grow and the blur, so the result equals blurring the whole canvas, at a fraction of the cost.
    """
    mask = _gray8(data, canvas)
    box = _nonzero_box(mask >= 128)  # soft_inpaint_map binarises at 0.5
    if box is None:
        return CanvasMap.empty(canvas)
    # Gaussian sigma = softness/2, kernel radius ceil(3 sigma); plus the grow, plus a cell.
    reach = max(grow_px, 0) + int(math.ceil(1.5 * softness_px)) + LATENT_CELL_PX
    width, height = canvas
    x0, y0 = max(box[0] - reach, 0), max(box[1] - reach, 0)
    x1, y1 = min(box[2] + reach, width), min(box[3] + reach, height)
    values = soft_inpaint_map(mask[y0:y1, x0:x1], softness_px, grow_px)
    return _restricted(CanvasMap(canvas, values, x0, y0), region)


def map_uniform(canvas: tuple[int, int], strength: float, region: Region | None) -> CanvasMap:
    """``uniform`` mode: one strength over the region (or the whole canvas)."""
    area = region or Region(0, 0, *canvas)
    if strength <= 0:
        return CanvasMap.empty(canvas)
    values = np.full((area.height, area.width), strength, dtype=np.float32)
    return CanvasMap(canvas, values, area.x, area.y)


def map_fan(canvas: tuple[int, int], count: int, low: float, high: float,
            region: Region | None) -> CanvasMap:
    """``fan`` mode: ``count`` columns across the region (or canvas), geometry from shared.fan."""
    area = region or Region(0, 0, *canvas)
    values = fan_map(area.width, area.height, fan_strengths(count, low, high))
    return CanvasMap(canvas, values, area.x, area.y)


def _restricted(change: CanvasMap, region: Region | None) -> CanvasMap:
    if region is None:
        return change
    h, w = change.values.shape
    box = _clip_to(Region(change.x, change.y, w, h), region)
    if box is None:
        return CanvasMap.empty(change.canvas)
    return CanvasMap(change.canvas, change.crop(box), box.x, box.y)


# --- which rectangle to process, at what size -------------------------------------------------


@dataclass(frozen=True)
class RegionPlan:
    """Process canvas rectangle ``crop`` at ``size`` (width, height) pixels."""

    crop: Region
    size: tuple[int, int]

    @property
    def scaled(self) -> bool:
        return self.size != (self.crop.width, self.crop.height)


def plan_region(change: CanvasMap, native_resolution: int, max_pixels: int | None = None,
                context: float = CONTEXT) -> RegionPlan:
    """The rectangle a job needs: the map's bounding box, widened by ``context`` (a fraction of
    its size, at least 1/8 of the native resolution) so the model sees the surroundings, then to
    at least the native resolution per side (where the canvas allows), aligned to latent cells.

    When that rectangle is over ``max_pixels`` (default: 1.5x native per side, squared), it is
    processed downscaled to fit and scaled back up in :func:`paste_back`.
    """
    if max_pixels is None:
        max_pixels = int((1.5 * native_resolution) ** 2)
    crop = context_crop(change.bbox(), change.canvas, native_resolution, context)
    area = crop.width * crop.height
    scale = 1.0 if area <= max_pixels else math.sqrt(max_pixels / area)
    size = (crop.width, crop.height)
    if scale < 1.0:
        size = (max(LATENT_CELL_PX, int(crop.width * scale) // LATENT_CELL_PX * LATENT_CELL_PX),
                max(LATENT_CELL_PX, int(crop.height * scale) // LATENT_CELL_PX * LATENT_CELL_PX))
    return RegionPlan(crop, size)


def crop_inputs(image: Image.Image, change: CanvasMap, plan: RegionPlan
                ) -> tuple[Image.Image, np.ndarray, Image.Image, np.ndarray]:
    """The source crop and its map (canvas resolution), then the same at the processing size."""
    c = plan.crop
    source = image.crop((c.x, c.y, c.x + c.width, c.y + c.height))
    source_map = change.crop(c)
    if not plan.scaled:
        return source, source_map, source, source_map
    model_image = source.resize(plan.size, Image.LANCZOS)
    model_map = np.asarray(Image.fromarray(source_map, mode="F").resize(plan.size,
                                                                         Image.BILINEAR))
    return source, source_map, model_image, np.clip(model_map, 0.0, 1.0).astype(np.float32)


def paste_back(source: Image.Image, output: Image.Image, crop_map: np.ndarray,
               steps: int) -> Image.Image:
    """The final pixels of the crop: the model's output (scaled back up if it ran smaller),
    composited over the source so kept pixels (map 0) are the source exactly."""
    if output.size == source.size:
        return output  # the pipeline composited at full resolution already
    output = output.convert("RGB").resize(source.size, Image.LANCZOS)
    weight = unchanged_blend_weight(crop_map, steps)[..., None]
    src = np.asarray(source.convert("RGB"), dtype=np.float32)
    out = np.asarray(output, dtype=np.float32)
    mixed = src + weight * (out - src)
    return Image.fromarray(np.clip(np.round(mixed), 0, 255).astype(np.uint8), "RGB")


def paste(canvas: Image.Image, crop: Image.Image, region: Region) -> Image.Image:
    """``crop`` pasted into a copy of ``canvas`` at ``region`` (what the plugin does with a
    result; used by tests and tools)."""
    out = canvas.convert("RGB").copy()
    out.paste(crop.convert("RGB"), (region.x, region.y))
    return out
