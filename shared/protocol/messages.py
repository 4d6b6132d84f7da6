"""Every control message but ``submit`` (see ``submit``), one dataclass each, its encoding and
its decoding side by side.

Server -> client messages are :class:`Event` subclasses: the server builds one and sends
``frames()``; the client's ``decode_event`` turns the JSON back into the same class.
``preview`` and ``result`` are a JSON announcement followed by a binary PNG frame: ``frames()``
gives both, and the client pairs them again (``with_frame``).

The lower-case functions at the end (``started(...)``, ``error(...)``) build the same messages
as plain dicts, for callers that write JSON themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from .capabilities import Capabilities, ModelInfo, read_model_info_map
from .constants import (
    E_BAD_MESSAGE,
    E_BAD_VERSION,
    FRAME_PREVIEW_PNG,
    FRAME_RESULT_PNG,
    MAX_INDEX,
    MAX_REF,
    MAX_SIDE,
    PROTOCOL_VERSION,
    ProtocolError,
)
from .fields import Region, read_float, read_int, read_obj, read_region, read_str, read_timings
from .frames import Frame, dumps, encode_frame

# --- client -> server ---------------------------------------------------------------------------


@dataclass
class Hello:
    """The first message a client sends (the server checks it with ``check_hello``)."""

    TYPE: ClassVar[str] = "hello"
    token: str | None = None
    client: str = ""

    def to_dict(self) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "hello", "protocol": PROTOCOL_VERSION}
        if self.token:
            message["token"] = self.token
        if self.client:
            message["client"] = self.client
        return message


@dataclass
class Cancel:
    """Cancel a job by server job id (or, before ``accepted`` arrived, by the submit's ref)."""

    TYPE: ClassVar[str] = "cancel"
    job_id: int | None = None
    ref: int | None = None

    def to_dict(self) -> dict[str, Any]:
        if (self.job_id is None) == (self.ref is None):
            raise ValueError("cancel takes exactly one of job_id or ref")
        if self.job_id is not None:
            return {"type": "cancel", "job_id": self.job_id}
        return {"type": "cancel", "ref": self.ref}

    @classmethod
    def from_dict(cls, m: dict[str, Any]) -> Cancel:
        # Neither is required here: the server session decides what a ref names.
        return cls(read_int(m, "job_id", lo=0, hi=MAX_REF, where="cancel"),
                   read_int(m, "ref", lo=0, hi=MAX_REF, where="cancel"))


@dataclass
class ListModels:
    TYPE: ClassVar[str] = "list_models"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "list_models"}


@dataclass
class LoadModel:
    TYPE: ClassVar[str] = "load_model"
    model: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": "load_model", "model": self.model}

    @classmethod
    def from_dict(cls, m: dict[str, Any]) -> LoadModel:
        return cls(read_str(m, "model", max_len=1000, required=True, where="load_model"))


# --- server -> client ---------------------------------------------------------------------------


@dataclass
class Event:
    """Base class of every server -> client message (what ``ClientSession.receive`` returns)."""

    TYPE: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def frames(self) -> list[str | bytes]:
        """The websocket frames that carry this message, in order."""
        return [dumps(self.to_dict())]


def _job_id(m: dict[str, Any], where: str) -> int:
    return read_int(m, "job_id", lo=0, hi=MAX_REF, required=True, where=where)


@dataclass
class Welcome(Event):
    TYPE: ClassVar[str] = "welcome"
    capabilities: Capabilities
    server: str = ""
    user: str = ""  # the studio user the token names (server --users); "" without

    def to_dict(self) -> dict[str, Any]:
        message = {"type": "welcome", "protocol": PROTOCOL_VERSION, "server": self.server,
                   "capabilities": self.capabilities.to_dict()}
        if self.user:
            message["user"] = self.user
        return message

    @classmethod
    def from_dict(cls, m: dict[str, Any]) -> Welcome:
        version = m.get("protocol")
        if version != PROTOCOL_VERSION:
            raise ProtocolError(E_BAD_VERSION, f"The server speaks protocol version {version!r}; "
                                               f"this plugin speaks {PROTOCOL_VERSION}. Update "
                                               f"the plugin or the server so they match.")
        caps = Capabilities.from_dict(read_obj(m, "capabilities", required=True, where="welcome"))
        return cls(caps, str(m.get("server", "")), str(m.get("user", "")))


@dataclass
class Accepted(Event):
    """``position`` 0 = running now (or next), 1 = one job ahead, ..."""

    TYPE: ClassVar[str] = "accepted"
    ref: int
    job_id: int
    position: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {"type": "accepted", "ref": self.ref, "job_id": self.job_id,
                "position": self.position, "seed": self.seed}

    @classmethod
    def from_dict(cls, m: dict[str, Any]) -> Accepted:
        w = "accepted"
        ref = read_int(m, "ref", lo=0, hi=MAX_REF, required=True, where=w)
        return cls(ref, _job_id(m, cls.TYPE), read_int(m, "position", lo=0, hi=2**31, required=True, where=w),
                   read_int(m, "seed", lo=0, hi=2**63, default=0, where=w))


@dataclass
class QueuePosition(Event):
    TYPE: ClassVar[str] = "queue"
    job_id: int
    position: int

    def to_dict(self) -> dict[str, Any]:
        return {"type": "queue", "job_id": self.job_id, "position": self.position}

    @classmethod
    def from_dict(cls, m: dict[str, Any]) -> QueuePosition:
        return cls(_job_id(m, cls.TYPE), read_int(m, "position", lo=0, hi=2**31, required=True, where="queue"))


@dataclass
class Started(Event):
    """The job left the queue; ``width``x``height`` is the size the model runs at and ``region``
    the canvas rectangle it covers."""

    TYPE: ClassVar[str] = "started"
    job_id: int
    width: int
    height: int
    region: Region

    def to_dict(self) -> dict[str, Any]:
        return {"type": "started", "job_id": self.job_id, "width": self.width,
                "height": self.height, "region": self.region.to_dict()}

    @classmethod
    def from_dict(cls, m: dict[str, Any]) -> Started:
        w = "started"
        return cls(_job_id(m, cls.TYPE), read_int(m, "width", lo=1, hi=MAX_SIDE, required=True, where=w),
                   read_int(m, "height", lo=1, hi=MAX_SIDE, required=True, where=w),
                   read_region(m, w))


@dataclass
class Progress(Event):
    TYPE: ClassVar[str] = "progress"
    job_id: int
    step: int
    total: int
    elapsed_s: float
    eta_s: float | None

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"type": "progress", "job_id": self.job_id, "step": self.step, "total": self.total,
                "elapsed_s": round(self.elapsed_s, 3),
                "eta_s": None if self.eta_s is None else round(self.eta_s, 3)}

    @classmethod
    def from_dict(cls, m: dict[str, Any]) -> Progress:
        w = "progress"
        return cls(_job_id(m, cls.TYPE), read_int(m, "step", lo=0, hi=2**31, required=True, where=w),
                   read_int(m, "total", lo=0, hi=2**31, required=True, where=w),
                   read_float(m, "elapsed_s", lo=0, hi=1e9, default=0.0, where=w),
                   read_float(m, "eta_s", lo=0, hi=1e9, default=None, where=w))


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in timings.items()}


@dataclass
class Preview(Event):
    """A downscaled picture of a running job; it shows canvas rectangle ``region`` (scale it
    up). Decoded from its announcement it has no picture yet (``png`` empty) until
    :meth:`with_frame`."""

    TYPE: ClassVar[str] = "preview"
    FRAME_KIND: ClassVar[int] = FRAME_PREVIEW_PNG
    job_id: int
    step: int
    region: Region
    png: bytes
    width: int
    height: int

    def to_dict(self) -> dict[str, Any]:
        return {"type": "preview", "job_id": self.job_id, "step": self.step,
                "region": self.region.to_dict()}

    def frames(self) -> list[str | bytes]:
        return [dumps(self.to_dict()), encode_frame(FRAME_PREVIEW_PNG, self.job_id, 0,
                                                    self.width, self.height, self.png)]

    @classmethod
    def from_dict(cls, m: dict[str, Any]) -> Preview:
        w = "preview"
        return cls(_job_id(m, cls.TYPE), read_int(m, "step", lo=0, hi=2**31, default=0, where=w),
                   read_region(m, w), b"", 0, 0)

    def with_frame(self, frame: Frame) -> Preview:
        return replace(self, png=frame.payload, width=frame.width, height=frame.height)


@dataclass
class Result(Event):
    """One finished image: variant ``index``, made with ``seed``, whose pixels replace canvas
    rectangle ``region`` (everything outside it is the source, unchanged). Decoded from its
    announcement it has no picture yet (``png`` empty) until :meth:`with_frame`."""

    TYPE: ClassVar[str] = "result"
    FRAME_KIND: ClassVar[int] = FRAME_RESULT_PNG
    job_id: int
    index: int
    seed: int
    region: Region
    png: bytes
    width: int
    height: int
    timings: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "result", "job_id": self.job_id, "index": self.index, "seed": self.seed,
                "region": self.region.to_dict(), "timings": _rounded(self.timings)}

    def frames(self) -> list[str | bytes]:
        return [dumps(self.to_dict()), encode_frame(FRAME_RESULT_PNG, self.job_id, self.index,
                                                    self.width, self.height, self.png)]

    @classmethod
    def from_dict(cls, m: dict[str, Any]) -> Result:
        w = "result"
        return cls(_job_id(m, cls.TYPE), read_int(m, "index", lo=0, hi=MAX_INDEX, required=True, where=w),
                   read_int(m, "seed", lo=0, hi=2**63, required=True, where=w),
                   read_region(m, w), b"", 0, 0, read_timings(m))

    def with_frame(self, frame: Frame) -> Result:
        return replace(self, png=frame.payload, width=frame.width, height=frame.height)


@dataclass
class Done(Event):
    TYPE: ClassVar[str] = "done"
    job_id: int
    images: int
    steps_run: int
    timings: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "done", "job_id": self.job_id, "images": self.images,
                "steps_run": self.steps_run, "timings": _rounded(self.timings)}

    @classmethod
    def from_dict(cls, m: dict[str, Any]) -> Done:
        w = "done"
        return cls(_job_id(m, cls.TYPE), read_int(m, "images", lo=0, hi=MAX_INDEX, default=0, where=w),
                   read_int(m, "steps_run", lo=0, hi=2**31, default=0, where=w), read_timings(m))


@dataclass
class Cancelled(Event):
    """A job (``job_id``) or a submit that was never accepted (``ref`` alone, answering a
    cancel by ref) ended without results."""

    TYPE: ClassVar[str] = "cancelled"
    job_id: int | None
    reason: str = "cancelled"
    ref: int | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.job_id is None and self.ref is None:
            raise ValueError("cancelled names a job_id or a ref")
        out = {"type": "cancelled", "job_id": self.job_id, "ref": self.ref, "reason": self.reason}
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_dict(cls, m: dict[str, Any]) -> Cancelled:
        w = "cancelled"
        ref = read_int(m, "ref", lo=0, hi=MAX_REF, default=None, where=w)
        job_id = read_int(m, "job_id", lo=0, hi=MAX_REF, required=ref is None, where=w)
        return cls(job_id, str(m.get("reason", "cancelled")), ref)


@dataclass
class Error(Event):
    """``job_id`` when it ends a job; ``ref`` when it answers one submit."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    job_id: int | None = None
    ref: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if self.job_id is not None:
            out["job_id"] = self.job_id
        if self.ref is not None:
            out["ref"] = self.ref
        return out

    @classmethod
    def from_exception(cls, exc: ProtocolError) -> Error:
        return cls(exc.code, exc.message, exc.job_id, exc.ref)

    @classmethod
    def from_dict(cls, m: dict[str, Any]) -> Error:
        job_id = read_int(m, "job_id", lo=0, hi=MAX_REF, default=None, where="error")
        return cls(str(m.get("code", "error")), str(m.get("message", "")), job_id,
                   read_int(m, "ref", lo=0, hi=MAX_REF, default=None, where="error"))


@dataclass
class Models(Event):
    TYPE: ClassVar[str] = "models"
    models: list[str]
    current_model: str
    model_info: dict[str, ModelInfo] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "models", "models": list(self.models), "current_model": self.current_model,
                "model_info": {k: v.to_dict() for k, v in self.model_info.items()}}

    @classmethod
    def from_dict(cls, m: dict[str, Any]) -> Models:
        names = m.get("models")
        if not isinstance(names, list):
            raise ProtocolError(E_BAD_MESSAGE, "models: 'models' must be a list.")
        info_map = read_model_info_map(m.get("model_info"), "models")
        return cls([str(n) for n in names], str(m.get("current_model", "")), info_map)


@dataclass
class ModelLoaded(Event):
    """The model is loaded; ``info`` (its schedulers and options) replaces what the client
    knew. None: a server that sends no schedulers/options."""

    TYPE: ClassVar[str] = "model_loaded"
    model: str
    family: str
    native_resolution: int
    info: ModelInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "model_loaded", "model": self.model, "family": self.family,
                               "native_resolution": self.native_resolution}
        if self.info is not None:
            out["schedulers"] = list(self.info.schedulers)
            out["options"] = [o.to_dict() for o in self.info.options]
        return out

    @classmethod
    def from_dict(cls, m: dict[str, Any]) -> ModelLoaded:
        w = "model_loaded"
        model, family = str(m.get("model", "")), str(m.get("family", ""))
        info = None
        if "schedulers" in m or "options" in m:
            info = ModelInfo.from_dict({"family": family, "schedulers": m.get("schedulers"),
                                        "options": m.get("options")}, w)
        resolution = read_int(m, "native_resolution", lo=1, hi=MAX_SIDE, default=512, where=w)
        return cls(model, family, resolution, info)


EVENT_TYPES: dict[str, Any] = {cls.TYPE: cls for cls in (
    Welcome, Accepted, QueuePosition, Started, Progress, Preview, Result, Done, Cancelled,
    Error, Models, ModelLoaded)}


def decode_event(message: dict[str, Any]) -> Event | None:
    """The event a parsed server message carries; None for a type this side does not know
    (newer servers may add messages: an old plugin ignores them rather than failing)."""
    cls = EVENT_TYPES.get(message["type"])
    return None if cls is None else cls.from_dict(message)
