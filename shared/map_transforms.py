"""Change-map transforms on 8-bit maps, as 256-byte lookup tables (``bytes.translate``).

Pure standard library: the plugin runs these inside Krita's own Python (no numpy), the server
and the tests may use them too. A transform is a table ``lut`` with ``lut[v]`` the new value of
a map byte ``v``; tables compose (:func:`compose`) and apply to a whole map in one C-speed
``bytes.translate`` call (:func:`apply`), so a 4096 x 4096 map costs one pass whatever the chain.

Maps use the painter's convention: 255 = change fully, 0 = keep. A depth map from the server has
near = white, so "keep the near subject, change the background" is :func:`invert`, and "change
only a depth band" is :func:`focus_band`.

Every function rounds half up (``floor(x + 0.5)``), so the tables match a numpy version of the
same formula to the byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Sequence

IDENTITY = bytes(range(256))


def _byte(x: float) -> int:
    return min(255, max(0, int(math.floor(x + 0.5))))


def _check_byte(name: str, value: int) -> None:
    if not 0 <= value <= 255:
        raise ValueError(f"{name} must lie in 0..255, got {value}.")


def apply(lut: bytes, gray8: bytes) -> bytes:
    """``gray8`` with every byte mapped through ``lut``."""
    if len(lut) != 256:
        raise ValueError(f"A lookup table has 256 entries, got {len(lut)}.")
    return bytes(gray8).translate(lut)


def compose(*luts: bytes) -> bytes:
    """One table doing ``luts[0]``, then ``luts[1]``, ...; the identity for none."""
    out = IDENTITY
    for lut in luts:
        out = out.translate(lut)
    return out


def levels(black: int = 0, white: int = 255) -> bytes:
    """Stretch ``[black, white]`` to ``[0, 255]``: at or below ``black`` becomes 0 (keep), at or
    above ``white`` 255 (change fully). ``black > white`` gives the stretch inverted."""
    _check_byte("black", black)
    _check_byte("white", white)
    if black == white:  # a hard threshold
        return bytes(0 if v < black else 255 for v in range(256))
    span = white - black
    return bytes(_byte((v - black) * 255.0 / span) for v in range(256))


def gamma(value: float) -> bytes:
    """Krita's levels gamma: ``out = 255 * (v / 255) ** (1 / value)``. Above 1 the map gets
    stronger (more change), below 1 gentler; 0 and 255 stay where they are, so what was kept is
    still kept exactly."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"gamma must be a positive number, got {value}.")
    inverse = 1.0 / value
    return bytes(_byte(255.0 * (v / 255.0) ** inverse) for v in range(256))


def curve(points: Sequence[tuple[int, int]]) -> bytes:
    """A piecewise-linear curve through ``(input, output)`` points (like Krita's curves tool,
    without the smoothing); flat before the first point and after the last."""
    pts = sorted((int(x), int(y)) for x, y in points)
    if not pts:
        raise ValueError("A curve needs at least one point.")
    for x, y in pts:
        _check_byte("a curve point", x)
        _check_byte("a curve point", y)
    out = []
    for v in range(256):
        if v <= pts[0][0]:
            out.append(pts[0][1])
        elif v >= pts[-1][0]:
            out.append(pts[-1][1])
        else:
            for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
                if x0 <= v <= x1 and x1 > x0:
                    out.append(_byte(y0 + (y1 - y0) * (v - x0) / (x1 - x0)))
                    break
    return bytes(out)


def invert() -> bytes:
    """255 - v: keep becomes change and the other way round."""
    return bytes(255 - v for v in range(256))


def focus_band(center: int, half_width: int, feather: int = 0, keep_band: bool = True) -> bytes:
    """A band of values (on a depth map: a range of distances) kept, the rest changed (or the
    opposite with ``keep_band=False``).

    Values within ``half_width`` of ``center`` map to 0 (kept), values further than
    ``half_width + feather`` to 255, with a linear ramp over the ``feather`` in between."""
    _check_byte("center", center)
    if half_width < 0 or feather < 0:
        raise ValueError("half_width and feather must not be negative.")
    out = []
    for v in range(256):
        distance = abs(v - center) - half_width
        if distance <= 0:
            change = 0.0
        elif distance >= feather:
            change = 255.0
        else:
            change = 255.0 * distance / feather
        out.append(_byte(change if keep_band else 255.0 - change))
    return bytes(out)


def posterise(count: int) -> bytes:
    """``count`` strengths evenly spaced from 0 to 255 (``count >= 2``), each value to the
    nearest: a smooth map becomes a few flat zones."""
    if count < 2 or count > 256:
        raise ValueError(f"posterise needs 2..256 strengths, got {count}.")
    steps = count - 1
    return bytes(_byte(math.floor(v * steps / 255.0 + 0.5) * 255.0 / steps) for v in range(256))


def clamp(low: int = 0, high: int = 255) -> bytes:
    """Every value kept within ``[low, high]``: a floor on the change (``low``), a ceiling
    (``high``)."""
    _check_byte("low", low)
    _check_byte("high", high)
    if low > high:
        raise ValueError(f"clamp: low {low} is above high {high}.")
    return bytes(min(high, max(low, v)) for v in range(256))


@dataclass(frozen=True)
class MapTransform:
    """The docker's transform row: levels, focus band, gamma, posterise, clamp, invert, in that
    order. The defaults change nothing. ``band`` (-1: off) keeps the values within
    ``band_width`` of it and changes the rest, with a ramp of half ``band_width``."""

    black: int = 0
    white: int = 255
    band: int = -1
    band_width: int = 32
    gamma: float = 1.0
    posterise: int = 0  # 0 or 1: off
    low: int = 0
    high: int = 255
    invert: bool = False

    @property
    def is_identity(self) -> bool:
        return self.lut() == IDENTITY

    def lut(self) -> bytes:
        steps = [levels(self.black, self.white)]
        if self.band >= 0:
            steps.append(focus_band(self.band, self.band_width, self.band_width // 2))
        if self.gamma != 1.0:
            steps.append(gamma(self.gamma))
        if self.posterise >= 2:
            steps.append(posterise(self.posterise))
        steps.append(clamp(self.low, self.high))
        if self.invert:
            steps.append(invert())
        return compose(*steps)

    def apply(self, gray8: bytes) -> bytes:
        return apply(self.lut(), gray8)
