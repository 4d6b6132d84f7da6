"""Wire protocol between the Krita plugin and the diffusion server, sans-I/O.

Pure standard library (it runs inside Krita's embedded Python, which has no numpy or PIL) and no
sockets: functions and dataclasses that build, serialise, parse and validate messages. The socket
code lives at the edges (``server.app``, ``krita_plugin.client``). See ``shared/PROTOCOL.md``.

Two kinds of websocket frames:

- **text** frames carry one JSON object with a ``"type"`` field (control messages);
- **binary** frames carry one picture with a fixed 20-byte header (:data:`FRAME_HEADER`):
  magic ``b"DDIF"``, protocol version, frame kind, job reference, index, width, height, then the
  payload (PNG bytes, or ``width*height`` bytes of 8-bit gray for maps and masks). No base64.

Change maps use the painter's convention: 255/white = change fully, 0/black = keep. (The paper's
``mu`` is the opposite: ``mu_paper = 1 - map``.)
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1

# ---------------------------------------------------------------------------------------------
# Binary frames
# ---------------------------------------------------------------------------------------------

FRAME_MAGIC = b"DDIF"
# magic, version, kind, ref (client ref or server job id), index, width, height — big-endian.
FRAME_HEADER = struct.Struct(">4sBBIHII")

FRAME_IMAGE_PNG = 1  # client -> server: the source picture (PNG, RGB or RGBA)
FRAME_MAP_GRAY8 = 2  # client -> server: change map (change_map mode) or mask (soft_inpaint mode)
FRAME_PREVIEW_PNG = 3  # server -> client: a downscaled preview of a running job
FRAME_RESULT_PNG = 4  # server -> client: one finished image (one per variant)

FRAME_KIND_NAMES = {
    FRAME_IMAGE_PNG: "image",
    FRAME_MAP_GRAY8: "map",
    FRAME_PREVIEW_PNG: "preview",
    FRAME_RESULT_PNG: "result",
}
_PNG_KINDS = (FRAME_IMAGE_PNG, FRAME_PREVIEW_PNG, FRAME_RESULT_PNG)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

MAX_REF = 2**32 - 1
MAX_INDEX = 2**16 - 1
MAX_SIDE = 2**16  # no single side above 65536 px, whatever max_pixels says

# ---------------------------------------------------------------------------------------------
# Limits and defaults (the server announces its own in the handshake; these are the defaults)
# ---------------------------------------------------------------------------------------------

DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_TEXT_BYTES = 256 * 1024  # a control message is small; anything bigger is a mistake or abuse
MAX_PROMPT_CHARS = 4000
MAX_STEPS = 200
MAX_VARIANTS = 8
MAX_GUIDANCE = 50.0
MAX_SEED = 2**32 - 1
MAX_FAN_COUNT = 32
MAX_SOFTNESS_PX = 1024.0
MAX_GROW_PX = 1024

MODES = ("change_map", "soft_inpaint", "fan", "uniform")
# Modes whose submit is followed by a gray8 frame (the change map, or the inpaint mask).
MODES_WITH_MAP = ("change_map", "soft_inpaint")

# ---------------------------------------------------------------------------------------------
# Error codes (``error.code``); the message next to it is for the painter to read
# ---------------------------------------------------------------------------------------------

E_BAD_JSON = "bad_json"
E_BAD_MESSAGE = "bad_message"  # well-formed JSON, but a field is missing, of the wrong type, or out of range
E_UNKNOWN_TYPE = "unknown_type"
E_BAD_FRAME = "bad_frame"  # a binary frame that cannot be parsed or matches no pending submit
E_TOO_LARGE = "too_large"  # image over max_pixels, or a text frame over MAX_TEXT_BYTES
E_MAP_SIZE_MISMATCH = "map_size_mismatch"
E_UNKNOWN_MODEL = "unknown_model"
E_UNKNOWN_SCHEDULER = "unknown_scheduler"
E_BAD_VERSION = "bad_version"
E_UNAUTHORIZED = "unauthorized"
E_HANDSHAKE_REQUIRED = "handshake_required"
E_UNKNOWN_JOB = "unknown_job"
E_QUEUE_FULL = "queue_full"
E_OUT_OF_MEMORY = "out_of_memory"
E_JOB_FAILED = "job_failed"
E_MODEL_LOAD_FAILED = "model_load_failed"
E_SHUTTING_DOWN = "shutting_down"
E_BAD_OPTION = "bad_option"  # submit.options: an option the model does not take, or a bad value

# Websocket close codes the plugin may see, with what to tell the painter.
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_POLICY_VIOLATION = 1008
CLOSE_GOING_AWAY = 1001


class ProtocolError(ValueError):
    """A message or frame that breaks the protocol. ``code`` is one of the ``E_*`` codes."""

    def __init__(self, code: str, message: str, *, job_id: int | None = None,
                 ref: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.job_id = job_id
        self.ref = ref


# ---------------------------------------------------------------------------------------------
# Binary frames: build and parse
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One binary frame. ``ref`` is the client's submit ref (client -> server) or the server's
    job id (server -> client)."""

    kind: int
    ref: int
    index: int
    width: int
    height: int
    payload: bytes

    @property
    def kind_name(self) -> str:
        return FRAME_KIND_NAMES.get(self.kind, str(self.kind))


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, without decoding it (pure stdlib)."""
    if len(data) < 24 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ProtocolError(E_BAD_FRAME, "The picture is not a valid PNG file.")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def encode_frame(kind: int, ref: int, index: int, width: int, height: int,
                 payload: bytes) -> bytes:
    """Serialise one binary frame; checks the payload against the declared size."""
    if kind not in FRAME_KIND_NAMES:
        raise ValueError(f"unknown frame kind {kind}")
    if not (0 <= ref <= MAX_REF and 0 <= index <= MAX_INDEX):
        raise ValueError(f"frame ref {ref} or index {index} out of range")
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise ValueError(f"frame size {width}x{height} out of range")
    _check_payload(kind, width, height, payload)
    return FRAME_HEADER.pack(FRAME_MAGIC, PROTOCOL_VERSION, kind, ref, index, width,
                             height) + bytes(payload)


def decode_frame(data: bytes) -> Frame:
    """Parse one binary frame; raises :class:`ProtocolError` (``bad_frame``) with the reason."""
    if len(data) < FRAME_HEADER.size:
        raise ProtocolError(E_BAD_FRAME, f"Binary frame of {len(data)} bytes is shorter than "
                                         f"its {FRAME_HEADER.size}-byte header.")
    magic, version, kind, ref, index, width, height = FRAME_HEADER.unpack_from(data)
    if magic != FRAME_MAGIC:
        raise ProtocolError(E_BAD_FRAME, "Binary frame does not start with the DDIF magic bytes.")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(E_BAD_VERSION, f"Binary frame is protocol version {version}; this "
                                           f"side speaks version {PROTOCOL_VERSION}.")
    if kind not in FRAME_KIND_NAMES:
        raise ProtocolError(E_BAD_FRAME, f"Unknown binary frame kind {kind}.", ref=ref)
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise ProtocolError(E_BAD_FRAME, f"Binary frame size {width}x{height} is out of range.",
                            ref=ref)
    payload = bytes(data[FRAME_HEADER.size:])
    _check_payload(kind, width, height, payload, ref=ref)
    return Frame(kind, ref, index, width, height, payload)


def _check_payload(kind: int, width: int, height: int, payload: bytes,
                   ref: int | None = None) -> None:
    if kind == FRAME_MAP_GRAY8:
        if len(payload) != width * height:
            raise ProtocolError(E_BAD_FRAME, f"Map frame declares {width}x{height} "
                                             f"({width * height} bytes) but carries "
                                             f"{len(payload)} bytes.", ref=ref)
    elif kind in _PNG_KINDS:
        actual = png_size(payload)
        if actual != (width, height):
            raise ProtocolError(E_BAD_FRAME, f"PNG is {actual[0]}x{actual[1]} but its frame "
                                             f"declares {width}x{height}.", ref=ref)


# ---------------------------------------------------------------------------------------------
# Text frames: JSON with strict parsing (no NaN/Infinity, objects only)
# ---------------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ProtocolError(E_BAD_JSON, f"JSON constant {name} is not allowed (numbers must be finite).")


def dumps(message: dict[str, Any]) -> str:
    """Serialise a control message (compact, finite numbers only)."""
    if "type" not in message:
        raise ValueError("a control message needs a 'type'")
    return json.dumps(message, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def loads(text: str | bytes) -> dict[str, Any]:
    """Parse a control message; raises :class:`ProtocolError` for anything but a JSON object
    with a string ``type``."""
    if len(text) > MAX_TEXT_BYTES:
        raise ProtocolError(E_TOO_LARGE, f"Control message of {len(text)} bytes is over the "
                                         f"{MAX_TEXT_BYTES}-byte limit for text frames.")
    try:
        message = json.loads(text, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(E_BAD_JSON, f"Control message is not valid JSON: {exc}.") from None
    except RecursionError:
        raise ProtocolError(E_BAD_JSON, "Control message is nested too deeply.") from None
    if not isinstance(message, dict):
        raise ProtocolError(E_BAD_MESSAGE, "A control message must be a JSON object.")
    if not isinstance(message.get("type"), str):
        raise ProtocolError(E_BAD_MESSAGE, "A control message needs a string field 'type'.")
    return message


# Field readers: each raises a ProtocolError naming the field and what was expected.


def _missing(obj: dict[str, Any], key: str, required: bool, where: str) -> bool:
    """True when the field is absent (or null) and optional; raises when it is required."""
    if obj.get(key) is not None:
        return False
    if required:
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: missing field '{key}'.")
    return True


def read_int(obj: dict[str, Any], key: str, *, lo: int, hi: int, default: int | None = None,
             required: bool = False, where: str = "message") -> Any:
    if _missing(obj, key, required, where):
        return default
    value = obj[key]
    # bool is an int in Python; a painter's 'true' is not a step count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: '{key}' must be an integer, "
                                           f"got {type(value).__name__}.")
    if not lo <= value <= hi:
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: '{key}' = {value} is out of range "
                                           f"[{lo}, {hi}].")
    return value


def read_float(obj: dict[str, Any], key: str, *, lo: float, hi: float,
               default: float | None = None, required: bool = False,
               where: str = "message") -> Any:
    if _missing(obj, key, required, where):
        return default
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: '{key}' must be a number, "
                                           f"got {type(value).__name__}.")
    value = float(value)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: '{key}' = {value} is out of range "
                                           f"[{lo}, {hi}].")
    return value


def read_str(obj: dict[str, Any], key: str, *, max_len: int, default: str | None = None,
             required: bool = False, where: str = "message") -> Any:
    if _missing(obj, key, required, where):
        return default
    value = obj[key]
    if not isinstance(value, str):
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: '{key}' must be a string, "
                                           f"got {type(value).__name__}.")
    if len(value) > max_len:
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: '{key}' is {len(value)} characters; "
                                           f"the limit is {max_len}.")
    return value


def read_obj(obj: dict[str, Any], key: str, *, required: bool = False,
             where: str = "message") -> Any:
    if _missing(obj, key, required, where):
        return None
    value = obj[key]
    if not isinstance(value, dict):
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: '{key}' must be an object, "
                                           f"got {type(value).__name__}.")
    return value


# ---------------------------------------------------------------------------------------------
# Model options: what a model takes beyond the common fields (SDXL refiner split, IF stages...)
# ---------------------------------------------------------------------------------------------

OPTION_TYPES = ("bool", "int", "float")
MAX_OPTIONS = 32  # options in one submit (a model advertises a handful)
MAX_OPTION_NAME = 64


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
                                                  f"{_json_type(value)}.")
            return value
        if isinstance(value, bool) or not isinstance(value, int if self.type == "int"
                                                    else (int, float)):
            kind = "an integer" if self.type == "int" else "a number"
            raise ProtocolError(E_BAD_OPTION, f"{what} must be {kind}, got {_json_type(value)}.")
        number = int(value) if self.type == "int" else float(value)
        if not math.isfinite(number):
            raise ProtocolError(E_BAD_OPTION, f"{what} must be finite.")
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


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


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
        if len(name) > MAX_OPTION_NAME:
            raise ProtocolError(E_BAD_OPTION, f"{where}: option name of {len(name)} characters; "
                                              f"the limit is {MAX_OPTION_NAME}.")
        if value is None:
            continue
        if by_name is None:
            if isinstance(value, bool) or (isinstance(value, (int, float))
                                           and math.isfinite(value)):
                out[name] = value
                continue
            raise ProtocolError(E_BAD_OPTION, f"{where}: option '{name}' must be true, false or "
                                              f"a number, got {_json_type(value)}.")
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


def _model_info_map(data: Any, where: str) -> dict[str, ModelInfo]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: 'model_info' must be an object.")
    return {str(k): ModelInfo.from_dict(v, f"{where}.model_info[{k!r}]") for k, v in data.items()}


# ---------------------------------------------------------------------------------------------
# Handshake
# ---------------------------------------------------------------------------------------------


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": list(self.models), "current_model": self.current_model,
            "schedulers": list(self.schedulers), "families": list(self.families),
            "native_resolution": self.native_resolution, "max_pixels": self.max_pixels,
            "max_message_bytes": self.max_message_bytes, "max_steps": self.max_steps,
            "max_variants": self.max_variants, "token_required": self.token_required,
            "modes": list(self.modes), "device": self.device,
            "model_info": {k: v.to_dict() for k, v in self.model_info.items()},
        }

    def info_for(self, model: str | None = None) -> ModelInfo | None:
        """What the server said about ``model`` (None: the current one), if anything."""
        return self.model_info.get(self.current_model if model is None else model)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Capabilities:
        where = "welcome.capabilities"

        def str_list(key: str) -> list[str]:
            value = data.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ProtocolError(E_BAD_MESSAGE, f"{where}: '{key}' must be a list of strings.")
            return value

        return cls(
            models=str_list("models"),
            current_model=read_str(data, "current_model", max_len=1000, default="", where=where),
            schedulers=str_list("schedulers"),
            families=str_list("families"),
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
            modes=str_list("modes") or list(MODES),
            device=read_str(data, "device", max_len=100, default="cpu", where=where),
            model_info=_model_info_map(data.get("model_info"), where),
        )


def hello(token: str | None = None, client: str = "") -> dict[str, Any]:
    """The first message a client sends."""
    message: dict[str, Any] = {"type": "hello", "protocol": PROTOCOL_VERSION}
    if token:
        message["token"] = token
    if client:
        message["client"] = client
    return message


def check_hello(message: dict[str, Any], token: str | None) -> None:
    """Server side: accept a ``hello`` or raise the error to send back (then close)."""
    if message.get("type") != "hello":
        raise ProtocolError(E_HANDSHAKE_REQUIRED, "The first message must be 'hello' with the "
                                                  "protocol version (and token, if required).")
    version = message.get("protocol")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ProtocolError(E_BAD_VERSION, f"This server speaks protocol version "
                                           f"{PROTOCOL_VERSION}; the client speaks version "
                                           f"{version!r}. Update the plugin or the server so "
                                           f"they match.")
    if token:
        given = message.get("token")
        if not isinstance(given, str) or not _constant_time_equal(given, token):
            raise ProtocolError(E_UNAUTHORIZED, "Wrong or missing access token: enter the token "
                                                "the server was started with (--token).")


def _constant_time_equal(a: str, b: str) -> bool:
    # hmac.compare_digest is stdlib, but keep it explicit: the token is compared in full.
    import hmac

    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def welcome(capabilities: Capabilities, server: str = "") -> dict[str, Any]:
    return {"type": "welcome", "protocol": PROTOCOL_VERSION, "server": server,
            "capabilities": capabilities.to_dict()}


# ---------------------------------------------------------------------------------------------
# Submit
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """A rectangle in canvas pixels; changes are confined to it."""

    x: int
    y: int
    width: int
    height: int

    def to_dict(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}


@dataclass(frozen=True)
class FanSpec:
    """Strength fan: ``count`` vertical columns with strengths evenly spaced from low to high
    (geometry in ``shared.fan``)."""

    count: int
    low: float
    high: float


@dataclass(frozen=True)
class SoftInpaint:
    """Soft inpaint: the gray8 frame is a mask (white = repaint); it is grown by ``grow_px`` and
    blurred by ``softness_px`` into a change map on the server."""

    softness_px: float = 16.0
    grow_px: int = 0


@dataclass
class SubmitRequest:
    """One job as the client asks for it.

    ``mode`` decides which fields matter and which binary frames follow the submit:
    ``change_map`` (image + gray8 change map), ``soft_inpaint`` (image + gray8 mask,
    ``soft_inpaint``), ``fan`` (image, ``fan``), ``uniform`` (image, ``strength``).
    ``seed`` None lets the server pick one; variant ``i`` uses ``seed + i``.
    ``preview_every`` None takes the server's default; 0 turns previews off.
    ``options``: the model's own options by name (see :class:`OptionSpec`), e.g.
    ``{"refiner_split": 0.7}``; None or empty: every option at its default.
    """

    ref: int
    width: int
    height: int
    mode: str = "change_map"
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 30
    guidance: float = 7.0
    seed: int | None = None
    scheduler: str | None = None
    model: str | None = None
    variants: int = 1
    preview_every: int | None = None
    region: Region | None = None
    strength: float | None = None
    soft_inpaint: SoftInpaint | None = None
    fan: FanSpec | None = None
    options: dict[str, Any] | None = None

    @property
    def needs_map(self) -> bool:
        return self.mode in MODES_WITH_MAP

    def to_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "submit", "ref": self.ref, "width": self.width, "height": self.height,
            "mode": self.mode, "prompt": self.prompt, "negative_prompt": self.negative_prompt,
            "steps": self.steps, "guidance": self.guidance, "variants": self.variants,
        }
        optional = {"seed": self.seed, "scheduler": self.scheduler, "model": self.model,
                    "preview_every": self.preview_every, "strength": self.strength}
        message.update({k: v for k, v in optional.items() if v is not None})
        if self.region is not None:
            message["region"] = self.region.to_dict()
        if self.soft_inpaint is not None:
            message["soft_inpaint"] = {"softness_px": self.soft_inpaint.softness_px,
                                       "grow_px": self.soft_inpaint.grow_px}
        if self.fan is not None:
            message["fan"] = {"count": self.fan.count, "low": self.fan.low, "high": self.fan.high}
        if self.options:
            message["options"] = dict(self.options)
        return message


def parse_submit(message: dict[str, Any], capabilities: Capabilities | None = None) -> SubmitRequest:
    """Validate a ``submit`` message against the protocol (and the server's limits, if given).

    Raises :class:`ProtocolError` with a message naming the field at fault."""
    caps = capabilities
    where = "submit"
    ref = read_int(message, "ref", lo=0, hi=MAX_REF, required=True, where=where)
    try:
        return _parse_submit(message, caps, ref)
    except ProtocolError as exc:
        exc.ref = ref
        raise


def _parse_submit(message: dict[str, Any], caps: Capabilities | None, ref: int) -> SubmitRequest:
    where = "submit"
    width = read_int(message, "width", lo=8, hi=MAX_SIDE, required=True, where=where)
    height = read_int(message, "height", lo=8, hi=MAX_SIDE, required=True, where=where)
    max_pixels = caps.max_pixels if caps else DEFAULT_MAX_PIXELS
    if width * height > max_pixels:
        raise ProtocolError(E_TOO_LARGE, f"The image is {width}x{height} = {width * height} "
                                         f"pixels; this server accepts at most {max_pixels}. "
                                         f"Use a smaller canvas or a region.")
    mode = read_str(message, "mode", max_len=32, default="change_map", where=where)
    if mode not in MODES:
        raise ProtocolError(E_BAD_MESSAGE, f"submit: unknown mode {mode!r}; expected one of "
                                           f"{', '.join(MODES)}.")
    max_steps = caps.max_steps if caps else MAX_STEPS
    max_variants = caps.max_variants if caps else MAX_VARIANTS
    steps = read_int(message, "steps", lo=1, hi=max_steps, default=30, where=where)
    request = SubmitRequest(
        ref=ref, width=width, height=height, mode=mode,
        prompt=read_str(message, "prompt", max_len=MAX_PROMPT_CHARS, default="", where=where),
        negative_prompt=read_str(message, "negative_prompt", max_len=MAX_PROMPT_CHARS,
                                 default="", where=where),
        steps=steps,
        guidance=read_float(message, "guidance", lo=0.0, hi=MAX_GUIDANCE, default=7.0,
                            where=where),
        seed=read_int(message, "seed", lo=0, hi=MAX_SEED, default=None, where=where),
        scheduler=read_str(message, "scheduler", max_len=100, default=None, where=where),
        model=read_str(message, "model", max_len=1000, default=None, where=where),
        variants=read_int(message, "variants", lo=1, hi=max_variants, default=1, where=where),
        preview_every=read_int(message, "preview_every", lo=0, hi=max_steps, default=None,
                               where=where),
    )
    options = read_obj(message, "options", where=where)
    info = None
    if caps is not None:
        if request.model is not None and request.model not in caps.models:
            raise ProtocolError(E_UNKNOWN_MODEL, f"Unknown model {request.model!r}; this server "
                                                 f"offers: {', '.join(caps.models)}.")
        info = caps.info_for(request.model)
        # The target model's own schedulers; the current model's list from a server that sends
        # no model_info; a model the server knows nothing about yet is checked once loaded.
        schedulers = info.schedulers if info is not None else (
            caps.schedulers if request.model in (None, caps.current_model) else None)
        if request.scheduler is not None and schedulers is not None \
                and request.scheduler not in schedulers:
            model = request.model or caps.current_model
            raise ProtocolError(E_UNKNOWN_SCHEDULER, f"Unknown scheduler {request.scheduler!r} "
                                                     f"for model {model!r}; it takes: "
                                                     f"{', '.join(schedulers)}.")
    if options is not None:
        known = info.options if info is not None and info.loaded else None
        request.options = check_options(options, known, request.model or (
            caps.current_model if caps else "")) or None

    region = read_obj(message, "region", where=where)
    if region is not None:
        rw = "submit.region"
        request.region = Region(
            x=read_int(region, "x", lo=0, hi=width - 1, required=True, where=rw),
            y=read_int(region, "y", lo=0, hi=height - 1, required=True, where=rw),
            width=read_int(region, "width", lo=1, hi=width, required=True, where=rw),
            height=read_int(region, "height", lo=1, hi=height, required=True, where=rw),
        )
        r = request.region
        if r.x + r.width > width or r.y + r.height > height:
            raise ProtocolError(E_BAD_MESSAGE, f"submit.region {r.width}x{r.height} at "
                                               f"({r.x}, {r.y}) does not fit in the "
                                               f"{width}x{height} image.")

    if mode == "uniform":
        request.strength = read_float(message, "strength", lo=0.0, hi=1.0, required=True,
                                      where=where)
    elif mode == "soft_inpaint":
        spec = read_obj(message, "soft_inpaint", where=where) or {}
        sw = "submit.soft_inpaint"
        request.soft_inpaint = SoftInpaint(
            softness_px=read_float(spec, "softness_px", lo=0.0, hi=MAX_SOFTNESS_PX,
                                   default=16.0, where=sw),
            grow_px=read_int(spec, "grow_px", lo=-MAX_GROW_PX, hi=MAX_GROW_PX, default=0,
                             where=sw),
        )
    elif mode == "fan":
        spec = read_obj(message, "fan", required=True, where=where)
        fw = "submit.fan"
        count = read_int(spec, "count", lo=1, hi=MAX_FAN_COUNT, required=True, where=fw)
        low = read_float(spec, "low", lo=0.0, hi=1.0, required=True, where=fw)
        high = read_float(spec, "high", lo=0.0, hi=1.0, required=True, where=fw)
        if low > high:
            raise ProtocolError(E_BAD_MESSAGE, f"submit.fan: 'low' ({low}) is above 'high' "
                                               f"({high}).")
        fan_width = request.region.width if request.region else width
        if count > fan_width:
            raise ProtocolError(E_BAD_MESSAGE, f"submit.fan: {count} columns do not fit in "
                                               f"{fan_width} pixels.")
        request.fan = FanSpec(count=count, low=low, high=high)
    return request


def submit_frames(request: SubmitRequest, image_png: bytes,
                  map_gray8: bytes | None = None) -> list[str | bytes]:
    """Everything a client sends for one job, in order: the submit, the image, the map/mask."""
    size = png_size(image_png)
    if size != (request.width, request.height):
        raise ValueError(f"image is {size[0]}x{size[1]} but the request says "
                         f"{request.width}x{request.height}")
    if request.needs_map and map_gray8 is None:
        raise ValueError(f"mode {request.mode!r} needs a gray8 map")
    if not request.needs_map and map_gray8 is not None:
        raise ValueError(f"mode {request.mode!r} takes no map frame")
    frames: list[str | bytes] = [
        dumps(request.to_message()),
        encode_frame(FRAME_IMAGE_PNG, request.ref, 0, request.width, request.height, image_png),
    ]
    if map_gray8 is not None:
        frames.append(encode_frame(FRAME_MAP_GRAY8, request.ref, 0, request.width,
                                   request.height, map_gray8))
    return frames


@dataclass
class CompleteSubmit:
    """A validated submit with all its binary frames."""

    request: SubmitRequest
    image_png: bytes
    map_gray8: bytes | None


class SubmitCollector:
    """Server side, per connection: pairs each ``submit`` with the binary frames that follow it.

    ``add_submit`` validates the message; ``add_frame`` returns a :class:`CompleteSubmit` once a
    submit has every frame it needs, else None. Errors are :class:`ProtocolError` carrying the
    ref, so the server can answer that submit alone."""

    def __init__(self, capabilities: Capabilities | None = None, max_pending: int = 4) -> None:
        self.capabilities = capabilities
        self.max_pending = max_pending
        self._pending: dict[int, dict[str, Any]] = {}

    @property
    def pending_refs(self) -> list[int]:
        return list(self._pending)

    def add_submit(self, message: dict[str, Any]) -> SubmitRequest:
        request = parse_submit(message, self.capabilities)
        if request.ref in self._pending:
            raise ProtocolError(E_BAD_MESSAGE, f"submit ref {request.ref} is already waiting "
                                               f"for its frames; use a new ref per submit.",
                                ref=request.ref)
        if len(self._pending) >= self.max_pending:
            raise ProtocolError(E_QUEUE_FULL, f"{len(self._pending)} submits are still waiting "
                                              f"for their image frames; send those first.",
                                ref=request.ref)
        self._pending[request.ref] = {"request": request, "image": None, "map": None}
        return request

    def add_frame(self, frame: Frame) -> CompleteSubmit | None:
        entry = self._pending.get(frame.ref)
        if entry is None:
            raise ProtocolError(E_BAD_FRAME, f"Binary {frame.kind_name} frame for ref "
                                             f"{frame.ref}, which has no pending submit; send "
                                             f"the submit message first.", ref=frame.ref)
        request: SubmitRequest = entry["request"]
        try:
            if frame.kind == FRAME_IMAGE_PNG:
                slot = "image"
            elif frame.kind == FRAME_MAP_GRAY8 and request.needs_map:
                slot = "map"
            else:
                raise ProtocolError(E_BAD_FRAME, f"A {frame.kind_name} frame is not part of a "
                                                 f"{request.mode!r} submit.")
            if entry[slot] is not None:
                raise ProtocolError(E_BAD_FRAME, f"Second {frame.kind_name} frame for the same "
                                                 f"submit.")
            if (frame.width, frame.height) != (request.width, request.height):
                code = E_MAP_SIZE_MISMATCH if slot == "map" else E_BAD_FRAME
                what = "change map" if request.mode == "change_map" else (
                    "mask" if slot == "map" else "image")
                raise ProtocolError(code, f"The {what} is {frame.width}x{frame.height} but the "
                                          f"submit says {request.width}x{request.height}; they "
                                          f"must be the same size.")
        except ProtocolError as exc:
            # A broken submit is dropped whole, so a retry with the same ref starts clean.
            del self._pending[frame.ref]
            exc.ref = frame.ref
            raise
        entry[slot] = frame.payload
        if entry["image"] is None or (request.needs_map and entry["map"] is None):
            return None
        del self._pending[frame.ref]
        return CompleteSubmit(request, entry["image"], entry["map"])

    def drop(self, ref: int) -> bool:
        return self._pending.pop(ref, None) is not None


# ---------------------------------------------------------------------------------------------
# Other client -> server messages
# ---------------------------------------------------------------------------------------------


def cancel(job_id: int | None = None, ref: int | None = None) -> dict[str, Any]:
    """Cancel a job by server job id (or, before ``accepted`` arrived, by the submit's ref)."""
    if (job_id is None) == (ref is None):
        raise ValueError("cancel takes exactly one of job_id or ref")
    return {"type": "cancel", "job_id": job_id} if job_id is not None else {"type": "cancel",
                                                                             "ref": ref}


def list_models() -> dict[str, Any]:
    return {"type": "list_models"}


def load_model(model: str) -> dict[str, Any]:
    return {"type": "load_model", "model": model}


CLIENT_MESSAGE_TYPES = ("hello", "submit", "cancel", "list_models", "load_model")

# ---------------------------------------------------------------------------------------------
# Server -> client messages (builders)
# ---------------------------------------------------------------------------------------------


def error(code: str, message: str, *, job_id: int | None = None,
          ref: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if job_id is not None:
        out["job_id"] = job_id
    if ref is not None:
        out["ref"] = ref
    return out


def error_from(exc: ProtocolError) -> dict[str, Any]:
    return error(exc.code, exc.message, job_id=exc.job_id, ref=exc.ref)


def accepted(ref: int, job_id: int, position: int, seed: int) -> dict[str, Any]:
    """``position`` 0 = running now (or next), 1 = one job ahead, ..."""
    return {"type": "accepted", "ref": ref, "job_id": job_id, "position": position, "seed": seed}


def queue_position(job_id: int, position: int) -> dict[str, Any]:
    return {"type": "queue", "job_id": job_id, "position": position}


def started(job_id: int, width: int, height: int, region: Region) -> dict[str, Any]:
    """The job left the queue; ``width``x``height`` is the size the model runs at and ``region``
    the canvas rectangle it covers."""
    return {"type": "started", "job_id": job_id, "width": width, "height": height,
            "region": region.to_dict()}


def progress(job_id: int, step: int, total: int, elapsed_s: float,
             eta_s: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "progress", "job_id": job_id, "step": step, "total": total,
                           "elapsed_s": round(elapsed_s, 3)}
    out["eta_s"] = None if eta_s is None else round(eta_s, 3)
    return out


def preview(job_id: int, step: int, region: Region) -> dict[str, Any]:
    """Announces the next ``preview`` frame: it shows canvas rectangle ``region`` (scale it up)."""
    return {"type": "preview", "job_id": job_id, "step": step, "region": region.to_dict()}


def result(job_id: int, index: int, seed: int, region: Region,
           timings: dict[str, float]) -> dict[str, Any]:
    """Announces the next ``result`` frame: variant ``index``, made with ``seed``, whose pixels
    replace canvas rectangle ``region`` (everything outside it is the source, unchanged)."""
    return {"type": "result", "job_id": job_id, "index": index, "seed": seed,
            "region": region.to_dict(), "timings": {k: round(v, 3) for k, v in timings.items()}}


def done(job_id: int, images: int, steps_run: int, timings: dict[str, float]) -> dict[str, Any]:
    return {"type": "done", "job_id": job_id, "images": images, "steps_run": steps_run,
            "timings": {k: round(v, 3) for k, v in timings.items()}}


def cancelled(job_id: int, reason: str = "cancelled") -> dict[str, Any]:
    return {"type": "cancelled", "job_id": job_id, "reason": reason}


def models(models: list[str], current_model: str,
           model_info: dict[str, ModelInfo] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "models", "models": list(models),
                           "current_model": current_model}
    if model_info is not None:
        out["model_info"] = {k: v.to_dict() for k, v in model_info.items()}
    return out


def model_loaded(model: str, family: str, native_resolution: int,
                 info: ModelInfo | None = None) -> dict[str, Any]:
    """The model is loaded; ``info`` (its schedulers and options) replaces what the client knew."""
    out: dict[str, Any] = {"type": "model_loaded", "model": model, "family": family,
                           "native_resolution": native_resolution}
    if info is not None:
        out["schedulers"] = list(info.schedulers)
        out["options"] = [o.to_dict() for o in info.options]
    return out


# ---------------------------------------------------------------------------------------------
# Client-side session: feed frames in, get typed events out
# ---------------------------------------------------------------------------------------------


@dataclass
class Event:
    """Base class of everything :meth:`ClientSession.receive` returns."""


@dataclass
class Welcome(Event):
    capabilities: Capabilities
    server: str = ""


@dataclass
class Accepted(Event):
    ref: int
    job_id: int
    position: int
    seed: int


@dataclass
class QueuePosition(Event):
    job_id: int
    position: int


@dataclass
class Started(Event):
    job_id: int
    width: int
    height: int
    region: Region


@dataclass
class Progress(Event):
    job_id: int
    step: int
    total: int
    elapsed_s: float
    eta_s: float | None

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 1.0


@dataclass
class Preview(Event):
    job_id: int
    step: int
    region: Region
    png: bytes
    width: int
    height: int


@dataclass
class Result(Event):
    job_id: int
    index: int
    seed: int
    region: Region
    png: bytes
    width: int
    height: int
    timings: dict[str, float]


@dataclass
class Done(Event):
    job_id: int
    images: int
    steps_run: int
    timings: dict[str, float]


@dataclass
class Cancelled(Event):
    job_id: int
    reason: str


@dataclass
class Error(Event):
    code: str
    message: str
    job_id: int | None = None
    ref: int | None = None


@dataclass
class Models(Event):
    models: list[str]
    current_model: str
    model_info: dict[str, ModelInfo] = field(default_factory=dict)


@dataclass
class ModelLoaded(Event):
    model: str
    family: str
    native_resolution: int
    info: ModelInfo | None = None  # None: a server that sends no schedulers/options


def _region(obj: dict[str, Any], where: str) -> Region:
    data = read_obj(obj, "region", required=True, where=where)
    rw = f"{where}.region"
    return Region(*(read_int(data, k, lo=0, hi=MAX_SIDE, required=True, where=rw)
                    for k in ("x", "y", "width", "height")))


def _timings(obj: dict[str, Any]) -> dict[str, float]:
    data = obj.get("timings") or {}
    if not isinstance(data, dict):
        return {}
    return {str(k): float(v) for k, v in data.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def describe_close(code: int | None, reason: str = "") -> str:
    """A painter-readable line for a websocket close code."""
    if code == CLOSE_MESSAGE_TOO_BIG:
        return ("The server closed the connection: a message was over its size limit "
                "(max_message_bytes). Use a smaller canvas or a region.")
    if code == CLOSE_POLICY_VIOLATION:
        return f"The server refused the connection: {reason or 'protocol violation'}."
    if code == CLOSE_GOING_AWAY:
        return "The server is shutting down."
    if code in (None, 1000):
        return "The connection to the server was closed."
    return f"The connection to the server was lost (code {code}{': ' + reason if reason else ''})."


class ClientSession:
    """Sans-I/O client: build outgoing frames, feed incoming frames, get typed events.

    The plugin's socket code sends whatever the ``hello``/``submit``/``cancel`` methods return
    and passes every received frame (``str`` or ``bytes``) to :meth:`receive`. Previews and
    results come as a JSON announcement then a binary frame; the session pairs them, so the
    plugin sees one :class:`Preview`/:class:`Result` event carrying the PNG."""

    def __init__(self, token: str | None = None, client: str = "krita-plugin") -> None:
        self.token = token
        self.client = client
        self.capabilities: Capabilities | None = None
        self.job_by_ref: dict[int, int] = {}
        self._next_ref = 1
        # (kind, job_id) -> announcement waiting for its binary frame
        self._announced: dict[tuple[int, int], dict[str, Any]] = {}

    @property
    def connected(self) -> bool:
        return self.capabilities is not None

    def hello(self) -> str:
        return dumps(hello(self.token, self.client))

    def new_ref(self) -> int:
        ref = self._next_ref
        self._next_ref = ref + 1 if ref < MAX_REF else 1
        return ref

    def submit(self, request: SubmitRequest, image_png: bytes,
               map_gray8: bytes | None = None) -> list[str | bytes]:
        """Frames to send for one job. ``request.ref`` 0 gets a fresh ref; checks the request
        against the server's limits first so a mistake shows up before any upload."""
        if request.ref == 0:
            request.ref = self.new_ref()
        parse_submit(request.to_message(), self.capabilities)  # same checks as the server
        return submit_frames(request, image_png, map_gray8)

    def cancel(self, job_id: int | None = None, ref: int | None = None) -> str:
        if job_id is None and ref is not None and ref in self.job_by_ref:
            job_id, ref = self.job_by_ref[ref], None
        return dumps(cancel(job_id=job_id, ref=ref))

    def list_models(self) -> str:
        return dumps(list_models())

    def load_model(self, model: str) -> str:
        return dumps(load_model(model))

    def receive(self, data: str | bytes) -> list[Event]:
        """Events for one received frame (often one, sometimes none while a pair is half in)."""
        try:
            if isinstance(data, (bytes, bytearray, memoryview)):
                return self._receive_frame(decode_frame(bytes(data)))
            return self._receive_message(loads(data))
        except ProtocolError as exc:
            return [Error("bad_server_message", f"Unexpected message from the server: "
                                                f"{exc.message}", exc.job_id, exc.ref)]

    def _receive_frame(self, frame: Frame) -> list[Event]:
        announced = self._announced.pop((frame.kind, frame.ref), None)
        if announced is None:
            raise ProtocolError(E_BAD_FRAME, f"{frame.kind_name} frame for job {frame.ref} "
                                             f"without an announcement.", job_id=frame.ref)
        if frame.kind == FRAME_PREVIEW_PNG:
            return [Preview(frame.ref, announced["step"], announced["region"], frame.payload,
                            frame.width, frame.height)]
        return [Result(frame.ref, announced["index"], announced["seed"], announced["region"],
                       frame.payload, frame.width, frame.height, announced["timings"])]

    def _receive_message(self, m: dict[str, Any]) -> list[Event]:
        kind = m["type"]
        w = kind

        def job() -> int:
            return read_int(m, "job_id", lo=0, hi=MAX_REF, required=True, where=w)

        if kind == "welcome":
            version = m.get("protocol")
            if version != PROTOCOL_VERSION:
                return [Error(E_BAD_VERSION, f"The server speaks protocol version {version!r}; "
                                             f"this plugin speaks {PROTOCOL_VERSION}. Update "
                                             f"the plugin or the server so they match.")]
            self.capabilities = Capabilities.from_dict(read_obj(m, "capabilities",
                                                                required=True, where=w))
            return [Welcome(self.capabilities, str(m.get("server", "")))]
        if kind == "accepted":
            ref = read_int(m, "ref", lo=0, hi=MAX_REF, required=True, where=w)
            job_id = job()
            self.job_by_ref[ref] = job_id
            return [Accepted(ref, job_id, read_int(m, "position", lo=0, hi=2**31, required=True,
                                                   where=w),
                             read_int(m, "seed", lo=0, hi=2**63, default=0, where=w))]
        if kind == "queue":
            return [QueuePosition(job(), read_int(m, "position", lo=0, hi=2**31, required=True,
                                                  where=w))]
        if kind == "started":
            return [Started(job(), read_int(m, "width", lo=1, hi=MAX_SIDE, required=True, where=w),
                            read_int(m, "height", lo=1, hi=MAX_SIDE, required=True, where=w),
                            _region(m, w))]
        if kind == "progress":
            return [Progress(job(), read_int(m, "step", lo=0, hi=2**31, required=True, where=w),
                             read_int(m, "total", lo=0, hi=2**31, required=True, where=w),
                             read_float(m, "elapsed_s", lo=0, hi=1e9, default=0.0, where=w),
                             read_float(m, "eta_s", lo=0, hi=1e9, default=None, where=w))]
        if kind == "preview":
            self._announced[(FRAME_PREVIEW_PNG, job())] = {
                "step": read_int(m, "step", lo=0, hi=2**31, default=0, where=w),
                "region": _region(m, w)}
            return []
        if kind == "result":
            self._announced[(FRAME_RESULT_PNG, job())] = {
                "index": read_int(m, "index", lo=0, hi=MAX_INDEX, required=True, where=w),
                "seed": read_int(m, "seed", lo=0, hi=2**63, required=True, where=w),
                "region": _region(m, w), "timings": _timings(m)}
            return []
        if kind == "done":
            job_id = job()
            self._forget(job_id)
            return [Done(job_id, read_int(m, "images", lo=0, hi=MAX_INDEX, default=0, where=w),
                         read_int(m, "steps_run", lo=0, hi=2**31, default=0, where=w),
                         _timings(m))]
        if kind == "cancelled":
            job_id = job()
            self._forget(job_id)
            return [Cancelled(job_id, str(m.get("reason", "cancelled")))]
        if kind == "error":
            job_id = read_int(m, "job_id", lo=0, hi=MAX_REF, default=None, where=w)
            if job_id is not None:
                self._forget(job_id)
            return [Error(str(m.get("code", "error")), str(m.get("message", "")), job_id,
                          read_int(m, "ref", lo=0, hi=MAX_REF, default=None, where=w))]
        if kind == "models":
            names = m.get("models")
            if not isinstance(names, list):
                raise ProtocolError(E_BAD_MESSAGE, "models: 'models' must be a list.")
            info_map = _model_info_map(m.get("model_info"), w)
            current = str(m.get("current_model", ""))
            if self.capabilities is not None:
                self.capabilities.models = [str(n) for n in names]
                self.capabilities.model_info.update(info_map)
                self._set_current(current, None)
            return [Models([str(n) for n in names], current, info_map)]
        if kind == "model_loaded":
            model, family = str(m.get("model", "")), str(m.get("family", ""))
            info = None
            if "schedulers" in m or "options" in m:
                info = ModelInfo.from_dict({"family": family, "schedulers": m.get("schedulers"),
                                            "options": m.get("options")}, w)
            resolution = read_int(m, "native_resolution", lo=1, hi=MAX_SIDE, default=512,
                                  where=w)
            if self.capabilities is not None:
                self.capabilities.native_resolution = resolution
                self._set_current(model, info)
            return [ModelLoaded(model, family, resolution, info)]
        # Newer servers may add messages; an old plugin ignores them rather than failing.
        return []

    def _set_current(self, model: str, info: ModelInfo | None) -> None:
        """The server's current model changed (or was confirmed): checks follow its schedulers."""
        caps = self.capabilities
        caps.current_model = model
        if info is not None:
            caps.model_info[model] = info
        known = caps.model_info.get(model)
        if known is not None:
            caps.schedulers = list(known.schedulers)

    def _forget(self, job_id: int) -> None:
        for key in [k for k in self._announced if k[1] == job_id]:
            del self._announced[key]
        for ref in [r for r, j in self.job_by_ref.items() if j == job_id]:
            del self.job_by_ref[ref]
