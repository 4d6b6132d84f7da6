"""From what was read off the canvas to a job request: change maps, regions, seeds, layer names.

Krita-free and Qt-free: plain bytes in, protocol objects out. Maps are one byte per pixel in the
painter's convention, 255 (white) = change fully, 0 (black) = keep; the paper's mu is 1 - map.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from shared import protocol
from shared.fan import fan_strengths
from shared.protocol import Region

from .settings import Settings

PREVIEW_LAYER_NAME = "Differential Diffusion preview"
MIN_SIDE = 8  # the protocol's smallest image side


class JobInputError(ValueError):
    """Something on the canvas stops a job from being built; the message tells the painter what to do."""


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
    """What krita_io read off the document for one job.

    `image_bgra` and `change_map` cover the whole document (the server takes the context it needs
    around `region` itself); `change_map` is None for fan and uniform jobs, which need none.
    """

    width: int
    height: int
    image_bgra: bytes
    change_map: bytes | None
    mode: str
    region: Region | None = None
    source_node_id: str | None = None  # results go above this node; None: at the top of the stack
    label: str = ""  # extra text for result layer names (e.g. the fan strengths)
    notes: list[str] = field(default_factory=list)  # things the painter should know (e.g. converted colours)


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
