"""Results the painter has not decided about yet: show a variant, apply it, or discard it.

A job's results live on ONE layer the plugin owns, named after the prompt and the shown
variant's seed; the other variants wait here (their PNG and a thumbnail) and showing one rewrites
that layer in place. Until the painter applies it, the plugin may rewrite, hide or remove the
layer; once applied, the layer is the painter's and the plugin forgets it (never touches it again).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.protocol import Region

MAX_ENTRIES = 32  # results keep their PNG in memory; old ones drop off the list (their layers stay)


@dataclass
class JobLayer:
    """The one layer holding a job's shown variant, and where it goes in the stack."""

    canvas: Any  # krita_io.DocumentCanvas (or a test's stand-in)
    above_id: str | None
    below_id: str | None
    change_map: bytes | None  # over the job's crop: result pixels where it is 0 are transparent
    crop: Region
    layer_id: str | None = None
    shown_key: int | None = None


@dataclass
class HistoryEntry:
    key: int
    job_id: int
    index: int
    seed: int
    name: str
    region: Region  # on the canvas
    png: bytes
    job_layer: JobLayer
    thumbnail: Any = None  # a QImage, for the docker's list
    extra: dict = field(default_factory=dict)

    @property
    def canvas(self) -> Any:
        return self.job_layer.canvas

    @property
    def layer_id(self) -> str | None:
        return self.job_layer.layer_id


class History:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self.entries: list[HistoryEntry] = []
        self._next_key = 1

    def add(self, **fields) -> HistoryEntry:
        entry = HistoryEntry(key=self._next_key, **fields)
        self._next_key += 1
        self.entries.append(entry)
        del self.entries[: max(len(self.entries) - self.max_entries, 0)]
        return entry

    def get(self, key: int) -> HistoryEntry | None:
        return next((e for e in self.entries if e.key == key), None)

    def siblings(self, entry: HistoryEntry) -> list[HistoryEntry]:
        """The other variants of the same job still in the list."""
        return [e for e in self.entries if e.job_layer is entry.job_layer and e is not entry]

    def remove(self, entry: HistoryEntry) -> None:
        self.entries = [e for e in self.entries if e is not entry]

    def drop_canvas(self, canvas: Any) -> bool:
        """Forget every result of a document that was closed; True when any was listed."""
        kept = [e for e in self.entries if e.canvas is not canvas]
        dropped = len(kept) != len(self.entries)
        self.entries = kept
        return dropped
