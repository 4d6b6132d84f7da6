"""Results the painter has not decided about yet: show one, apply it, or discard it.

Every result arrives as a new layer the plugin owns (named after prompt and seed). Until the
painter applies it, the plugin may hide, re-show or remove that layer; once applied, the layer is
the painter's and the plugin forgets it (it never touches it again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.protocol import Region

MAX_ENTRIES = 32  # results keep their PNG in memory; old ones drop off the list (their layers stay)


@dataclass
class HistoryEntry:
    key: int
    job_id: int
    index: int
    seed: int
    name: str
    region: Region
    png: bytes
    canvas: Any  # krita_io.DocumentCanvas (or a test fake)
    above_id: str | None
    layer_id: str | None = None


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
        return [e for e in self.entries if e.job_id == entry.job_id and e.canvas is entry.canvas and e is not entry]

    def remove(self, entry: HistoryEntry) -> None:
        self.entries = [e for e in self.entries if e is not entry]
