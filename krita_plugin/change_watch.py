"""Noticing that the painter changed a layer, without reading it at full resolution.

Krita 5's scripting API sends no "this layer's pixels changed" signal, so Live mode looks: a few
times a second it asks Krita for a small thumbnail of the Change Map layer (krita_io's
`layer_thumbnail`, which samples the layer at THUMBNAIL_PX on its long side: the cost depends on
the thumbnail, not on the canvas) and compares a digest of it with the last one. A stroke narrower
than the sampling step (canvas side / THUMBNAIL_PX, 16 px on a 4096 px canvas) can slip between
samples; a soft brush on a change map is wider than that.
"""

from __future__ import annotations

import hashlib
from typing import Any

THUMBNAIL_PX = 256


class LayerWatcher:
    """Tells whether a layer looks different from the last time it was asked about it."""

    def __init__(self, thumbnail_px: int = THUMBNAIL_PX) -> None:
        self.thumbnail_px = thumbnail_px
        self._seen: tuple[Any, str | None, bytes] | None = None  # (canvas, layer id, digest)

    def reset(self) -> None:
        self._seen = None

    def changed(self, canvas: Any, layer_id: str | None) -> bool:
        """True when the layer's pixels (or which layer it is) changed since the last call. The
        first call only takes a reference: nothing changed yet. Raises what the canvas raises
        (DocumentGone for a closed document)."""
        data = canvas.layer_thumbnail(layer_id, self.thumbnail_px) if layer_id is not None else b""
        digest = hashlib.blake2b(data, digest_size=16).digest()
        seen, self._seen = self._seen, (canvas, layer_id, digest)
        if seen is None or seen[0] is not canvas:
            return False
        return seen[1:] != (layer_id, digest)
