"""The paper's fixed change maps (§12.1.1) as gray8 bytes, row by row: a left-to-right gradient,
a radial one, the strength fan. Pure standard library (the plugin makes them inside Krita).

Rows repeat, so each pattern computes few distinct rows and joins copies of them: a 4096 x 4096
gradient or fan is one row times 4096, a radial map a quarter of its pixels.
"""

from __future__ import annotations

import math
import operator
from itertools import repeat

from .fan import fan_columns, fan_strengths


def _check(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ValueError(f"A map needs a size of at least 1x1, got {width}x{height}.")


def _byte(x: float) -> int:
    return min(255, max(0, int(math.floor(x + 0.5))))


def gradient(width: int, height: int, low: int = 0, high: int = 255) -> bytes:
    """``low`` at the left edge to ``high`` at the right edge, the same in every row."""
    _check(width, height)
    if width == 1:
        row = bytes([_byte((low + high) / 2.0)])
    else:
        row = bytes(_byte(low + (high - low) * x / (width - 1)) for x in range(width))
    return row * height


def radial(width: int, height: int, center: int = 0, edge: int = 255) -> bytes:
    """``center`` in the middle of the picture to ``edge`` at its corners, in circles."""
    _check(width, height)
    for name, value in (("center", center), ("edge", edge)):
        if not 0 <= value <= 255:
            raise ValueError(f"{name} must lie in 0..255, got {value}.")
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    reach = math.hypot(cx, cy) or 1.0
    half = (width + 1) // 2  # the left half (with the middle column) is mirrored
    span = float(edge - center)
    dx2 = [(x - cx) ** 2 for x in range(half)]
    rows: dict[int, bytes] = {}
    out = []
    for y in range(height):
        key = min(y, height - 1 - y)  # rows mirror about the middle too
        row = rows.get(key)
        if row is None:
            # floor(center + span * sqrt(dx2 + dy2) / reach + 0.5), one C-level pass per
            # operation (no Python code per pixel): a 4096 x 4096 map in well under a second.
            # Every value lies between center and edge, so int() is floor here.
            dist = map(math.sqrt, map(operator.add, dx2, repeat((y - cy) ** 2)))
            scaled = map(operator.truediv, map(operator.mul, repeat(span), dist), repeat(reach))
            left = bytes(map(int, map(operator.add, map(operator.add, repeat(float(center)), scaled),
                                      repeat(0.5))))
            row = rows[key] = left + left[:width - half][::-1]
        out.append(row)
    return b"".join(out)


def fan(width: int, height: int, count: int = 4, low: float = 0.25,
        high: float = 1.0) -> bytes:
    """``count`` vertical columns of uniform strength from ``low`` to ``high`` (``shared.fan``:
    the same columns as the server's fan mode)."""
    _check(width, height)
    row = bytearray(width)
    for (x0, x1), strength in zip(fan_columns(width, count), fan_strengths(count, low, high)):
        row[x0:x1] = bytes([_byte(strength * 255.0)]) * (x1 - x0)
    return bytes(row) * height


PATTERNS = {"gradient": gradient, "radial": radial, "fan": fan}
