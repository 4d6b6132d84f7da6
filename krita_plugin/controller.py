"""The docker's brain, without widgets and without Krita: jobs, previews, results, history.

It reads the canvas through a `host` (krita_io.KritaHost in Krita, a fake in tests), talks to the
server through client.ServerClient, and tells the panel what changed through signals. All of it
runs on the UI thread; the client's events arrive here as queued Qt signals.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from shared import protocol

from .client import NotConnected, ServerClient
from .history import History, HistoryEntry
from .images import ImageError, bgra_to_png, png_to_bgra
from .jobs import JobInputError, build_submit, pick_seed, result_layer_name
from .qt import QObject, Signal
from .settings import Settings, SettingsStore, load_settings, save_settings


@dataclass
class ActiveJob:
    ref: int
    canvas: Any
    prompt: str
    label: str
    above_id: str | None
    variants: int
    seed: int | None = None
    job_id: int | None = None
    position: int | None = None
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    results: int = 0
    submitted_at: float = 0.0


class Controller(QObject):
    changed = Signal()  # connection, progress or job state changed: the panel re-reads
    history_changed = Signal()
    notice = Signal(str, str)  # level ("info" | "warning" | "error"), a sentence for the painter

    def __init__(self, host: Any, client: ServerClient | None = None, store: SettingsStore | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
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

    # -- settings and connection -------------------------------------------------------------------
    def update_settings(self, **values) -> None:
        reconnect = any(k in values and values[k] != getattr(self.settings, k) for k in ("server_url", "token"))
        for key, value in values.items():
            setattr(self.settings, key, value)
        save_settings(self.settings, self.store)
        if reconnect:
            self.connect_server()

    def connect_server(self) -> None:
        self.client.connect_to(self.settings.server_url, self.settings.token)

    def shutdown(self) -> None:
        save_settings(self.settings, self.store)
        self.client.close()

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.jobs)

    def _on_state(self, state: str, text: str) -> None:
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
    def generate(self) -> bool:
        """Read the canvas, send a job. False (with a notice saying why) when it could not start."""
        canvas = self.host.active_canvas()
        if canvas is None:
            self.notice.emit("error", "Open a document first.")
            return False
        settings = self.settings.validated()
        try:
            inputs = canvas.read_inputs(settings)
            seed = pick_seed(settings)
            request = build_submit(settings, inputs, seed)
            image_png = bgra_to_png(inputs.image_bgra, inputs.width, inputs.height)
            ref = self.client.submit(request, image_png, inputs.change_map if request.needs_map else None)
        except (JobInputError, NotConnected, ImageError) as exc:
            self.notice.emit("error", str(exc))
            return False
        except protocol.ProtocolError as exc:
            self.notice.emit("error", exc.message)
            return False
        self.last_seed = seed
        self.pending[ref] = ActiveJob(ref=ref, canvas=canvas, prompt=settings.prompt, label=inputs.label,
                                      above_id=inputs.source_node_id, variants=settings.variants, seed=seed,
                                      submitted_at=time.monotonic())
        for note in inputs.notes:
            self.notice.emit("warning", note)
        self.changed.emit()
        return True

    def cancel(self) -> None:
        for job in list(self.jobs.values()):
            self.client.cancel(job_id=job.job_id)
        for ref in list(self.pending):
            self.client.cancel(ref=ref)

    def create_map_layer(self) -> None:
        canvas = self.host.active_canvas()
        if canvas is None:
            self.notice.emit("error", "Open a document first.")
            return
        if self._safely(lambda: canvas.create_map_layer(self.settings.map_layer)) is not None:
            self.notice.emit("info", f"Added '{self.settings.map_layer}': paint white where the picture may change, "
                                     "grey for a little, black to keep.")

    # -- server events ---------------------------------------------------------------------------------
    def _on_event(self, ev: protocol.Event) -> None:
        handler = getattr(self, "_on_" + type(ev).__name__, None)
        if handler is not None:
            handler(ev)
        self.changed.emit()

    def _on_Welcome(self, ev: protocol.Welcome) -> None:
        self.capabilities = ev.capabilities

    def _on_Models(self, ev: protocol.Models) -> None:
        if self.capabilities is not None:
            self.capabilities.models = ev.models
            self.capabilities.current_model = ev.current_model

    def _on_ModelLoaded(self, ev: protocol.ModelLoaded) -> None:
        self.notice.emit("info", f"Model {ev.model} loaded.")

    def _on_Accepted(self, ev: protocol.Accepted) -> None:
        job = self.pending.pop(ev.ref, None)
        if job is None:
            return
        job.job_id, job.position, job.seed = ev.job_id, ev.position, ev.seed
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

    def _on_Preview(self, ev: protocol.Preview) -> None:
        job = self.jobs.get(ev.job_id)
        if job is None or job.results:  # a late preview must not cover the results
            return
        region = ev.region
        self._safely(lambda: job.canvas.set_preview(
            region, png_to_bgra(ev.png, region.width, region.height), job.above_id))

    def _on_Result(self, ev: protocol.Result) -> None:
        job = self.jobs.get(ev.job_id)
        if job is None:
            return
        if job.results == 0:
            self._safely(job.canvas.remove_preview)
        job.results += 1
        region = ev.region
        name = result_layer_name(job.prompt, ev.seed, job.label)
        layer_id = self._safely(lambda: job.canvas.add_result_layer(
            name, region, png_to_bgra(ev.png, region.width, region.height), job.above_id, ev.index == 0))
        if layer_id is None:
            return
        self.history.add(job_id=ev.job_id, index=ev.index, seed=ev.seed, name=name, region=region, png=ev.png,
                         canvas=job.canvas, above_id=job.above_id, layer_id=layer_id)
        self.history_changed.emit()

    def _on_Done(self, ev: protocol.Done) -> None:
        job = self.jobs.pop(ev.job_id, None)
        if job is None:
            return
        self._safely(job.canvas.remove_preview)
        took = ev.timings.get("total_s") or (time.monotonic() - job.submitted_at)
        self.notice.emit("info", f"Done: {ev.images} image(s), {ev.steps_run} steps, {took:.1f} s.")

    def _on_Cancelled(self, ev: protocol.Cancelled) -> None:
        job = self.jobs.pop(ev.job_id, None)
        if job is not None:
            self._safely(job.canvas.remove_preview)
            self.notice.emit("info", "Cancelled.")

    def _on_Error(self, ev: protocol.Error) -> None:
        job = self.jobs.pop(ev.job_id, None) if ev.job_id is not None else None
        if job is None and ev.ref is not None:
            job = self.pending.pop(ev.ref, None)
        if job is not None:
            self._safely(job.canvas.remove_preview)
        self.notice.emit("error", ev.message or ev.code)

    def _end_all(self, why: str) -> None:
        for job in list(self.jobs.values()) + list(self.pending.values()):
            self._safely(job.canvas.remove_preview)
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
        if job.total and job.step:
            eta = f", about {job.eta_s:.0f} s left" if job.eta_s is not None else ""
            return f"Step {job.step}/{job.total}{eta}", job.step, job.total
        if job.position:
            return f"Waiting: {job.position} job(s) ahead in the server's queue", 0, 0
        return "Starting…", 0, 0

    # -- history ---------------------------------------------------------------------------------------
    def _ensure_layer(self, entry: HistoryEntry, visible: bool) -> bool:
        if entry.layer_id is not None and self._safely(lambda: entry.canvas.layer_exists(entry.layer_id)):
            return bool(self._safely(lambda: entry.canvas.set_layer_visible(entry.layer_id, visible)))
        # The painter deleted it (or it was discarded): make it again from the stored image.
        layer_id = self._safely(lambda: entry.canvas.add_result_layer(
            entry.name, entry.region, png_to_bgra(entry.png, entry.region.width, entry.region.height),
            entry.above_id, visible))
        entry.layer_id = layer_id
        return layer_id is not None

    def show_result(self, key: int) -> None:
        """Show this result's layer and hide the other variants of its job."""
        entry = self.history.get(key)
        if entry is None:
            return
        for other in self.history.siblings(entry):
            if other.layer_id is not None:
                self._safely(lambda o=other: o.canvas.set_layer_visible(o.layer_id, False))
        self._ensure_layer(entry, True)

    def apply_result(self, key: int) -> None:
        """Keep the result as an ordinary layer: it becomes the painter's and leaves the list."""
        entry = self.history.get(key)
        if entry is None:
            return
        if self._ensure_layer(entry, True):
            self.history.remove(entry)
            self.history_changed.emit()

    def discard_result(self, key: int) -> None:
        """Remove the result's layer (the plugin's own, never applied) and the entry."""
        entry = self.history.get(key)
        if entry is None:
            return
        if entry.layer_id is not None:
            self._safely(lambda: entry.canvas.remove_layer(entry.layer_id))
        self.history.remove(entry)
        self.history_changed.emit()

    def _safely(self, action):
        """Run a canvas action; a closed document or a bad image becomes a notice, not a crash."""
        try:
            return action()
        except (ImageError, JobInputError) as exc:
            self.notice.emit("error", str(exc))
        except RuntimeError as exc:  # e.g. the document was closed while the job ran
            self.notice.emit("error", f"Could not update the document ({exc}); was it closed?")
        return None
