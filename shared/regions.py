"""Which rectangle of a canvas a job needs: the change's box plus context, at the model's size.

Pure standard library: the server plans its crop with it (server/regions.py), and the Krita
plugin reads and sends only that rectangle of a large canvas, so both sides agree on it to the
pixel and a small edit on a 4K canvas costs a small edit at both ends of the socket.
"""

from __future__ import annotations

from .fan import LATENT_CELL_PX
from .protocol import Region

__all__ = ["CONTEXT", "LATENT_CELL_PX", "context_crop"]
CONTEXT = 0.25  # context around the change, as a fraction of its larger side


def context_crop(box: Region | None, canvas: tuple[int, int], native_resolution: int,
                 context: float = CONTEXT) -> Region:
    """The rectangle to process for a change inside ``box`` on a ``canvas`` (width, height).

    ``box`` widened by ``context`` (a fraction of its larger side, at least 1/8 of the native
    resolution) so the model sees the surroundings, then to at least the native resolution per
    side where the canvas allows, aligned to latent cells; always covers ``box``. A job that
    changes nothing (``box`` None) gets the smallest such rectangle at the top-left corner.
    """
    width, height = canvas
    box = box or Region(0, 0, 1, 1)
    margin = max(native_resolution // 8, int(round(context * max(box.width, box.height))))
    x0, x1 = _widen(box.x - margin, box.x + box.width + margin, box.x, box.x + box.width,
                    native_resolution, width)
    y0, y1 = _widen(box.y - margin, box.y + box.height + margin, box.y, box.y + box.height,
                    native_resolution, height)
    return Region(x0, y0, x1 - x0, y1 - y0)


def _widen(lo: int, hi: int, must_lo: int, must_hi: int, minimum: int, limit: int) -> tuple[int, int]:
    """Clamp [lo, hi) into [0, limit), at least ``minimum`` long, on latent cells when the canvas
    allows; shifts rather than shrinks at the canvas edges; always covers [must_lo, must_hi)."""
    lo, hi = max(lo, 0), min(hi, limit)
    length = min(max(hi - lo, minimum), limit)
    cell = LATENT_CELL_PX
    if length % cell and limit >= length + (cell - length % cell):
        length += cell - length % cell
    center = (lo + hi) / 2
    lo = int(round(center - length / 2))
    lo = lo // cell * cell  # start on a latent cell
    lo = min(max(lo, 0), limit - length)
    # Alignment must never uncover part of the map's own box.
    lo = min(lo, must_lo)
    lo = max(lo, must_hi - length)
    return lo, lo + length
