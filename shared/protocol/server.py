"""The server's side of a connection, sans-I/O: the hello check, then each client frame turned
into a request the server acts on. The socket code (``server.app``) only moves bytes and acts.

A submit is one JSON message and then one or two binary frames; :class:`SubmitCollector` pairs
them, so the server sees one :class:`CompleteSubmit` per job.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from .capabilities import Capabilities
from .constants import (
    CLIENT_MESSAGE_TYPES,
    E_BAD_FRAME,
    E_BAD_MESSAGE,
    E_BAD_VERSION,
    E_FRAMES_TIMEOUT,
    E_HANDSHAKE_REQUIRED,
    E_MAP_SIZE_MISMATCH,
    E_QUEUE_FULL,
    E_UNAUTHORIZED,
    E_UNKNOWN_JOB,
    E_UNKNOWN_MODEL,
    E_UNKNOWN_TYPE,
    FRAME_IMAGE_PNG,
    FRAME_MAP_GRAY8,
    MAX_PENDING_SUBMITS,
    MAX_REF,
    PROTOCOL_VERSION,
    SUBMIT_FRAMES_TIMEOUT_S,
    ProtocolError,
)
from .frames import Frame, decode_frame, loads
from .fields import is_text
from .maps import CompleteMakeMap, MakeMap, MakeMapCollector
from .messages import Accepted, Cancel, Cancelled, Error, Event, ListModels, LoadModel, Welcome
from .submit import SubmitRequest, parse_submit


def check_hello(message: dict[str, Any], token: str | None) -> None:
    """Accept a ``hello`` or raise the error to send back (then close)."""
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
        # compare_digest: the time taken says nothing about how much of a guess was right.
        if not isinstance(given, str) or not is_text(given) or not hmac.compare_digest(
                given.encode("utf-8"), token.encode("utf-8")):
            raise ProtocolError(E_UNAUTHORIZED, "Wrong or missing access token: enter the token "
                                                "the server was started with (--token-file or DIFFDIFF_TOKEN).")


@dataclass
class CompleteSubmit:
    """A validated submit with all its binary frames."""

    request: SubmitRequest
    image_png: bytes
    map_gray8: bytes | None


class SubmitCollector:
    """Per connection: pairs each ``submit`` with the binary frames that follow it.

    ``add_submit`` validates the message; ``add_frame`` returns a :class:`CompleteSubmit` once a
    submit has every frame it needs, else None. Errors are :class:`ProtocolError` carrying the
    ref, and an error about a submit ends it, so the client's retry starts clean and no half-sent
    submit holds a queue slot. A submit whose frames have not all come ``timeout_s`` after it is
    ended by :meth:`expire`."""

    def __init__(self, capabilities: Capabilities | None = None,
                 max_pending: int = MAX_PENDING_SUBMITS,
                 timeout_s: float = SUBMIT_FRAMES_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capabilities = capabilities
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self.clock = clock
        self._pending: dict[int, dict[str, Any]] = {}

    @property
    def pending_refs(self) -> list[int]:
        return list(self._pending)

    def add_submit(self, message: dict[str, Any]) -> SubmitRequest:
        request = parse_submit(message, self.capabilities)
        if self.drop(request.ref):
            raise ProtocolError(E_BAD_MESSAGE, f"submit ref {request.ref} was already waiting "
                                               f"for its frames; both submits are dropped. Use "
                                               f"a new ref per submit.", ref=request.ref)
        if len(self._pending) >= self.max_pending:
            raise ProtocolError(E_QUEUE_FULL, f"{len(self._pending)} submits are still waiting "
                                              f"for their image frames; send those first.",
                                ref=request.ref)
        self._pending[request.ref] = {"request": request, "image": None, "map": None,
                                      "deadline": self.clock() + self.timeout_s}
        return request

    def add_frame(self, frame: Frame) -> CompleteSubmit | None:
        entry = self._pending.get(frame.ref)
        if entry is None:
            raise ProtocolError(E_BAD_FRAME, f"Binary {frame.kind_name} frame for ref "
                                             f"{frame.ref}, which has no pending submit; send "
                                             f"the submit message first.", ref=frame.ref)
        request: SubmitRequest = entry["request"]
        try:
            slot = self._slot_for(frame, request, entry)
        except ProtocolError as exc:
            del self._pending[frame.ref]
            exc.ref = frame.ref
            raise
        entry[slot] = frame.payload
        if entry["image"] is None or (request.needs_map and entry["map"] is None):
            return None
        del self._pending[frame.ref]
        return CompleteSubmit(request, entry["image"], entry["map"])

    @staticmethod
    def _slot_for(frame: Frame, request: SubmitRequest, entry: dict[str, Any]) -> str:
        """Which input of the submit ``frame`` is ("image" or "map"), or why it is none."""
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
        return slot

    def drop(self, ref: int) -> bool:
        return self._pending.pop(ref, None) is not None

    def next_deadline(self) -> float | None:
        """When the oldest pending submit expires (on ``clock``); None when none is pending."""
        return min((e["deadline"] for e in self._pending.values()), default=None)

    def expire(self) -> list[ProtocolError]:
        """End every submit whose frames did not all come in time: the errors to send."""
        now = self.clock()
        late = [ref for ref, e in self._pending.items() if e["deadline"] <= now]
        for ref in late:
            del self._pending[ref]
        return [ProtocolError(E_FRAMES_TIMEOUT, f"The picture frames of submit {ref} did not "
                                                f"all arrive within {self.timeout_s:g} s of it; "
                                                f"the submit is dropped. Send them right after "
                                                f"the submit.", ref=ref) for ref in late]


# What ServerSession.receive hands the server to act on (a cancel's job_id is always set); an
# Event is an answer to send as it is (a cancel by ref of a submit that was never accepted).
ClientRequest = Union[CompleteSubmit, Cancel, ListModels, LoadModel, CompleteMakeMap, Event]


class ServerSession:
    """Sans-I/O server side of one connection.

    :meth:`receive_hello` checks the first frame and gives the ``welcome`` to send back;
    :meth:`receive` turns every later frame into requests (a complete submit, a cancel with its
    job id resolved, a model request). Everything wrong raises :class:`ProtocolError`, which the
    server answers with an ``error`` to this client alone.

    ``capabilities`` is the server's live object (read on every check, so a model swap applies
    at once); ``jobs_in_queue`` counts this client's queued and running jobs, which together with
    its half-sent submits may not exceed ``max_jobs``. Half-sent submits expire after
    ``submit_timeout_s``: the server calls :meth:`expire` by :meth:`next_deadline`."""

    def __init__(self, capabilities: Capabilities, *, token: str | None = None,
                 server_name: str = "", max_jobs: int | None = None,
                 jobs_in_queue: Callable[[], int] | None = None,
                 submit_timeout_s: float = SUBMIT_FRAMES_TIMEOUT_S) -> None:
        self.capabilities = capabilities
        self.token = token
        self.server_name = server_name
        self.max_jobs = max_jobs
        self.jobs_in_queue = jobs_in_queue or (lambda: 0)
        self.submits = SubmitCollector(capabilities, timeout_s=submit_timeout_s)
        self.maps = MakeMapCollector(capabilities, timeout_s=submit_timeout_s)  # waiting for their picture
        self.job_by_ref: dict[int, int] = {}

    def receive_hello(self, data: str | bytes) -> Welcome:
        """The ``welcome`` for a first frame that is a good ``hello``; else raises the error to
        send before closing: ``bad_json``, ``too_large``, ``bad_version``, ``unauthorized``, or
        ``handshake_required`` for anything that is not a hello at all."""
        if not isinstance(data, str):
            raise ProtocolError(E_HANDSHAKE_REQUIRED, "The first message must be a 'hello' text "
                                                      "frame.")
        try:
            message = loads(data)
        except ProtocolError as exc:
            if exc.code != E_BAD_MESSAGE:
                raise
            message = {}  # JSON, but no object with a type: not a hello either
        check_hello(message, self.token)
        # A copy: the server may update the live capabilities while this one is serialised.
        return Welcome(Capabilities.from_dict(self.capabilities.to_dict()), self.server_name)

    def receive(self, data: str | bytes) -> list[ClientRequest]:
        if not isinstance(data, str):
            try:
                frame = decode_frame(data)
            except ProtocolError as exc:
                if exc.ref is not None:  # the header named a submit (or a make_map): this error ends it
                    self.submits.drop(exc.ref)
                    self.maps.drop(exc.ref)
                raise
            if self.maps.expects(frame.ref):
                return [self.maps.add_frame(frame)]
            complete = self.submits.add_frame(frame)
            return [] if complete is None else [complete]
        message = loads(data)
        kind = message["type"]
        if kind == "make_map":
            self._make_map(message)
            return []
        if kind == "submit":
            self._check_room(message)
            self.submits.add_submit(message)
            return []
        if kind == "cancel":
            return self._cancel(Cancel.from_dict(message))
        if kind == "list_models":
            return [ListModels()]
        if kind == "load_model":
            return [self._load_model(LoadModel.from_dict(message))]
        if kind == "hello":
            raise ProtocolError(E_BAD_MESSAGE, "Already connected: 'hello' is sent once.")
        raise ProtocolError(E_UNKNOWN_TYPE, f"Unknown message type {kind!r}; expected one of "
                                            f"{', '.join(CLIENT_MESSAGE_TYPES)}.")

    def accept(self, request: SubmitRequest | MakeMap, job_id: int, seed: int = 0) -> Accepted:
        """The server queued ``request`` as job ``job_id``: its ``accepted`` (the queue fills in
        the position), and from now on a cancel by its ref names that job."""
        self.job_by_ref[request.ref] = job_id
        return Accepted(request.ref, job_id, 0, seed)

    def next_deadline(self) -> float | None:
        """When the next half-sent submit expires (``time.monotonic``); None: none is waiting."""
        deadlines = [d for d in (self.submits.next_deadline(), self.maps.next_deadline()) if d is not None]
        return min(deadlines, default=None)

    def expire(self) -> list[Error]:
        """The errors for submits whose frames did not come in time (they are dropped)."""
        return [Error.from_exception(exc) for exc in self.submits.expire() + self.maps.expire()]

    def _check_room(self, message: dict[str, Any]) -> None:
        if self.max_jobs is None:
            return
        waiting = len(self.submits.pending_refs) + len(self.maps.pending_refs)
        if self.jobs_in_queue() + waiting >= self.max_jobs:
            ref = message.get("ref")
            ref = ref if type(ref) is int and 0 <= ref <= MAX_REF else None
            if ref is not None:
                self.submits.drop(ref)  # an error about a ref ends that submit
            raise ProtocolError(E_QUEUE_FULL, f"You already have {self.max_jobs} jobs waiting; "
                                              f"wait for one to finish or cancel one.", ref=ref)

    def _cancel(self, cancel: Cancel) -> list[ClientRequest]:
        job_id, ref = cancel.job_id, cancel.ref
        if job_id is None and ref is not None:
            if self.submits.drop(ref):  # its frames never all arrived: nothing was queued
                return [Cancelled(None, "cancelled by the client before it was accepted", ref)]
            if self.maps.drop(ref):  # a make_map whose picture never came: nothing was queued
                return [Cancelled(None, "cancelled by the client before it was accepted", ref)]
            job_id = self.job_by_ref.get(ref)
            if job_id is None:
                raise ProtocolError(E_UNKNOWN_JOB, f"No submit with ref {ref} is waiting or "
                                                   f"was accepted on this connection.", ref=ref)
        if job_id is None:
            raise ProtocolError(E_BAD_MESSAGE, "cancel needs a 'job_id' (or the submit's "
                                               "'ref').")
        return [Cancel(job_id=job_id)]

    def _make_map(self, message: dict[str, Any]) -> None:
        """A ``make_map``: counted like a job; its picture frame completes it."""
        self._check_room(message)
        ref = message.get("ref")
        if ref in self.submits.pending_refs:
            raise ProtocolError(E_BAD_MESSAGE, f"ref {ref} is already waiting for a submit's "
                                               f"frames; use a new ref.", ref=ref)
        self.maps.add_request(message)

    def _load_model(self, request: LoadModel) -> LoadModel:
        models = self.capabilities.models
        if request.model not in models:
            raise ProtocolError(E_UNKNOWN_MODEL, f"Unknown model {request.model!r}; this server "
                                                 f"offers: {', '.join(models)}.")
        return request
