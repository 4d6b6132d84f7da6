"""What a server says it can do: its models, each model's schedulers and options, its limits.

Carried by ``welcome`` (:class:`Capabilities`), ``models`` and ``model_loaded``
(:class:`ModelInfo`); submits are checked against them on both sides (``submit``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .constants import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_PIXELS,
    E_BAD_MESSAGE,
    E_BAD_OPTION,
    MAX_INDEX,
    MAX_OPTION_NAME,
    MAX_OPTIONS,
    MAX_SIDE,
    MAX_STEPS,
    MAX_VARIANTS,
    FEATURES,
    MODES,
    OPTION_TYPES,
    ProtocolError,
)
from .fields import finite_number, is_text, json_type, not_text, read_float, read_int, read_str, read_str_list


@dataclass(frozen=True)
class OptionSpec:
    """One option a model takes, as the server advertises it.

    ``type`` is ``bool``, ``int`` or ``float``; numbers lie in [``min``, ``max``] (``min``
    excluded when ``min_exclusive``). ``default`` None means the server derives the value (e.g.
    stage II steps = the job's steps) unless the client sends one. ``label``/``help`` are for the
    painter."""

    name: str
    type: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    label: str = ""
    help: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "default": self.default}
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        if self.min_exclusive:
            out["min_exclusive"] = True
        out["label"] = self.label or self.name
        if self.help:
            out["help"] = self.help
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "option") -> OptionSpec:
        if not isinstance(data, dict):
            raise ProtocolError(E_BAD_MESSAGE, f"{where}: an option spec must be an object.")
        name = read_str(data, "name", max_len=MAX_OPTION_NAME, required=True, where=where)
        kind = read_str(data, "type", max_len=16, required=True, where=where)
        if kind not in OPTION_TYPES:
            raise ProtocolError(E_BAD_MESSAGE, f"{where}: option {name!r} has unknown type "
                                               f"{kind!r}; expected one of "
                                               f"{', '.join(OPTION_TYPES)}.")
        spec = cls(name=name, type=kind,
                   min=read_float(data, "min", lo=-1e12, hi=1e12, where=where),
                   max=read_float(data, "max", lo=-1e12, hi=1e12, where=where),
                   min_exclusive=data.get("min_exclusive") is True,
                   label=read_str(data, "label", max_len=200, default=name, where=where),
                   help=read_str(data, "help", max_len=2000, default="", where=where))
        default = data.get("default")
        if default is not None:
            # The default must itself be a legal value of the option.
            default = check_options({name: default}, [spec], where=where)[name]
        return cls(**{**spec.__dict__, "default": default})

    def check(self, value: Any, where: str) -> Any:
        """``value`` as this option's type, or a ProtocolError naming the option."""
        what = f"{where}: option '{self.name}'"
        if self.type == "bool":
            if not isinstance(value, bool):
                raise ProtocolError(E_BAD_OPTION, f"{what} must be true or false, got "
                                                  f"{json_type(value)}.")
            return value
        if isinstance(value, bool) or not isinstance(value, int if self.type == "int"
                                                    else (int, float)):
            kind = "an integer" if self.type == "int" else "a number"
            raise ProtocolError(E_BAD_OPTION, f"{what} must be {kind}, got {json_type(value)}.")
        number = int(value) if self.type == "int" else finite_number(value)
        if number is None:
            raise ProtocolError(E_BAD_OPTION, f"{what} must be a finite number.")
        low_ok = self.min is None or (number > self.min if self.min_exclusive
                                      else number >= self.min)
        if not low_ok or (self.max is not None and number > self.max):
            raise ProtocolError(E_BAD_OPTION, f"{what} = {number} is out of range "
                                              f"{self.range_text()}.")
        return number

    def range_text(self) -> str:
        low = "-inf" if self.min is None else _num(self.min)
        high = "inf" if self.max is None else _num(self.max)
        return f"{'(' if self.min_exclusive else '['}{low}, {high}]"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def check_options(options: dict[str, Any], specs: list[OptionSpec] | None,
                  model: str = "", where: str = "submit.options") -> dict[str, Any]:
    """Validate a submit's ``options`` against a model's advertised specs; returns the values
    with their types fixed (null entries dropped: the default applies). ``specs`` None (the
    model's options are not known yet) checks only the shape: names and plain JSON values."""
    if len(options) > MAX_OPTIONS:
        raise ProtocolError(E_BAD_OPTION, f"{where}: {len(options)} options; at most "
                                          f"{MAX_OPTIONS}.")
    by_name = {s.name: s for s in specs} if specs is not None else None
    out: dict[str, Any] = {}
    for name, value in options.items():
        if not is_text(name):
            raise not_text(where, "an option name")
        if len(name) > MAX_OPTION_NAME:
            raise ProtocolError(E_BAD_OPTION, f"{where}: option name of {len(name)} characters; "
                                              f"the limit is {MAX_OPTION_NAME}.")
        if value is None:
            continue
        if by_name is None:
            if isinstance(value, bool) or (isinstance(value, (int, float))
                                           and finite_number(value) is not None):
                out[name] = value
                continue
            raise ProtocolError(E_BAD_OPTION, f"{where}: option '{name}' must be true, false or "
                                              f"a number, got {json_type(value)}.")
        spec = by_name.get(name)
        if spec is None:
            whose = f"model {model!r}" if model else "this model"
            takes = (f"it takes: {', '.join(by_name)}" if by_name else "it takes no options")
            raise ProtocolError(E_BAD_OPTION, f"{where}: unknown option '{name}' for {whose}; "
                                              f"{takes}.")
        out[name] = spec.check(value, where)
    return out


@dataclass
class ModelInfo:
    """What a server says about one of its models: family, its schedulers and its options.

    ``loaded`` False: guessed from the model's id before it was ever loaded (family and
    schedulers; options are known once it is loaded)."""

    family: str
    schedulers: list[str]
    options: list[OptionSpec] = field(default_factory=list)
    loaded: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "schedulers": list(self.schedulers),
                "options": [o.to_dict() for o in self.options], "loaded": self.loaded}

    @classmethod
    def from_dict(cls, data: Any, where: str = "model_info") -> ModelInfo:
        if not isinstance(data, dict):
            raise ProtocolError(E_BAD_MESSAGE, f"{where} must be an object.")
        schedulers = data.get("schedulers") or []
        if not isinstance(schedulers, list) or not all(isinstance(s, str) for s in schedulers):
            raise ProtocolError(E_BAD_MESSAGE, f"{where}: 'schedulers' must be a list of strings.")
        options = data.get("options") or []
        if not isinstance(options, list) or len(options) > MAX_OPTIONS:
            raise ProtocolError(E_BAD_MESSAGE, f"{where}: 'options' must be a list of at most "
                                               f"{MAX_OPTIONS} specs.")
        return cls(family=read_str(data, "family", max_len=100, default="", where=where),
                   schedulers=list(schedulers),
                   options=[OptionSpec.from_dict(o, f"{where}.options") for o in options],
                   loaded=data.get("loaded", True) is not False)


def read_model_info_map(data: Any, where: str) -> dict[str, ModelInfo]:
    """A ``model_info`` object (model id -> :class:`ModelInfo`); absent means empty."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: 'model_info' must be an object.")
    return {str(k): ModelInfo.from_dict(v, f"{where}.model_info[{k!r}]") for k, v in data.items()}


@dataclass
class Capabilities:
    """What the server announces in ``welcome``."""

    models: list[str]
    current_model: str
    schedulers: list[str]
    families: list[str]
    native_resolution: int = 512
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_steps: int = MAX_STEPS
    max_variants: int = MAX_VARIANTS
    token_required: bool = False
    modes: list[str] = field(default_factory=lambda: list(MODES))
    device: str = "cpu"
    # Per model id: family, schedulers and options (servers before options sent none).
    model_info: dict[str, ModelInfo] = field(default_factory=dict)
    # Capability flags (``FEATURE_*``); a welcome without the field (an older server) has none.
    features: list[str] = field(default_factory=lambda: list(FEATURES))

    def supports(self, feature: str) -> bool:
        return feature in self.features

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": list(self.models), "current_model": self.current_model,
            "schedulers": list(self.schedulers), "families": list(self.families),
            "native_resolution": self.native_resolution, "max_pixels": self.max_pixels,
            "max_message_bytes": self.max_message_bytes, "max_steps": self.max_steps,
            "max_variants": self.max_variants, "token_required": self.token_required,
            "modes": list(self.modes), "device": self.device,
            "model_info": {k: v.to_dict() for k, v in self.model_info.items()},
            "features": list(self.features),
        }

    def info_for(self, model: str | None = None) -> ModelInfo | None:
        """What the server said about ``model`` (None: the current one), if anything."""
        return self.model_info.get(self.current_model if model is None else model)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Capabilities:
        where = "welcome.capabilities"
        return cls(
            models=read_str_list(data, "models", where),
            current_model=read_str(data, "current_model", max_len=1000, default="", where=where),
            schedulers=read_str_list(data, "schedulers", where),
            families=read_str_list(data, "families", where),
            native_resolution=read_int(data, "native_resolution", lo=8, hi=MAX_SIDE,
                                       default=512, where=where),
            max_pixels=read_int(data, "max_pixels", lo=1, hi=MAX_SIDE * MAX_SIDE,
                                default=DEFAULT_MAX_PIXELS, where=where),
            max_message_bytes=read_int(data, "max_message_bytes", lo=1, hi=2**40,
                                       default=DEFAULT_MAX_MESSAGE_BYTES, where=where),
            max_steps=read_int(data, "max_steps", lo=1, hi=10_000, default=MAX_STEPS, where=where),
            max_variants=read_int(data, "max_variants", lo=1, hi=MAX_INDEX,
                                  default=MAX_VARIANTS, where=where),
            token_required=bool(data.get("token_required", False)),
            modes=read_str_list(data, "modes", where) or list(MODES),
            device=read_str(data, "device", max_len=100, default="cpu", where=where),
            model_info=read_model_info_map(data.get("model_info"), where),
            features=read_str_list(data, "features", where),
        )
