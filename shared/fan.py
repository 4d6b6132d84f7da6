"""Strength-fan geometry (paper §4.2): N vertical columns, each with its own uniform strength.

Pure standard library: the Krita plugin names the result layer with these strengths and the
server paints the change map with the same strengths and column spans, so both always agree.
Strengths use the painter's convention (1 = change fully, 0 = keep; ``mu_paper = 1 - strength``).
"""

from __future__ import annotations

import operator

# Column edges fall on multiples of this when the columns are wide enough: diffusion models
# work on 8x8-pixel latent cells, so an aligned column is uniform in latent space too.
LATENT_CELL_PX = 8


def fan_strengths(count: int, low: float, high: float) -> list[float]:
    """``count`` strengths evenly spaced from ``low`` to ``high`` (both included).

    One column gets ``high``: a fan of one is a plain run at the top of the range.
    """
    whole = _whole(count)
    if whole is None or whole < 1:
        raise ValueError(f"A strength fan needs at least one column, got count={count!r}.")
    count = whole
    if not (0.0 <= low <= 1.0 and 0.0 <= high <= 1.0):
        raise ValueError(f"Fan strengths must lie in [0, 1], got low={low}, high={high}.")
    if low > high:
        raise ValueError(f"Fan range is upside down: low={low} is above high={high}.")
    if count == 1:
        return [float(high)]
    step = (high - low) / (count - 1)
    # Rounded so that labels read 0.3, not 0.30000000000000004; the last one is exactly `high`.
    return [round(low + j * step, 6) for j in range(count - 1)] + [float(high)]


def fan_columns(width: int, count: int) -> list[tuple[int, int]]:
    """Pixel spans ``(x0, x1)`` (x1 exclusive) of ``count`` columns tiling ``[0, width)``.

    Columns are as equal as possible; their inner edges are snapped to multiples of
    :data:`LATENT_CELL_PX` when every column can still be at least that wide.
    """
    count_in, width_in = count, width
    count, width = _whole(count), _whole(width)
    if count is None or count < 1:
        raise ValueError(f"A strength fan needs at least one column, got count={count_in!r}.")
    if width is None or width < count:
        raise ValueError(f"{count} fan columns do not fit in an image {width_in!r} pixels wide.")
    edges = [(j * width) // count for j in range(count + 1)]
    cell = LATENT_CELL_PX
    if width >= cell * count:
        snapped = [0] + [round(e / cell) * cell for e in edges[1:-1]] + [width]
        if all(b - a >= cell for a, b in zip(snapped, snapped[1:], strict=False)):
            edges = snapped
    return list(zip(edges[:-1], edges[1:], strict=False))


def _whole(value: object) -> int | None:
    """``value`` as a plain int when it is a whole number (numpy integers too, not bools)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None
