"""Map makers: ``make_map`` (client -> server, then the picture's PNG frame) and ``map`` (server
-> client, then a gray8 frame), one dataclass each, encoding and decoding side by side; and
:class:`MakeMapCollector`, which pairs a ``make_map`` with its picture on the server.

A map request runs like a job: ``accepted`` (its ``job_id``), ``queue``, ``started``,
``progress``, then ``map`` with its gray8 frame and ``done``; or ``cancelled``/``error``.
Maps use the painter's convention (255 = change fully); a depth map has near = white.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from .capabilities import Capabilities
from .constants import (
    DEFAULT_MAX_PIXELS,
    E_BAD_FRAME,
    E_BAD_MESSAGE,
    E_FRAMES_TIMEOUT,
    E_TOO_LARGE,
    FRAME_IMAGE_PNG,
    FRAME_MAP_GRAY8,
    MAX_REF,
    MAX_SIDE,
    MAX_SOFTNESS_PX,
    SUBMIT_FRAMES_TIMEOUT_S,
    ProtocolError,
)
from .fields import Region, read_float, read_int, read_obj, read_str
from .frames import Frame, dumps, encode_frame, png_size
from .messages import Event

MAP_KINDS = ("depth", "segments")
MAX_MAP_POINTS = 32


@dataclass
class MakeMap:
    """Make a change map from the picture that follows (a PNG frame tagged with ``ref``).

    ``depth``: monocular depth, near = white. ``segments``: the object under ``points`` (picture
    pixels) and/or inside ``box``, white on black, its edge blurred by ``softness_px``."""

    TYPE: ClassVar[str] = "make_map"
    ref: int
    kind: str
    width: int
    height: int
    points: list[tuple[int, int]] = field(default_factory=list)
    box: Region | None = None
    softness_px: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "make_map", "ref": self.ref, "kind": self.kind,
                                   "width": self.width, "height": self.height}
        if self.points:
            message["points"] = [[x, y] for x, y in self.points]
        if self.box is not None:
            message["box"] = self.box.to_dict()
        if self.softness_px:
            message["softness_px"] = self.softness_px
        return message

    def frames(self, image_png: bytes) -> list[str | bytes]:
        """The request and its picture, in order."""
        if png_size(image_png) != (self.width, self.height):
            raise ValueError(f"image is {png_size(image_png)} but the request says "
                             f"{self.width}x{self.height}")
        return [dumps(self.to_dict()),
                encode_frame(FRAME_IMAGE_PNG, self.ref, 0, self.width, self.height, image_png)]

    @classmethod
    def from_dict(cls, m: dict[str, Any], capabilities: Capabilities | None = None) -> MakeMap:
        w = "make_map"
        ref = read_int(m, "ref", lo=0, hi=MAX_REF, required=True, where=w)
        try:
            return cls._read(m, capabilities, ref)
        except ProtocolError as exc:
            exc.ref = ref
            raise

    @classmethod
    def _read(cls, m: dict[str, Any], caps: Capabilities | None, ref: int) -> MakeMap:
        w = "make_map"
        kind = read_str(m, "kind", max_len=32, required=True, where=w)
        if kind not in MAP_KINDS:
            raise ProtocolError(E_BAD_MESSAGE, f"make_map: unknown kind {kind!r}; this server "
                                               f"makes: {', '.join(MAP_KINDS)}.")
        width = read_int(m, "width", lo=1, hi=MAX_SIDE, required=True, where=w)
        height = read_int(m, "height", lo=1, hi=MAX_SIDE, required=True, where=w)
        max_pixels = caps.max_pixels if caps else DEFAULT_MAX_PIXELS
        if width * height > max_pixels:
            raise ProtocolError(E_TOO_LARGE, f"The picture is {width}x{height} = "
                                             f"{width * height} pixels; this server accepts at "
                                             f"most {max_pixels}. Use a smaller canvas.")
        request = cls(ref, kind, width, height,
                      softness_px=read_float(m, "softness_px", lo=0.0, hi=MAX_SOFTNESS_PX,
                                             default=0.0, where=w))
        points = m.get("points") or []
        if not isinstance(points, list) or len(points) > MAX_MAP_POINTS:
            raise ProtocolError(E_BAD_MESSAGE, f"make_map: 'points' must be a list of at most "
                                               f"{MAX_MAP_POINTS} [x, y] pairs.")
        for point in points:
            if not (isinstance(point, list) and len(point) == 2 and all(
                    type(v) is int and 0 <= v < limit for v, limit in zip(point, (width, height)))):
                raise ProtocolError(E_BAD_MESSAGE, f"make_map: point {point!r} is not an [x, y] "
                                                   f"pair inside the {width}x{height} picture.")
            request.points.append((point[0], point[1]))
        box = read_obj(m, "box", where=w)
        if box is not None:
            bw = "make_map.box"
            request.box = Region(*(read_int(box, k, lo=lo, hi=hi, required=True, where=bw)
                                   for k, lo, hi in (("x", 0, width - 1), ("y", 0, height - 1),
                                                     ("width", 1, width), ("height", 1, height))))
            b = request.box
            if b.x + b.width > width or b.y + b.height > height:
                raise ProtocolError(E_BAD_MESSAGE, f"make_map.box does not fit in the "
                                                   f"{width}x{height} picture.")
        if kind == "segments" and not request.points and request.box is None:
            raise ProtocolError(E_BAD_MESSAGE, "make_map: a 'segments' map needs 'points' (click "
                                               "on the object) or a 'box' around it.")
        return request


@dataclass
class MapReady(Event):
    """The finished map of job ``job_id``: ``width`` x ``height`` gray8 bytes (the picture's
    size). Decoded from its announcement it has no bytes yet until :meth:`with_frame`."""

    TYPE: ClassVar[str] = "map"
    FRAME_KIND: ClassVar[int] = FRAME_MAP_GRAY8
    job_id: int
    kind: str
    width: int
    height: int
    gray8: bytes = b""

    def to_dict(self) -> dict[str, Any]:
        return {"type": "map", "job_id": self.job_id, "kind": self.kind, "width": self.width,
                "height": self.height}

    def frames(self) -> list[str | bytes]:
        return [dumps(self.to_dict()), encode_frame(FRAME_MAP_GRAY8, self.job_id, 0, self.width,
                                                    self.height, self.gray8)]

    @classmethod
    def from_dict(cls, m: dict[str, Any]) -> MapReady:
        w = "map"
        return cls(read_int(m, "job_id", lo=0, hi=MAX_REF, required=True, where=w),
                   read_str(m, "kind", max_len=32, default="", where=w),
                   read_int(m, "width", lo=1, hi=MAX_SIDE, required=True, where=w),
                   read_int(m, "height", lo=1, hi=MAX_SIDE, required=True, where=w))

    def with_frame(self, frame: Frame) -> MapReady:
        if (frame.width, frame.height) != (self.width, self.height):
            raise ProtocolError(E_BAD_FRAME, f"The map frame is {frame.width}x{frame.height}, "
                                             f"its announcement says {self.width}x{self.height}.",
                                job_id=self.job_id)
        return replace(self, gray8=frame.payload)


@dataclass
class CompleteMakeMap:
    """A validated ``make_map`` with its picture."""

    request: MakeMap
    image_png: bytes


class MakeMapCollector:
    """Per connection: pairs each ``make_map`` with the PNG frame that follows it; like a submit's
    frames, a picture that has not come ``timeout_s`` after its request ends it (:meth:`expire`)."""

    def __init__(self, capabilities: Capabilities | None = None,
                 timeout_s: float = SUBMIT_FRAMES_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capabilities = capabilities
        self.timeout_s = timeout_s
        self.clock = clock
        self._pending: dict[int, MakeMap] = {}
        self._deadlines: dict[int, float] = {}

    @property
    def pending_refs(self) -> list[int]:
        return list(self._pending)

    def expects(self, ref: int) -> bool:
        return ref in self._pending

    def add_request(self, message: dict[str, Any]) -> MakeMap:
        request = MakeMap.from_dict(message, self.capabilities)
        if request.ref in self._pending:
            raise ProtocolError(E_BAD_MESSAGE, f"make_map ref {request.ref} is already waiting "
                                               f"for its picture; use a new ref.", ref=request.ref)
        self._pending[request.ref] = request
        self._deadlines[request.ref] = self.clock() + self.timeout_s
        return request

    def add_frame(self, frame: Frame) -> CompleteMakeMap:
        request = self._pending.pop(frame.ref)
        del self._deadlines[frame.ref]
        if frame.kind != FRAME_IMAGE_PNG:
            raise ProtocolError(E_BAD_FRAME, f"A {frame.kind_name} frame is not part of a "
                                             f"make_map request; send the picture's PNG.",
                                ref=frame.ref)
        if (frame.width, frame.height) != (request.width, request.height):
            raise ProtocolError(E_BAD_FRAME, f"The picture is {frame.width}x{frame.height} but "
                                             f"make_map says {request.width}x{request.height}.",
                                ref=frame.ref)
        return CompleteMakeMap(request, frame.payload)

    def drop(self, ref: int) -> bool:
        self._deadlines.pop(ref, None)
        return self._pending.pop(ref, None) is not None

    def next_deadline(self) -> float | None:
        return min(self._deadlines.values(), default=None)

    def expire(self) -> list[ProtocolError]:
        """End every request whose picture did not come in time: the errors to send."""
        now = self.clock()
        late = [ref for ref, deadline in self._deadlines.items() if deadline <= now]
        for ref in late:
            self.drop(ref)
        return [ProtocolError(E_FRAMES_TIMEOUT, f"The picture of make_map {ref} did not arrive "
                                                f"within {self.timeout_s:g} s of it; the request "
                                                f"is dropped. Send it right after the request.",
                              ref=ref) for ref in late]
