"""The client's side of a connection, sans-I/O: build outgoing frames, feed incoming frames in,
get typed events out. The plugin's socket code (``krita_plugin.client``) only moves bytes."""

from __future__ import annotations

from typing import Any

from .capabilities import Capabilities, ModelInfo
from .constants import (
    CLOSE_GOING_AWAY,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    E_BAD_FRAME,
    E_BAD_VERSION,
    MAX_REF,
    ProtocolError,
)
from .frames import Frame, decode_frame, dumps, loads
from .maps import MakeMap, MapReady
from .messages import (
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
    Result,
    Welcome,
    decode_event,
)
from .submit import SubmitRequest, parse_submit, submit_frames


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
        # (frame kind, job_id) -> the announcement waiting for its binary frame
        self._announced: dict[tuple[int, int], Any] = {}

    @property
    def connected(self) -> bool:
        return self.capabilities is not None

    # --- outgoing -------------------------------------------------------------------------------

    def hello(self) -> str:
        return dumps(Hello(self.token, self.client).to_dict())

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
        return dumps(Cancel(job_id, ref).to_dict())

    def make_map(self, request: MakeMap, image_png: bytes) -> list[str | bytes]:
        """Frames to send for one map request (``request.ref`` 0 gets a fresh ref); checked
        like the server will first."""
        if request.ref == 0:
            request.ref = self.new_ref()
        MakeMap.from_dict(request.to_dict(), self.capabilities)
        return request.frames(image_png)

    def list_models(self) -> str:
        return dumps(ListModels().to_dict())

    def load_model(self, model: str) -> str:
        return dumps(LoadModel(model).to_dict())

    # --- incoming -------------------------------------------------------------------------------

    def receive(self, data: str | bytes) -> list[Event]:
        """Events for one received frame (often one, sometimes none while a pair is half in)."""
        binary = isinstance(data, (bytes, bytearray, memoryview))
        try:
            if binary:
                return self._receive_frame(decode_frame(bytes(data)))
            return self._receive_message(loads(data))
        except ProtocolError as exc:
            # A server frame's header ref is a job id, never one of this client's submit refs.
            job_id, ref = (None, None) if binary else (exc.job_id, exc.ref)
            return [Error("bad_server_message", f"Unexpected message from the server: "
                                                f"{exc.message}", job_id, ref)]

    def _receive_frame(self, frame: Frame) -> list[Event]:
        announced = self._announced.pop((frame.kind, frame.ref), None)
        if announced is None:
            raise ProtocolError(E_BAD_FRAME, f"{frame.kind_name} frame for job {frame.ref} "
                                             f"without an announcement.", job_id=frame.ref)
        return [announced.with_frame(frame)]

    def _receive_message(self, message: dict[str, Any]) -> list[Event]:
        try:
            event = (MapReady.from_dict(message) if message["type"] == MapReady.TYPE
                     else decode_event(message))
        except ProtocolError as exc:
            if exc.code == E_BAD_VERSION:  # a welcome from another version: say so plainly
                return [Error(exc.code, exc.message)]
            raise
        if event is None:
            return []
        if isinstance(event, (Preview, Result, MapReady)):
            self._announced[(event.FRAME_KIND, event.job_id)] = event
            return []  # the event comes out with its picture, in _receive_frame
        self._track(event)
        return [event]

    def _track(self, event: Event) -> None:
        """What the session remembers from an event: the server's capabilities, which ref
        became which job, and forgetting a job once it ended."""
        if isinstance(event, Welcome):
            self.capabilities = event.capabilities
        elif isinstance(event, Accepted):
            self.job_by_ref[event.ref] = event.job_id
        elif isinstance(event, (Done, Cancelled, Error)):
            if event.job_id is not None:
                self._forget(event.job_id)
        elif isinstance(event, Models):
            if self.capabilities is not None:
                self.capabilities.models = list(event.models)
                self.capabilities.model_info.update(event.model_info)
                self._set_current(event.current_model, None)
        elif isinstance(event, ModelLoaded) and self.capabilities is not None:
            self.capabilities.native_resolution = event.native_resolution
            self._set_current(event.model, event.info)

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
