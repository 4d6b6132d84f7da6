"""The numbers and names both sides agree on: version, frame kinds, limits, modes, error codes.

Also :class:`ProtocolError`, which carries one of the error codes: every layer raises it, so it
lives with the codes.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1

# Binary frame kinds (the header itself is in ``frames``).
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

MAX_REF = 2**32 - 1
MAX_INDEX = 2**16 - 1
MAX_SIDE = 2**16  # no single side above 65536 px, whatever max_pixels says

# Limits and defaults (the server announces its own in the handshake; these are the defaults).
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
MAX_SCHEDULER_CHARS = 100
MAX_MODEL_CHARS = 1000
# A connection may hold this many submits still waiting for their binary frames...
MAX_PENDING_SUBMITS = 4
# ...each for this long after its submit (the server's default; it says so in the error). Long
# enough for 64 MiB over a slow link, short enough that a lost upload frees its queue slot.
SUBMIT_FRAMES_TIMEOUT_S = 60.0
HANDSHAKE_TIMEOUT_S = 10.0  # from connecting to the hello

MODES = ("change_map", "soft_inpaint", "fan", "uniform")
# Modes whose submit is followed by a gray8 frame (the change map, or the inpaint mask).
MODES_WITH_MAP = ("change_map", "soft_inpaint")

# Model options: what a model takes beyond the common fields (SDXL refiner split, IF stages...).
OPTION_TYPES = ("bool", "int", "float")
MAX_OPTIONS = 32  # options in one submit (a model advertises a handful)
MAX_OPTION_NAME = 64

# Capability flags a server lists in ``capabilities.features`` (older servers send none): a client
# checks for one before it relies on what it names.
FEATURE_REPLACE = "replace"  # submit.replace: a live job replaces the client's earlier live jobs
FEATURES = (FEATURE_REPLACE,)
REPLACED_REASON = "replaced by a newer live job"

CLIENT_MESSAGE_TYPES = ("hello", "submit", "cancel", "list_models", "load_model", "make_map")

# Error codes (``error.code``); the message next to it is for the painter to read.
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
E_FRAMES_TIMEOUT = "frames_timeout"  # a submit's binary frames did not all arrive in time

# Websocket close codes the plugin may see, with what to tell the painter (``describe_close``).
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_POLICY_VIOLATION = 1008
CLOSE_GOING_AWAY = 1001


class ProtocolError(ValueError):
    """A message or frame that breaks the protocol. ``code`` is one of the ``E_*`` codes."""

    def __init__(self, code: str, message: str, *, job_id: int | None = None,
                 ref: int | None = None) -> None:
        # A message may quote what the client sent; a lone surrogate there could not be sent
        # back (or logged) as UTF-8, so it is spelled out as an escape instead.
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message)
        self.code = code
        self.message = message
        self.job_id = job_id
        self.ref = ref
