"""The docker's settings: one dataclass, persisted as strings in a key/value store.

In Krita the store is Krita's own configuration (kritarc, via krita_host); in tests a dict.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from typing import Protocol

from shared import protocol

SETTINGS_GROUP = "differential_diffusion"

MODES = protocol.MODES  # the server's modes; soft inpaint is sent as a change map
MODE_LABELS = {
    "change_map": "Change map layer",
    "soft_inpaint": "Soft inpaint selection",
    "fan": "Strength fan",
    "uniform": "Uniform strength",
}
SOURCES = ("projection", "active_layer")
REGIONS = ("canvas", "selection")
DEFAULT_MAP_LAYER = "Change Map"
# The docker's own ranges where the protocol has none (Krita feathers and grows the selection).
MAX_SOFTNESS_PX = 512
MAX_GROW_PX = 256
MAX_PREVIEW_EVERY = 100
MAX_LIVE_DEBOUNCE_MS = 5000
MIN_MAP_GAMMA, MAX_MAP_GAMMA = 0.2, 5.0


def limits_for(capabilities=None) -> dict:
    """The largest values a job may ask for: the protocol's (shared/), lowered by what the server
    announced in its welcome when connected. The docker's boxes never offer more."""
    steps, variants = protocol.MAX_STEPS, protocol.MAX_VARIANTS
    if capabilities is not None:
        steps = max(1, min(steps, int(capabilities.max_steps)))
        variants = max(1, min(variants, int(capabilities.max_variants)))
    return {"steps": steps, "variants": variants, "guidance": protocol.MAX_GUIDANCE,
            "seed": min(protocol.MAX_SEED, 2**31 - 1),  # a Qt spin box holds a signed 32-bit int
            "fan_columns": protocol.MAX_FAN_COUNT, "softness_px": MAX_SOFTNESS_PX, "grow_px": MAX_GROW_PX}


class SettingsStore(Protocol):
    def read(self, key: str, default: str) -> str: ...

    def write(self, key: str, value: str) -> None: ...


class DictStore:
    """An in-memory store (tests, and a fallback when no persistent one exists)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def read(self, key: str, default: str) -> str:
        return self.values.get(key, default)

    def write(self, key: str, value: str) -> None:
        self.values[key] = value


@dataclass
class Settings:
    server_url: str = "ws://127.0.0.1:7860"
    token: str = ""
    prompt: str = ""
    negative_prompt: str = ""
    model: str = ""
    scheduler: str = ""
    steps: int = 30
    guidance: float = 7.0
    seed: int = 0
    random_seed: bool = True
    variants: int = 1
    mode: str = "change_map"
    map_layer: str = DEFAULT_MAP_LAYER
    softness_px: int = 32
    grow_px: int = 0
    fan_columns: int = 4
    fan_low: float = 0.2
    fan_high: float = 1.0
    strength: float = 0.6
    source: str = "projection"
    region: str = "canvas"
    preview_every: int = 2
    # The model's own options the painter chose (SDXL refiner split, IF stages...): a JSON object
    # by option name, shared by the models that take the option; unset ones keep the default.
    model_options: str = ""
    # Live mode (live.py): the pause after a stroke before its job goes, the steps and scheduler.
    live_debounce_ms: int = 250
    live_steps: int = 6
    live_scheduler: str = ""
    # The job's map curve: a gamma on the change map sent (above 1: more change, below: gentler).
    map_gamma: float = 1.0

    def validated(self) -> Settings:
        """A copy with every value clamped into its legal range (stored values can be stale or edited)."""
        s = dataclasses.replace(self)
        limits = limits_for()
        s.steps = min(max(int(s.steps), 1), limits["steps"])
        s.guidance = min(max(float(s.guidance), 0.0), limits["guidance"])
        s.seed = min(max(int(s.seed), 0), protocol.MAX_SEED)
        s.variants = min(max(int(s.variants), 1), limits["variants"])
        s.mode = s.mode if s.mode in MODES else "change_map"
        s.softness_px = min(max(int(s.softness_px), 0), limits["softness_px"])
        s.grow_px = min(max(int(s.grow_px), -limits["grow_px"]), limits["grow_px"])
        s.fan_columns = min(max(int(s.fan_columns), 2), limits["fan_columns"])
        s.fan_low = min(max(float(s.fan_low), 0.0), 1.0)
        s.fan_high = min(max(float(s.fan_high), 0.0), 1.0)
        s.strength = min(max(float(s.strength), 0.0), 1.0)
        s.source = s.source if s.source in SOURCES else "projection"
        s.region = s.region if s.region in REGIONS else "canvas"
        s.preview_every = min(max(int(s.preview_every), 0), MAX_PREVIEW_EVERY)
        s.live_debounce_ms = min(max(int(s.live_debounce_ms), 0), MAX_LIVE_DEBOUNCE_MS)
        s.live_steps = min(max(int(s.live_steps), 1), limits["steps"])
        gamma = float(s.map_gamma)
        s.map_gamma = min(max(gamma, MIN_MAP_GAMMA), MAX_MAP_GAMMA) if math.isfinite(gamma) else 1.0
        s.model_options = s.model_options if isinstance(parse_model_options(s.model_options), dict) else ""
        return s


def parse_model_options(text: str) -> dict | None:
    """The stored model options; {} for nothing stored, None for text that is no JSON object."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _parse(kind: type, text: str, default: object) -> object:
    try:
        if kind is bool:
            return text.strip().lower() in ("1", "true", "yes", "on")
        return kind(text)
    except (TypeError, ValueError):
        return default


def load_settings(store: SettingsStore) -> Settings:
    defaults = Settings()
    values = {}
    for field in fields(Settings):
        default = getattr(defaults, field.name)
        text = store.read(field.name, "")
        values[field.name] = default if text == "" else _parse(type(default), text, default)
    return Settings(**values).validated()


def save_settings(settings: Settings, store: SettingsStore) -> None:
    for field in fields(Settings):
        # The token is stored like the rest (Krita has no keyring); it guards a local server only.
        value = getattr(settings, field.name)
        store.write(field.name, str(value).lower() if isinstance(value, bool) else str(value))
