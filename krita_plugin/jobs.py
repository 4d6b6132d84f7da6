"""From what was read off the canvas to a job request: change maps, regions, seeds, layer names.

Krita-free and Qt-free: plain bytes in, protocol objects out. Maps are one byte per pixel in the
painter's convention, 255 (white) = change fully, 0 (black) = keep; the paper's mu is 1 - map.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from shared import map_transforms, protocol
from shared.fan import fan_strengths
from shared.protocol import Region
from shared.regions import context_crop

from .settings import Settings

PREVIEW_LAYER_NAME = "Differential Diffusion preview"
MIN_SIDE = 8  # the protocol's smallest image side


class JobInputError(ValueError):
    """Something on the canvas stops a job from being built; the message tells the painter what to do."""


class DocumentGone(RuntimeError):
    """The document was closed (or its window with it): an ordinary event, not a failure."""


@dataclass(frozen=True)
class LayerInfo:
    """One node of a document, as krita_io lists them (stack order: later = higher)."""

    id: str
    name: str
    type: str
    parent_id: str | None
    visible: bool


def region_area(region: Region) -> int:
    return region.width * region.height


def clip_region(region: Region, width: int, height: int) -> Region:
    x0, y0 = max(region.x, 0), max(region.y, 0)
    x1, y1 = min(region.x + region.width, width), min(region.y + region.height, height)
    return Region(x0, y0, max(x1 - x0, 0), max(y1 - y0, 0))


def job_region(doc_width: int, doc_height: int, selection: Region | None, use_selection: bool) -> Region | None:
    """The rectangle a job may change: None for the whole canvas, else the selection's bounds."""
    if not use_selection:
        return None
    if selection is None or region_area(selection) == 0:
        raise JobInputError(
            "Region is set to 'Selection' but nothing is selected: select an area or set Region to 'Canvas'."
        )
    region = clip_region(selection, doc_width, doc_height)
    if region.width < MIN_SIDE or region.height < MIN_SIDE:
        raise JobInputError(f"The selection is smaller than {MIN_SIDE}x{MIN_SIDE} pixels: select a larger area.")
    if (region.width, region.height) == (doc_width, doc_height):
        return None
    return region


def crop_gray(gray: bytes, width: int, region: Region) -> bytes:
    """The rows of a one-byte-per-pixel map inside `region`."""
    return b"".join(
        gray[(region.y + y) * width + region.x : (region.y + y) * width + region.x + region.width]
        for y in range(region.height)
    )


def map_is_empty(change_map: bytes) -> bool:
    return not any(change_map)


def strength_to_byte(strength: float) -> int:
    return int(round(min(max(strength, 0.0), 1.0) * 255))


def fan_label(columns: int, low: float, high: float) -> str:
    if low > high:  # fan_strengths' ValueError would escape generate(): say it to the painter instead
        raise JobInputError("The fan's low strength is above its high strength: swap them.")
    return "fan " + " | ".join(f"{s:.2f}" for s in fan_strengths(columns, low, high))


def pick_seed(settings: Settings, rng: random.Random | None = None) -> int:
    """The job's base seed; variant i uses seed + i, so each result can be reproduced alone."""
    if settings.random_seed:
        return (rng or random.SystemRandom()).randrange(0, 2**31 - 16)
    return settings.seed


def result_layer_name(prompt: str, seed: int, label: str = "") -> str:
    text = " ".join(prompt.split()) or "(no prompt)"
    if len(text) > 48:
        text = text[:47] + "…"
    name = f"{text} · seed {seed}"
    return f"{name} · {label}" if label else name


@dataclass
class JobInputs:
    """What was read off the document for one job.

    `image_bgra` and `change_map` cover `crop` (the rectangle the job needs: the whole canvas, or
    the change plus context on a large one); `region` confines the change, in crop coordinates.
    `change_map` is None for fan and uniform jobs, which need none.
    """

    width: int
    height: int
    image_bgra: bytes
    change_map: bytes | None
    mode: str
    region: Region | None = None
    source_node_id: str | None = None  # the layer edited (Source 'Active layer'); None: the picture
    label: str = ""  # extra text for result layer names (e.g. the fan strengths)
    notes: list[str] = field(default_factory=list)  # things the painter should know (e.g. converted colours)
    crop: Region | None = None  # where the job's pixels sit on the canvas (None: the whole canvas)
    map_layer_id: str | None = None  # the Change Map layer read (results go below it)

    @property
    def origin(self) -> tuple[int, int]:
        return (self.crop.x, self.crop.y) if self.crop is not None else (0, 0)


def check_change_map(settings: Settings, inputs: JobInputs) -> None:
    """Refuse maps that would change nothing, with a message that says what to paint."""
    if inputs.change_map is None:
        return
    within = inputs.change_map
    if inputs.region is not None:
        within = crop_gray(inputs.change_map, inputs.width, inputs.region)
    if not map_is_empty(within):
        return
    if inputs.mode == "soft_inpaint":
        raise JobInputError("Soft inpaint repaints the selection: select the area to repaint first.")
    where = " inside the selection" if inputs.region is not None else ""
    raise JobInputError(
        f"The '{settings.map_layer}' layer is black{where}, so nothing would change: paint white "
        "(change fully) or grey (change a little) on it."
    )


def mode_label(settings: Settings) -> str:
    if settings.mode == "fan":
        return fan_label(settings.fan_columns, settings.fan_low, settings.fan_high)
    if settings.mode == "uniform":
        return f"strength {settings.strength:.2f}"
    if settings.mode == "soft_inpaint":
        return f"soft {settings.softness_px}px"
    return ""


def build_submit(settings: Settings, inputs: JobInputs, seed: int | None, ref: int = 0) -> protocol.SubmitRequest:
    """The protocol request for one job (the image and map frames go with it, see client.submit).

    Soft inpaint is sent as a change map: the selection was already grown and feathered by Krita
    itself, so what the painter sees in Krita is exactly what the server uses.
    """
    settings = settings.validated()
    if inputs.width < MIN_SIDE or inputs.height < MIN_SIDE:
        raise JobInputError(f"The picture is smaller than {MIN_SIDE}x{MIN_SIDE} pixels.")
    check_change_map(settings, inputs)
    mode = "change_map" if inputs.mode == "soft_inpaint" else inputs.mode
    request = protocol.SubmitRequest(
        ref=ref,
        width=inputs.width,
        height=inputs.height,
        mode=mode,
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt,
        steps=settings.steps,
        guidance=settings.guidance,
        seed=seed,
        scheduler=settings.scheduler or None,
        model=settings.model or None,
        variants=settings.variants,
        preview_every=settings.preview_every,
        region=inputs.region,
    )
    if mode == "fan":
        fan_width = inputs.region.width if inputs.region else inputs.width
        if fan_width < settings.fan_columns:
            raise JobInputError("The region is narrower than the number of fan columns.")
        if settings.fan_low > settings.fan_high:
            raise JobInputError("The fan's low strength is above its high strength: swap them.")
        request.fan = protocol.FanSpec(settings.fan_columns, settings.fan_low, settings.fan_high)
    elif mode == "uniform":
        if strength_to_byte(settings.strength) == 0:
            raise JobInputError("Strength 0 changes nothing: raise the strength.")
        request.strength = settings.strength
    return request


# -- reading a job off a canvas (krita_io.DocumentCanvas's primitives, or a test's stand-in) -------


MAP_NAME_SEPARATOR = " · "  # "Change Map · depth": a map the map tools made (map_tools.py)


def is_map_layer_name(layer_name: str, name: str) -> bool:
    """`name` itself, or `name · what` (a map made by the map tools, placed on top so it is read)."""
    return layer_name == name or layer_name.startswith(name + MAP_NAME_SEPARATOR)


def find_map_layer(layers, name: str, exclude: set[str] | frozenset = frozenset()):
    """The topmost paint layer named like the map (`is_map_layer_name`) that is not in `exclude`
    (None: there is none)."""
    found = None
    for layer in layers:  # stack order: later = higher
        if is_map_layer_name(layer.name, name) and layer.id not in exclude and layer.type != "selectionmask":
            found = layer
    return found


def maps_left_out(layers, name: str, read) -> list[str]:
    """The layers that are maps, not picture: the map `read`, every map the map tools made
    (`name · what`), and, when the map read is one of those, the painter's `name` layers it
    superseded. (A painter's lower layer called exactly `name` beside a painted map on top stays
    part of the picture, as it always did.)"""
    read_id = read.id if read is not None else None
    tool_made = read is not None and read.name != name
    return [la.id for la in layers if la.type != "selectionmask" and (
        la.id == read_id or (is_map_layer_name(la.name, name) and (la.name != name or tool_made)))]


def changed_rows(bgra: bytes, width: int, height: int) -> tuple[int, int]:
    """Rows ``[top, bottom)`` of a BGRA map layer outside which every row is opaque black (how
    'Create Change Map layer' fills it) or fully transparent (an unpainted layer): such rows are
    0, keep, in images.change_map_from_bgra, so only the rows between need converting. Each row is
    compared in C (``startswith`` at an offset): a 4K canvas's 4096 rows in milliseconds, where
    converting all of them costs most of a second. ``(0, 0)`` when every row is plain."""
    stride = width * 4
    black, clear = b"\0\0\0\xff" * width, bytes(stride)

    def plain(y: int) -> bool:
        return bgra.startswith(black, y * stride) or bgra.startswith(clear, y * stride)

    top = 0
    while top < height and plain(top):
        top += 1
    if top == height:
        return 0, 0
    bottom = height
    while plain(bottom - 1):
        bottom -= 1
    return top, bottom


MAP_BAND_ROWS = 64  # rows of the map layer read at a time: 1 MB on a 4K canvas


def painted_rows(bands, width: int) -> tuple[int, int, bytes]:
    """Rows ``[top, bottom)`` of a BGRA layer read as ``(first row, bytes)`` bands, outside which
    every row is plain (see :func:`changed_rows`), and their pixels; only those rows are kept."""
    stride = width * 4
    top = bottom = None
    kept: list[bytes] = []
    plain_since: list[bytes] = []  # plain bands after the last painted one: kept only if more paint follows
    for y, data in bands:
        first, last = changed_rows(data, width, len(data) // stride)
        if first == last:
            if top is not None:
                plain_since.append(data)
            continue
        if top is None:
            top, data = y + first, data[first * stride:]
        kept += plain_since
        plain_since = []
        kept.append(data)
        bottom = y + last
    if top is None:
        return 0, 0, b""
    return top, bottom, b"".join(kept)[:(bottom - top) * stride]


def changed_columns(bgra: bytes, width: int, top: int, bottom: int) -> tuple[int, int]:
    """Columns ``[left, right)`` of rows ``[top, bottom)`` outside which each row's pixels are all
    opaque black or all transparent (see :func:`changed_rows`): per row, the longest plain prefix
    and suffix by bisection, each probe one comparison in C."""
    stride = width * 4
    plain = memoryview(b"\0\0\0\xff" * width), memoryview(bytes(stride))
    left, right = width, 0
    for y in range(top, bottom):
        start = y * stride

        def prefix(n: int, start: int = start) -> bool:
            return any(bgra.startswith(p[:4 * n], start) for p in plain)

        def suffix(n: int, start: int = start) -> bool:
            return any(bgra.endswith(p[:4 * n], start, start + stride) for p in plain)

        left = min(left, _longest(prefix, left))
        right = max(right, width - _longest(suffix, width - right))
    return left, max(right, left)


def _longest(holds, limit: int) -> int:
    """The largest ``n <= limit`` with ``holds(n)``, for a ``holds`` true up to some n and false after
    (one probe when it holds at ``limit``: the rows of a painted box mostly share their edges)."""
    if holds(limit):
        return limit
    low, high = 0, limit - 1
    while low < high:
        middle = (low + high + 1) // 2
        if holds(middle):
            low = middle
        else:
            high = middle - 1
    return low


def nonzero_box(gray: bytes, width: int, height: int) -> Region | None:
    """The smallest rectangle holding every non-zero byte of a one-byte-per-pixel map."""
    stripped = gray.lstrip(b"\0")
    if not stripped:
        return None
    y0 = (len(gray) - len(stripped)) // width
    y1 = (len(gray.rstrip(b"\0")) - 1) // width + 1
    x0, x1 = width, 0
    for y in range(y0, y1):
        row = gray[y * width:(y + 1) * width]
        left = row.lstrip(b"\0")
        if left:
            x0 = min(x0, width - len(left))
            x1 = max(x1, len(row.rstrip(b"\0")))
    return Region(x0, y0, x1 - x0, y1 - y0)


def intersect(a: Region, b: Region | None) -> Region | None:
    if b is None:
        return a
    box = clip_region(Region(a.x - b.x, a.y - b.y, a.width, a.height), b.width, b.height)
    return Region(box.x + b.x, box.y + b.y, box.width, box.height) if region_area(box) else None


def gray_over(gray: bytes, box: Region, target: Region) -> bytes:
    """A map known over `box` (zero elsewhere) as one byte per pixel over `target`."""
    rows = []
    x0, x1 = max(box.x, target.x), min(box.x + box.width, target.x + target.width)
    for y in range(target.y, target.y + target.height):
        if x1 <= x0 or not box.y <= y < box.y + box.height:
            rows.append(bytes(target.width))
            continue
        start = (y - box.y) * box.width
        rows.append(bytes(x0 - target.x) + gray[start + x0 - box.x:start + x1 - box.x]
                    + bytes(target.x + target.width - x1))
    return b"".join(rows)


def read_job_inputs(canvas, settings: Settings, native_resolution: int | None = None,
                    hide_ids: tuple = ()) -> JobInputs:
    """Everything a job needs from a document, for the settings' mode, source and region.

    Which layers count: the map is the topmost layer named like the setting (never one of
    `hide_ids`, the plugin's own preview); the picture is everything visible but that map and
    `hide_ids`, or the active layer alone. Only the rectangle the job needs is read: with the
    model's `native_resolution` known, the change plus the context the server would take around
    it (shared.regions), else the whole canvas.
    """
    from .images import change_map_from_bgra  # Qt: only when a job is really read

    settings = settings.validated()
    width, height = canvas.size
    whole = Region(0, 0, width, height)
    layers = canvas.layers()
    map_layer = find_map_layer(layers, settings.map_layer, set(hide_ids))
    soft = None
    if settings.mode == "change_map" and map_layer is None:
        raise JobInputError(f"No layer named '{settings.map_layer}': press 'Create Change Map layer' and paint "
                            "white where the picture may change.")
    if settings.mode == "soft_inpaint":
        soft = canvas.soft_selection(settings.grow_px, settings.softness_px)
        if soft is None:
            raise JobInputError("Soft inpaint repaints the selection: select the area to repaint first.")
    # For soft inpaint the region is the feathered copy's bounds, so the soft edge is not cut off.
    region = job_region(width, height, soft[0] if soft else canvas.selection_box(), settings.region == "selection")

    band = box = None
    if settings.mode == "change_map":
        # Only the rows holding paint are converted (the rest are 0): the cost follows the edit.
        top, bottom, rows = painted_rows(canvas.layer_bands(map_layer.id, MAP_BAND_ROWS), width)
        left, right = changed_columns(rows, width, 0, bottom - top)
        band = Region(left, top, right - left, bottom - top)
        band_map = b""
        if band.width and band.height:
            stride = width * 4
            painted = rows if band.width == width else b"".join(
                rows[y * stride + left * 4:y * stride + right * 4] for y in range(band.height))
            band_map = change_map_from_bgra(painted, band.width, band.height)
        del rows
        if settings.map_gamma != 1.0:  # the job's map curve (0 stays 0: kept pixels stay kept)
            band_map = map_transforms.apply(map_transforms.gamma(settings.map_gamma), band_map)
        box = nonzero_box(band_map, band.width, band.height)
        box = Region(box.x + left, box.y + top, box.width, box.height) if box else None
    elif soft is not None:
        box = nonzero_box(soft[1], soft[0].width, soft[0].height)
        box = Region(box.x + soft[0].x, box.y + soft[0].y, box.width, box.height) if box else None
    else:
        box = region or whole
    box = intersect(box, region) if box is not None else None
    if box is None or native_resolution is None:
        crop = whole  # nothing to change (build_submit says so) or the model's size unknown yet
    else:
        crop = context_crop(box, (width, height), int(native_resolution))

    source_node_id, notes = None, []
    if settings.source == "active_layer":
        source_node_id = canvas.active_layer_id()
        if source_node_id is None:
            raise JobInputError("Source is 'Active layer' but no layer is active: click a layer first.")
        if map_layer is not None and settings.mode == "change_map" and source_node_id == map_layer.id:
            raise JobInputError("The active layer is the change map itself: click the picture layer, or set "
                                "Source to 'Visible picture'.")
        image = canvas.layer_pixels(source_node_id, crop)
    else:
        hide = [i for i in (*hide_ids, *maps_left_out(layers, settings.map_layer, map_layer)) if i]
        image, converted = canvas.projection_pixels(crop, hide)
        if converted:
            notes.append(f"The {converted} picture was sent as 8-bit sRGB; results come back as 8-bit layers.")

    change_map = None
    if band is not None:
        change_map = gray_over(band_map, band, crop)
    elif soft is not None:
        change_map = gray_over(soft[1], soft[0], crop)
    local = None
    if region is not None:
        local = Region(region.x - crop.x, region.y - crop.y, region.width, region.height)
        if (local.x, local.y, local.width, local.height) == (0, 0, crop.width, crop.height):
            local = None
    return JobInputs(crop.width, crop.height, image, change_map, settings.mode, local, source_node_id,
                     mode_label(settings), notes, None if crop == whole else crop,
                     map_layer.id if map_layer is not None else None)
