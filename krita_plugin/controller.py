"""The docker's brain, without widgets and without Krita: jobs, previews, results, history.

It reads the canvas through a `host` (krita_host.KritaHost in Krita, a fake in tests), talks to the
server through client.ServerClient, and tells the panel what changed through signals. All of it
runs on the UI thread; the client's events arrive here as queued Qt signals.

Driving it from a script (inside Krita, e.g. under kritarunner, or from the docker's own
controller in the GUI), without any widget::

    from krita_plugin.krita_host import script_controller  # packaged: differential_diffusion.krita_host
    c = script_controller("ws://127.0.0.1:7860", document=doc)  # or krita_host.docker_controller()
    c.wait_connected(timeout_s=30)            # pumps the Qt event loop until the handshake is done
    c.update_settings(mode="fan", prompt="a red barn", random_seed=False, seed=7, fan_columns=4)
    c.option_specs()                          # the model's own options, as the server advertises them
    c.set_option("refiner_split", 0.7)        # sent with the next jobs to models that take it
    job = c.prepare_job()                     # reads the document: job.request, job.map_gray8, job.image_png
    outcome = c.run_job(timeout_s=300, job=job)  # sends it, pumps Qt until done/cancelled/error
    outcome.state, outcome.layer_ids, outcome.previews, outcome.message

Under kritarunner there is no window, hence no active document or layer: pass `document=` (and
`active_layer=` for Source 'Active layer') to script_controller. `controller.finished` carries the
same JobOutcome for code that prefers a signal to `run_job`'s blocking wait.

`prepare_job` raises JobInputError (a sentence for the painter) when the canvas cannot make a
job; `run_job` raises TimeoutError after cancelling a job that ran past `timeout_s`. The same
methods serve the docker: `generate()` is `prepare_job` + `submit_job` with errors as notices.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from shared import protocol
from shared.protocol import Region

from .client import NotConnected, ServerClient
from .history import History, JobLayer
from .images import ImageError, bgra_to_png
from .jobs import (
    DocumentGone,
    JobInputError,
    PREVIEW_LAYER_NAME,
    JobInputs,
    build_submit,
    pick_seed,
    read_job_inputs,
)
from .live import LiveMode
from .qt import QApplication, QObject, QTimer, Signal
from .model_choices import ModelChoicesMixin
from .results import ResultsMixin
from .settings import Settings, SettingsStore, limits_for, load_settings, save_settings


@dataclass
class ActiveJob:
    ref: int
    canvas: Any
    prompt: str
    label: str
    layer: JobLayer  # where its preview and results go
    variants: int
    seed: int | None = None
    job_id: int | None = None
    position: int | None = None
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    results: int = 0
    submitted_at: float = 0.0
    outcome: JobOutcome | None = None
    cancel_requested: bool = False
    preview_id: str | None = None
    preview_region: Region | None = None
    pending_preview: Any = None  # the newest preview not drawn yet (older ones are skipped)
    live: bool = False  # a Live mode job: drawn on the Live layer (live.py), replaced by the next


@dataclass
class PreparedJob:
    """A job read off the canvas, not sent yet: exactly what `submit_job` will put on the wire.

    The picture is encoded to PNG only when first asked for (`image_png`): `submit_job` lets the
    client's network thread do it, since a 4K canvas takes about a second to encode.
    """

    request: protocol.SubmitRequest
    map_gray8: bytes | None
    inputs: JobInputs
    canvas: Any
    seed: int | None
    _png: bytes | None = field(default=None, repr=False)

    @property
    def image_png(self) -> bytes:
        if self._png is None:
            self._png = bgra_to_png(self.inputs.image_bgra, self.inputs.width, self.inputs.height)
        return self._png

    def encode(self) -> bytes:
        return self.image_png


@dataclass
class JobOutcome:
    """How a job ended, for scripts and tests (the `finished` signal carries one).

    state: "running" until the end, then "done", "cancelled", "error" or "lost" (connection gone).
    """

    ref: int
    job_id: int | None = None
    state: str = "running"
    message: str = ""
    seed: int | None = None
    previews: int = 0
    layer_ids: list[str] = field(default_factory=list)  # result layers, in variant order
    layer_names: list[str] = field(default_factory=list)
    history_keys: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state != "running"


def pump_events(until, timeout_s: float, interval_s: float = 0.01) -> bool:
    """Run the Qt event loop (queued signals from the client thread included) until `until()` is
    true or `timeout_s` passes; returns `until()`. For scripts and tests, never for the docker."""
    deadline = time.monotonic() + timeout_s
    while True:
        QApplication.processEvents()
        if until():
            return True
        if time.monotonic() >= deadline:
            return bool(until())
        time.sleep(interval_s)


class Controller(ResultsMixin, ModelChoicesMixin, QObject):
    changed = Signal()  # connection, progress or job state changed: the panel re-reads
    history_changed = Signal()
    notice = Signal(str, str)  # level ("info" | "warning" | "error"), a sentence for the painter
    finished = Signal(object)  # a JobOutcome, once per job, when it is done, cancelled or failed

    def __init__(self, host: Any, client: ServerClient | None = None, store: SettingsStore | None = None,
                 parent: QObject | None = None) -> None:
        QObject.__init__(self, parent)
        self.host = host
        self.store = store if store is not None else host.store
        self.settings: Settings = load_settings(self.store)
        self.client = client if client is not None else ServerClient(self)
        self.client.state_changed.connect(self._on_state)
        self.client.event.connect(self._on_event)
        self.connection_state = "disconnected"
        self.connection_text = "Not connected."
        self.capabilities: protocol.Capabilities | None = None
        self.pending: dict[int, ActiveJob] = {}  # by ref, until the server accepts
        self.jobs: dict[int, ActiveJob] = {}  # by server job id
        self.history = History()
        self.last_seed: int | None = None
        self.outcomes: dict[int, JobOutcome] = {}  # by ref, every job this controller sent
        self._inbox: deque = deque()  # client events and state changes waiting while one is handled
        self._handling = False
        # The panel re-reads at most every 50 ms: a burst of progress messages is one repaint.
        self._changed_timer = QTimer(self)
        self._changed_timer.setSingleShot(True)
        self._changed_timer.timeout.connect(self.changed.emit)
        self._init_results()
        self.live = LiveMode(self)

    def settled(self) -> bool:
        """Nothing waiting to be drawn: no preview and no panel refresh pending (for scripts)."""
        return not self._preview_timer.isActive() and not self._changed_timer.isActive()

    def _changed_soon(self) -> None:
        if not self._changed_timer.isActive():
            self._changed_timer.start(50)

    # -- settings and connection -------------------------------------------------------------------
    def update_settings(self, **values) -> None:
        # A new URL or token connects again; so does confirming the same ones while not connected
        # (the painter pressed Enter in the URL box after starting the server).
        reconnect = any(k in values and (values[k] != getattr(self.settings, k) or self.connection_state
                                         in ("disconnected", "refused")) for k in ("server_url", "token"))
        for key, value in values.items():
            setattr(self.settings, key, value)
        save_settings(self.settings, self.store)
        if reconnect:
            self.connect_server()

    def limits(self) -> dict[str, int]:
        """The largest steps and variants a job may ask for: the protocol's, lowered by the server's."""
        return limits_for(self.capabilities)

    def connect_server(self) -> None:
        self.client.connect_to(self.settings.server_url, self.settings.token)

    def shutdown(self) -> None:
        save_settings(self.settings, self.store)
        self.client.close()  # a close frame: the server cancels this client's jobs at once

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.jobs)

    def generate_blocker(self) -> str:
        """Why Generate cannot be pressed now ("" when it can), in the painter's words."""
        if self.connection_state != "connected":
            return {"connecting": "Connecting to the server…",
                    "refused": "The server refused the connection: check the token in Settings.",
                    }.get(self.connection_state, "Not connected: start the server, or check its address in Settings.")
        if self.host.active_canvas() is None:
            return "Open a document first."
        return ""

    def _on_state(self, state: str, text: str) -> None:
        self._one_at_a_time(lambda: self._apply_state(state, text))

    def _apply_state(self, state: str, text: str) -> None:
        previous = self.connection_state
        self.connection_state, self.connection_text = state, text
        if state != "connected":
            self.capabilities = None
            if previous == "connected" and self.busy:
                # The server cancels a disconnected client's jobs; do the same on this side.
                self._end_all("The connection to the server was lost; the job was stopped. Generate again "
                              "once it is back.")
        self.changed.emit()

    # -- generating ----------------------------------------------------------------------------------
    def prepare_job(self, settings: Settings | None = None) -> PreparedJob:
        """Read the active document and build its job (nothing is sent); `settings` instead of the
        painter's (Live mode's).

        Raises JobInputError, ImageError or protocol.ProtocolError with a sentence for the painter.
        """
        canvas = self.host.active_canvas()
        if canvas is None:
            raise JobInputError("Open a document first.")
        settings = (settings or self.settings).validated()
        try:
            hide = tuple(job.preview_id for job in self.jobs.values() if job.preview_id and job.canvas is canvas)
            hide += self.live.hidden_layers(canvas)
            native = self.capabilities.native_resolution if self.capabilities is not None else None
            inputs = read_job_inputs(canvas, settings, native, hide)
        except DocumentGone:
            raise JobInputError("The document was closed.") from None
        seed = pick_seed(settings)
        request = build_submit(settings, inputs, seed)
        names = self.scheduler_names()
        if request.scheduler and names and request.scheduler not in names:
            inputs.notes.append(f"The scheduler {request.scheduler} does not work with {self.model_name()}; "
                                "the model's own scheduler was used.")
            request.scheduler = None
        request.options = self.chosen_options() or None
        return PreparedJob(request, inputs.change_map if request.needs_map else None, inputs, canvas, seed)

    def submit_job(self, job: PreparedJob, live: bool = False) -> JobOutcome:
        """Send a prepared job (`live`: Live mode's, see live.py); raises NotConnected or
        protocol.ProtocolError (e.g. over the server's limits)."""
        settings = self.settings.validated()
        ref = self.client.submit(job.request, job.encode, job.map_gray8)  # encoded off the UI thread
        self.last_seed = job.seed
        outcome = self.outcomes[ref] = JobOutcome(ref=ref, seed=job.seed)
        inputs = job.inputs
        above, below = (inputs.source_node_id, None) if inputs.source_node_id else (None, inputs.map_layer_id)
        crop = inputs.crop or Region(0, 0, inputs.width, inputs.height)
        layer = JobLayer(job.canvas, above, below, job.map_gray8, crop)
        active = self.pending[ref] = ActiveJob(ref=ref, canvas=job.canvas, prompt=settings.prompt, label=inputs.label,
                                               layer=layer, variants=job.request.variants, seed=job.seed,
                                               submitted_at=time.monotonic(), outcome=outcome, live=live)
        if not live:
            # The job's layer is made now, empty, while the server works: inserting a layer costs
            # Krita tens of ms on a big canvas, which would otherwise delay the first preview or
            # result. Previews and the first result are written on it; it goes if the job fails.
            active.preview_id = self._safely(
                lambda: job.canvas.add_layer(PREVIEW_LAYER_NAME, None, b"", above, below), job.canvas)
        for note in inputs.notes:
            self.notice.emit("warning", note)
        self.changed.emit()
        return outcome

    def generate(self) -> bool:
        """Read the canvas, send a job. False (with a notice saying why) when it could not start."""
        try:
            self.submit_job(self.prepare_job())
        except (JobInputError, NotConnected, ImageError) as exc:
            self.notice.emit("error", str(exc))
            return False
        except protocol.ProtocolError as exc:
            self.notice.emit("error", exc.message)
            return False
        return True

    # -- scripting (blocking helpers that pump the Qt event loop; never used by the docker) --------------
    def wait_connected(self, timeout_s: float = 30.0) -> bool:
        """Connect (if not yet) and pump Qt until the server's welcome arrived; False on timeout."""
        if self.connection_state != "connected" and self.client.state in ("disconnected", "refused"):
            self.connect_server()
        return pump_events(lambda: self.connection_state == "connected" and self.capabilities is not None,
                           timeout_s)

    def wait_for(self, outcome: JobOutcome, timeout_s: float = 300.0) -> JobOutcome:
        """Pump Qt until `outcome` is finished; on timeout cancel the job and raise TimeoutError."""
        if not pump_events(lambda: outcome.finished, timeout_s):
            if outcome.job_id is not None:
                self.client.cancel(job_id=outcome.job_id)
            else:
                self.client.cancel(ref=outcome.ref)
            raise TimeoutError(f"job {outcome.job_id or outcome.ref} did not finish in {timeout_s} s")
        return outcome

    def run_job(self, timeout_s: float = 300.0, job: PreparedJob | None = None) -> JobOutcome:
        """Build (unless given), send and wait for one job; returns how it ended (state, result
        layer ids and names, number of previews, the error message if any)."""
        outcome = self.submit_job(job if job is not None else self.prepare_job())
        return self.wait_for(outcome, timeout_s)

    def cancel(self) -> None:
        for job in list(self.jobs.values()):
            job.cancel_requested = True
            self.client.cancel(job_id=job.job_id)
        for job in list(self.pending.values()):
            job.cancel_requested = True
            self.client.cancel(ref=job.ref)
        self.changed.emit()

    def create_map_layer(self) -> None:
        """A black, half-opaque Change Map layer on top (the painter's active layer stays active)."""
        canvas = self.host.active_canvas()
        if canvas is None:
            self.notice.emit("error", "Open a document first.")
            return

        def create() -> str:
            layer_id = canvas.add_layer(self.settings.map_layer, None, b"", opacity=128)
            canvas.fill_layer(layer_id, bytes((0, 0, 0, 255)))
            return layer_id

        if self._safely(create, canvas) is not None:
            self.notice.emit("info", f"Added '{self.settings.map_layer}': select it and paint white where the "
                                     "picture may change, grey for a little, black to keep.")

    # -- server events ---------------------------------------------------------------------------------
    def _on_event(self, ev: protocol.Event) -> None:
        self._one_at_a_time(lambda: self._dispatch(ev))

    def _dispatch(self, ev: protocol.Event) -> None:
        handler = getattr(self, "_on_" + type(ev).__name__, None)
        if handler is not None:
            handler(ev)
        if isinstance(ev, (protocol.Progress, protocol.Preview, protocol.QueuePosition)):
            self._changed_soon()
        else:
            self.changed.emit()

    def _one_at_a_time(self, action) -> None:
        """Run what the client reports one thing at a time, in order. In Krita's GUI, adding or
        removing a layer waits for the image (waitForDone), which runs the Qt event loop: the next
        event (the job's `done`, a preview, a lost connection) would otherwise be handled in the
        middle of this one, e.g. a preview layer created twice or a job ended before its result."""
        self._inbox.append(action)
        if self._handling:
            return
        self._handling = True
        try:
            while self._inbox:
                self._inbox.popleft()()
        finally:
            self._handling = False

    def _on_Welcome(self, ev: protocol.Welcome) -> None:
        self.capabilities = ev.capabilities

    def _on_Models(self, ev: protocol.Models) -> None:
        if self.capabilities is not None:
            self.capabilities.models = ev.models
            self.capabilities.current_model = ev.current_model
            self.capabilities.model_info.update(ev.model_info)

    def _on_ModelLoaded(self, ev: protocol.ModelLoaded) -> None:
        caps = self.capabilities
        if caps is not None:  # (the client's session did the same already; fakes in tests did not)
            caps.current_model = ev.model
            if ev.info is not None:
                caps.model_info[ev.model] = ev.info
                caps.schedulers = list(ev.info.schedulers)
        self.notice.emit("info", f"Model {ev.model} loaded.")

    def _on_Accepted(self, ev: protocol.Accepted) -> None:
        job = self.pending.pop(ev.ref, None)
        if job is None:
            return
        job.job_id, job.position, job.seed = ev.job_id, ev.position, ev.seed
        if job.outcome is not None:
            job.outcome.job_id, job.outcome.seed = ev.job_id, ev.seed
        self.jobs[ev.job_id] = job

    def _on_QueuePosition(self, ev: protocol.QueuePosition) -> None:
        if ev.job_id in self.jobs:
            self.jobs[ev.job_id].position = ev.position

    def _on_Started(self, ev: protocol.Started) -> None:
        if ev.job_id in self.jobs:
            self.jobs[ev.job_id].position = 0

    def _on_Progress(self, ev: protocol.Progress) -> None:
        job = self.jobs.get(ev.job_id)
        if job is not None:
            job.position, job.step, job.total, job.eta_s = 0, ev.step, ev.total, ev.eta_s

    def _on_Done(self, ev: protocol.Done) -> None:
        job = self.jobs.pop(ev.job_id, None)
        if job is None:
            return
        self._remove_preview(job)
        waited = time.monotonic() - job.submitted_at
        server = ev.timings.get("total_s")
        on_server = f" ({server:.1f} s on the server)" if server is not None else ""
        text = f"Done in {waited:.1f} s{on_server}: {ev.images} image(s), {ev.steps_run} steps."
        if not job.live:  # a live job a stroke: no notice each time
            self.notice.emit("info", text)
        self._finish(job, "done", text)

    def _on_Cancelled(self, ev: protocol.Cancelled) -> None:
        # A ref alone: a submit cancelled before the server accepted it (protocol, issue 12).
        job = self.jobs.pop(ev.job_id, None) if ev.job_id is not None else self.pending.pop(ev.ref, None)
        if job is None:
            return
        self._remove_preview(job)
        text = "Cancelled." if job.cancel_requested else f"The server stopped the job: {ev.reason}."
        if not job.live:  # live jobs are replaced all the time: that is no news
            self.notice.emit("info" if job.cancel_requested else "warning", text)
        self._finish(job, "cancelled", ev.reason)

    def _on_Error(self, ev: protocol.Error) -> None:
        job = self.jobs.pop(ev.job_id, None) if ev.job_id is not None else None
        if job is None and ev.ref is not None:
            job = self.pending.pop(ev.ref, None)
        if job is None and ev.code == protocol.E_UNKNOWN_JOB:
            return  # a Cancel that crossed the job's end on the wire: the job is over anyway
        if job is not None:
            self._remove_preview(job)
        self.notice.emit("error", ev.message or ev.code)
        if job is not None:
            self._finish(job, "error", ev.message or ev.code)

    def _finish(self, job: ActiveJob, state: str, message: str) -> None:
        if job.outcome is not None and not job.outcome.finished:
            job.outcome.state, job.outcome.message = state, message
            self.finished.emit(job.outcome)

    def _end_all(self, why: str) -> None:
        for job in list(self.jobs.values()) + list(self.pending.values()):
            self._remove_preview(job)
            self._finish(job, "lost", why)
        self.jobs.clear()
        self.pending.clear()
        self.notice.emit("error", why)

    # -- status for the panel --------------------------------------------------------------------------
    def status(self) -> tuple[str, int, int]:
        """A line of text and a progress bar value/maximum for the current job."""
        if self.pending:
            return "Sending…", 0, 0
        if not self.jobs:
            return "", 0, 1
        job = next(iter(self.jobs.values()))
        if job.cancel_requested:
            return "Cancelling…", 0, 0
        if job.total and job.step:
            eta = f", about {job.eta_s:.0f} s left" if job.eta_s is not None else ""
            return f"Step {job.step}/{job.total}{eta}", job.step, job.total
        if job.position:
            return f"Waiting: {job.position} job(s) ahead in the server's queue", 0, 0
        return "Starting…", 0, 0
