"""The ``submit`` message: one job as the client asks for it, its checks, and its frames.

The biggest message by far, so it has its own module. Both sides run :func:`parse_submit`: the
client before uploading (so a mistake shows before any picture is sent), the server on receipt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .capabilities import Capabilities, check_options
from .constants import (
    DEFAULT_MAX_PIXELS,
    E_BAD_MESSAGE,
    E_TOO_LARGE,
    E_UNKNOWN_MODEL,
    E_UNKNOWN_SCHEDULER,
    FRAME_IMAGE_PNG,
    FRAME_MAP_GRAY8,
    MAX_FAN_COUNT,
    MAX_GROW_PX,
    MAX_GUIDANCE,
    MAX_MODEL_CHARS,
    MAX_PROMPT_CHARS,
    MAX_REF,
    MAX_SCHEDULER_CHARS,
    MAX_SEED,
    MAX_SIDE,
    MAX_SOFTNESS_PX,
    MAX_STEPS,
    MAX_VARIANTS,
    MODES,
    MODES_WITH_MAP,
    ProtocolError,
)
from .fields import Region, read_bool, read_float, read_int, read_obj, read_str
from .frames import dumps, encode_frame, png_size


@dataclass(frozen=True)
class FanSpec:
    """Strength fan: ``count`` vertical columns with strengths evenly spaced from low to high
    (geometry in ``shared.fan``)."""

    count: int
    low: float
    high: float


@dataclass(frozen=True)
class SoftInpaint:
    """Soft inpaint: the gray8 frame is a mask (white = repaint); it is grown by ``grow_px`` and
    blurred by ``softness_px`` into a change map on the server."""

    softness_px: float = 16.0
    grow_px: int = 0


@dataclass
class SubmitRequest:
    """One job as the client asks for it.

    ``mode`` decides which fields matter and which binary frames follow the submit:
    ``change_map`` (image + gray8 change map), ``soft_inpaint`` (image + gray8 mask,
    ``soft_inpaint``), ``fan`` (image, ``fan``), ``uniform`` (image, ``strength``).
    ``seed`` None lets the server pick one; variant ``i`` uses :func:`variant_seed`.
    ``preview_every`` None takes the server's default; 0 turns previews off.
    ``options``: the model's own options by name (see :class:`OptionSpec`), e.g.
    ``{"refiner_split": 0.7}``; None or empty: every option at its default.
    """

    ref: int
    width: int
    height: int
    mode: str = "change_map"
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 30
    guidance: float = 7.0
    seed: int | None = None
    scheduler: str | None = None
    model: str | None = None
    variants: int = 1
    preview_every: int | None = None
    region: Region | None = None
    strength: float | None = None
    soft_inpaint: SoftInpaint | None = None
    fan: FanSpec | None = None
    options: dict[str, Any] | None = None
    # A live job: queueing it cancels this client's earlier live jobs (capability "replace").
    replace: bool = False

    @property
    def needs_map(self) -> bool:
        return self.mode in MODES_WITH_MAP

    def to_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "submit", "ref": self.ref, "width": self.width, "height": self.height,
            "mode": self.mode, "prompt": self.prompt, "negative_prompt": self.negative_prompt,
            "steps": self.steps, "guidance": self.guidance, "variants": self.variants,
        }
        optional = {"seed": self.seed, "scheduler": self.scheduler, "model": self.model,
                    "preview_every": self.preview_every, "strength": self.strength}
        message.update({k: v for k, v in optional.items() if v is not None})
        if self.region is not None:
            message["region"] = self.region.to_dict()
        if self.soft_inpaint is not None:
            message["soft_inpaint"] = {"softness_px": self.soft_inpaint.softness_px,
                                       "grow_px": self.soft_inpaint.grow_px}
        if self.fan is not None:
            message["fan"] = {"count": self.fan.count, "low": self.fan.low, "high": self.fan.high}
        if self.options:
            message["options"] = dict(self.options)
        if self.replace:
            message["replace"] = True
        return message


def variant_seed(seed: int, index: int) -> int:
    """The seed of variant ``index`` of a job with ``seed``: ``seed + index``, wrapped to stay a
    legal seed, so any variant's seed can be submitted alone to reproduce it."""
    return (seed + index) % (MAX_SEED + 1)


def parse_submit(message: dict[str, Any], capabilities: Capabilities | None = None) -> SubmitRequest:
    """Validate a ``submit`` message against the protocol (and the server's limits, if given).

    Raises :class:`ProtocolError` with a message naming the field at fault."""
    caps = capabilities
    where = "submit"
    ref = read_int(message, "ref", lo=0, hi=MAX_REF, required=True, where=where)
    try:
        return _parse_submit(message, caps, ref)
    except ProtocolError as exc:
        exc.ref = ref
        raise


def _parse_submit(message: dict[str, Any], caps: Capabilities | None, ref: int) -> SubmitRequest:
    where = "submit"
    width = read_int(message, "width", lo=8, hi=MAX_SIDE, required=True, where=where)
    height = read_int(message, "height", lo=8, hi=MAX_SIDE, required=True, where=where)
    max_pixels = caps.max_pixels if caps else DEFAULT_MAX_PIXELS
    if width * height > max_pixels:
        raise ProtocolError(E_TOO_LARGE, f"The image is {width}x{height} = {width * height} "
                                         f"pixels; this server accepts at most {max_pixels}. "
                                         f"Use a smaller canvas or a region.")
    mode = read_str(message, "mode", max_len=32, default="change_map", where=where)
    if mode not in MODES:
        raise ProtocolError(E_BAD_MESSAGE, f"submit: unknown mode {mode!r}; expected one of "
                                           f"{', '.join(MODES)}.")
    max_steps = caps.max_steps if caps else MAX_STEPS
    max_variants = caps.max_variants if caps else MAX_VARIANTS
    steps = read_int(message, "steps", lo=1, hi=max_steps, default=30, where=where)
    request = SubmitRequest(
        ref=ref, width=width, height=height, mode=mode,
        prompt=read_str(message, "prompt", max_len=MAX_PROMPT_CHARS, default="", where=where),
        negative_prompt=read_str(message, "negative_prompt", max_len=MAX_PROMPT_CHARS,
                                 default="", where=where),
        steps=steps,
        guidance=read_float(message, "guidance", lo=0.0, hi=MAX_GUIDANCE, default=7.0,
                            where=where),
        seed=read_int(message, "seed", lo=0, hi=MAX_SEED, default=None, where=where),
        scheduler=read_str(message, "scheduler", max_len=MAX_SCHEDULER_CHARS, default=None,
                           where=where),
        model=read_str(message, "model", max_len=MAX_MODEL_CHARS, default=None, where=where),
        variants=read_int(message, "variants", lo=1, hi=max_variants, default=1, where=where),
        preview_every=read_int(message, "preview_every", lo=0, hi=max_steps, default=None,
                               where=where),
        replace=read_bool(message, "replace", default=False, where=where),
    )
    options = read_obj(message, "options", where=where)
    info = None
    if caps is not None:
        if request.model is not None and request.model not in caps.models:
            raise ProtocolError(E_UNKNOWN_MODEL, f"Unknown model {request.model!r}; this server "
                                                 f"offers: {', '.join(caps.models)}.")
        info = caps.info_for(request.model)
        # The target model's own schedulers; the current model's list from a server that sends
        # no model_info; a model the server knows nothing about yet is checked once loaded.
        schedulers = info.schedulers if info is not None else (
            caps.schedulers if request.model in (None, caps.current_model) else None)
        if request.scheduler is not None and schedulers is not None \
                and request.scheduler not in schedulers:
            model = request.model or caps.current_model
            raise ProtocolError(E_UNKNOWN_SCHEDULER, f"Unknown scheduler {request.scheduler!r} "
                                                     f"for model {model!r}; it takes: "
                                                     f"{', '.join(schedulers)}.")
    if options is not None:
        known = info.options if info is not None and info.loaded else None
        request.options = check_options(options, known, request.model or (
            caps.current_model if caps else "")) or None

    region = read_obj(message, "region", where=where)
    if region is not None:
        rw = "submit.region"
        request.region = Region(
            x=read_int(region, "x", lo=0, hi=width - 1, required=True, where=rw),
            y=read_int(region, "y", lo=0, hi=height - 1, required=True, where=rw),
            width=read_int(region, "width", lo=1, hi=width, required=True, where=rw),
            height=read_int(region, "height", lo=1, hi=height, required=True, where=rw),
        )
        r = request.region
        if r.x + r.width > width or r.y + r.height > height:
            raise ProtocolError(E_BAD_MESSAGE, f"submit.region {r.width}x{r.height} at "
                                               f"({r.x}, {r.y}) does not fit in the "
                                               f"{width}x{height} image.")

    if mode == "uniform":
        request.strength = read_float(message, "strength", lo=0.0, hi=1.0, required=True,
                                      where=where)
    elif mode == "soft_inpaint":
        spec = read_obj(message, "soft_inpaint", where=where) or {}
        sw = "submit.soft_inpaint"
        request.soft_inpaint = SoftInpaint(
            softness_px=read_float(spec, "softness_px", lo=0.0, hi=MAX_SOFTNESS_PX,
                                   default=16.0, where=sw),
            grow_px=read_int(spec, "grow_px", lo=-MAX_GROW_PX, hi=MAX_GROW_PX, default=0,
                             where=sw),
        )
    elif mode == "fan":
        spec = read_obj(message, "fan", required=True, where=where)
        fw = "submit.fan"
        count = read_int(spec, "count", lo=1, hi=MAX_FAN_COUNT, required=True, where=fw)
        low = read_float(spec, "low", lo=0.0, hi=1.0, required=True, where=fw)
        high = read_float(spec, "high", lo=0.0, hi=1.0, required=True, where=fw)
        if low > high:
            raise ProtocolError(E_BAD_MESSAGE, f"submit.fan: 'low' ({low}) is above 'high' "
                                               f"({high}).")
        fan_width = request.region.width if request.region else width
        if count > fan_width:
            raise ProtocolError(E_BAD_MESSAGE, f"submit.fan: {count} columns do not fit in "
                                               f"{fan_width} pixels.")
        request.fan = FanSpec(count=count, low=low, high=high)
    return request


def submit_frames(request: SubmitRequest, image_png: bytes,
                  map_gray8: bytes | None = None) -> list[str | bytes]:
    """Everything a client sends for one job, in order: the submit, the image, the map/mask."""
    size = png_size(image_png)
    if size != (request.width, request.height):
        raise ValueError(f"image is {size[0]}x{size[1]} but the request says "
                         f"{request.width}x{request.height}")
    if request.needs_map and map_gray8 is None:
        raise ValueError(f"mode {request.mode!r} needs a gray8 map")
    if not request.needs_map and map_gray8 is not None:
        raise ValueError(f"mode {request.mode!r} takes no map frame")
    frames: list[str | bytes] = [
        dumps(request.to_message()),
        encode_frame(FRAME_IMAGE_PNG, request.ref, 0, request.width, request.height, image_png),
    ]
    if map_gray8 is not None:
        frames.append(encode_frame(FRAME_MAP_GRAY8, request.ref, 0, request.width,
                                   request.height, map_gray8))
    return frames
