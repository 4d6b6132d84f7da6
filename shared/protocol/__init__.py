"""Wire protocol between the Krita plugin and the diffusion server, sans-I/O.

Pure standard library (it runs inside Krita's embedded Python, Python 3.9 on some builds, which
has no numpy or PIL) and no sockets: functions and dataclasses that build, serialise, parse and
validate messages. The socket code lives at the edges (``server.app``, ``krita_plugin.client``).
See ``shared/PROTOCOL.md`` for the wire format.

Split by layer and by side, like a sans-I/O library (websockets, h11):

- ``constants``: version, frame kinds, limits, modes, error codes, :class:`ProtocolError`;
- ``frames``: the binary frame header, and JSON text frames (``dumps``/``loads``);
- ``fields``: field readers that name what is wrong, and :class:`Region`;
- ``capabilities``: what a server can do (models, schedulers, options, limits);
- ``submit``: the submit message and its checks;
- ``messages``: every other message, one dataclass each, encoding and decoding together;
- ``client``: :class:`ClientSession`, the plugin's side of a connection;
- ``server``: :class:`ServerSession`, the server's side (hello check, submit collection);
- ``maps``: the map makers' request (``make_map``) and answer (``map``).

This module only re-exports, so ``from shared import protocol as p`` then ``p.Started`` works.

Change maps use the painter's convention: 255/white = change fully, 0/black = keep. (The paper's
``mu`` is the opposite: ``mu_paper = 1 - map``.)
"""

from .builders import (
    accepted,
    cancel,
    cancelled,
    done,
    error,
    error_from,
    hello,
    list_models,
    load_model,
    model_loaded,
    models,
    preview,
    progress,
    queue_position,
    result,
    started,
    welcome,
)
from .capabilities import Capabilities, ModelInfo, OptionSpec, check_options, read_model_info_map
from .client import ClientSession, describe_close
from .constants import (
    CLIENT_MESSAGE_TYPES,
    CLOSE_GOING_AWAY,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_PIXELS,
    E_BAD_FRAME,
    E_BAD_JSON,
    E_BAD_MESSAGE,
    E_BAD_OPTION,
    E_BAD_VERSION,
    E_FRAMES_TIMEOUT,
    E_HANDSHAKE_REQUIRED,
    E_JOB_FAILED,
    E_MAP_SIZE_MISMATCH,
    E_MODEL_LOAD_FAILED,
    E_OUT_OF_MEMORY,
    E_QUEUE_FULL,
    E_SHUTTING_DOWN,
    E_TOO_LARGE,
    E_UNAUTHORIZED,
    E_UNKNOWN_JOB,
    E_UNKNOWN_MODEL,
    E_UNKNOWN_SCHEDULER,
    E_UNKNOWN_TYPE,
    FEATURE_REPLACE,
    FEATURES,
    FRAME_IMAGE_PNG,
    FRAME_KIND_NAMES,
    FRAME_MAP_GRAY8,
    FRAME_PREVIEW_PNG,
    FRAME_RESULT_PNG,
    MAX_FAN_COUNT,
    MAX_GROW_PX,
    HANDSHAKE_TIMEOUT_S,
    MAX_GUIDANCE,
    MAX_INDEX,
    MAX_MODEL_CHARS,
    MAX_OPTION_NAME,
    MAX_OPTIONS,
    MAX_PENDING_SUBMITS,
    MAX_PROMPT_CHARS,
    MAX_REF,
    MAX_SCHEDULER_CHARS,
    MAX_SEED,
    MAX_SIDE,
    MAX_SOFTNESS_PX,
    MAX_STEPS,
    MAX_TEXT_BYTES,
    MAX_VARIANTS,
    MODES,
    MODES_WITH_MAP,
    OPTION_TYPES,
    PROTOCOL_VERSION,
    REPLACED_REASON,
    SUBMIT_FRAMES_TIMEOUT_S,
    ProtocolError,
)
from .fields import Region, is_text, json_type, read_float, read_int, read_obj, read_region, read_str, read_timings
from .frames import (
    FRAME_HEADER,
    FRAME_MAGIC,
    PNG_SIGNATURE,
    Frame,
    decode_frame,
    dumps,
    encode_frame,
    loads,
    png_size,
)
from .maps import MAP_KINDS, MAX_MAP_POINTS, CompleteMakeMap, MakeMap, MakeMapCollector, MapReady
from .messages import (
    EVENT_TYPES,
    Accepted,
    Cancel,
    Cancelled,
    Done,
    Error,
    Event,
    Hello,
    ListModels,
    LoadModel,
    ModelLoaded,
    Models,
    Preview,
    Progress,
    QueuePosition,
    Result,
    Started,
    Welcome,
    decode_event,
)
from .server import ClientRequest, CompleteSubmit, ServerSession, SubmitCollector, check_hello
from .submit import FanSpec, SoftInpaint, SubmitRequest, parse_submit, submit_frames, variant_seed

__all__ = [
    "CLIENT_MESSAGE_TYPES", "CLOSE_GOING_AWAY", "CLOSE_MESSAGE_TOO_BIG", "CLOSE_POLICY_VIOLATION",
    "DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_MAX_PIXELS", "E_BAD_FRAME", "E_BAD_JSON", "E_BAD_MESSAGE",
    "E_BAD_OPTION", "E_BAD_VERSION", "E_FRAMES_TIMEOUT", "E_HANDSHAKE_REQUIRED", "E_JOB_FAILED", "E_MAP_SIZE_MISMATCH",
    "E_MODEL_LOAD_FAILED", "E_OUT_OF_MEMORY", "E_QUEUE_FULL", "E_SHUTTING_DOWN", "E_TOO_LARGE",
    "E_UNAUTHORIZED", "E_UNKNOWN_JOB", "E_UNKNOWN_MODEL", "E_UNKNOWN_SCHEDULER", "E_UNKNOWN_TYPE",
    "EVENT_TYPES", "FRAME_HEADER", "FRAME_IMAGE_PNG", "FRAME_KIND_NAMES", "FRAME_MAGIC",
    "FRAME_MAP_GRAY8", "FRAME_PREVIEW_PNG", "FRAME_RESULT_PNG", "MAX_FAN_COUNT", "MAX_GROW_PX",
    "HANDSHAKE_TIMEOUT_S", "MAX_GUIDANCE", "MAX_INDEX", "MAX_MODEL_CHARS", "MAX_OPTIONS",
    "MAX_OPTION_NAME", "MAX_PENDING_SUBMITS", "MAX_PROMPT_CHARS", "MAX_REF", "MAX_SCHEDULER_CHARS",
    "MAX_SEED", "MAX_SIDE", "MAX_SOFTNESS_PX", "MAX_STEPS", "MAX_TEXT_BYTES", "MAX_VARIANTS", "MODES",
    "MODES_WITH_MAP", "OPTION_TYPES", "PNG_SIGNATURE", "PROTOCOL_VERSION",
    "SUBMIT_FRAMES_TIMEOUT_S", "FEATURE_REPLACE", "FEATURES", "REPLACED_REASON",
    "Accepted", "Cancel", "Cancelled", "Capabilities", "ClientRequest", "ClientSession",
    "CompleteSubmit", "Done", "Error", "Event", "FanSpec", "Frame", "Hello", "ListModels",
    "LoadModel", "ModelInfo", "ModelLoaded", "Models", "OptionSpec", "Preview", "Progress",
    "ProtocolError", "QueuePosition", "Region", "Result", "ServerSession", "SoftInpaint",
    "Started", "SubmitCollector", "SubmitRequest", "Welcome",
    "MAP_KINDS", "MAX_MAP_POINTS", "CompleteMakeMap", "MakeMap", "MakeMapCollector", "MapReady",
    "accepted", "cancel", "cancelled", "check_hello", "check_options", "decode_event",
    "decode_frame", "describe_close", "done", "dumps", "encode_frame", "error", "error_from",
    "hello", "is_text", "json_type", "list_models", "load_model", "loads", "model_loaded", "models",
    "parse_submit", "png_size", "preview", "progress", "queue_position", "read_float", "read_int",
    "read_model_info_map", "read_obj", "read_region", "read_str", "read_timings", "result",
    "started", "submit_frames", "variant_seed", "welcome",
]
