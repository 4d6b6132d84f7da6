"""Live mode: the picture follows the change map while the painter paints (issue 16).

While Live is on, a timer looks at the Change Map layer POLL_MS apart (change_watch: a small
thumbnail, never the full-resolution layer); once it changed and then held still for the
debounce (a setting, 250 ms), one job is sent with `replace`, so the server drops the previous
live job still queued or running (an older server without the feature: the plugin cancels it).
Every live job draws its previews and its result on ONE layer of the plugin's own, LIVE_LAYER_NAME,
rewritten in place. Keep copies the current result onto an ordinary result layer (listed in the
history like any job's) and Live goes on; turning Live off removes the Live layer. Nothing here
touches a painter's layer: the map is only read, the Live layer is the plugin's.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

from shared import protocol
from shared.protocol import Region

from .change_watch import LayerWatcher
from .client import NotConnected
from .history import JobLayer
from .images import ImageError, thumbnail
from .jobs import DocumentGone, JobInputError, find_map_layer, result_layer_name
from .qt import QObject, QTimer

LIVE_LAYER_NAME = "Differential Diffusion live"
POLL_MS = 100  # how often the map is looked at
LIVE_STEPS = (4, 8)  # the docker proposes this many steps in Live mode (few-step schedulers)


@dataclass
class LiveResult:
    """The live job's newest result, as Keep needs it."""

    job_id: int
    seed: int
    region: Region  # on the canvas
    png: bytes
    bgra: bytes  # as the Live layer shows it (transparent where the map keeps the picture)
    layer: JobLayer
    name: str


class LiveMode(QObject):
    """The controller's Live half; `controller.live`. All of it runs on the UI thread."""

    def __init__(self, controller: Any) -> None:
        QObject.__init__(self, controller)
        self.controller = controller
        self.enabled = False
        self.canvas: Any = None
        self.layer_id: str | None = None  # the Live layer, once something was drawn
        self.shown_region: Region | None = None  # where the Live layer holds pixels
        self.latest: LiveResult | None = None
        self.seed: int | None = None
        self.jobs_sent = 0
        self.watcher = LayerWatcher()
        self._poll = QTimer(self)
        self._poll.timeout.connect(self.tick)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.timeout.connect(self.send)

    # -- the toggle --------------------------------------------------------------------------------
    def set_enabled(self, on: bool) -> bool:
        """Turn Live on (a first job at once) or off (its jobs cancelled, the Live layer removed).
        False, with a notice, when it could not start."""
        c = self.controller
        if on == self.enabled:
            return True
        if not on:
            self._stop()
            return True
        canvas = c.host.active_canvas()
        if canvas is None:
            c.notice.emit("error", "Open a document first.")
            return False
        self.enabled, self.canvas, self.latest = True, canvas, None
        settings = c.settings.validated()
        self.seed = settings.seed if not settings.random_seed else random.randint(0, protocol.MAX_SEED)
        self.watcher.reset()
        self._look()
        self._poll.start(POLL_MS)
        self.send()
        c.changed.emit()
        return True

    def _stop(self) -> None:
        c = self.controller
        self.enabled = False
        self._poll.stop()
        self._debounce.stop()
        for job in self._live_jobs():
            job.cancel_requested = True
            if job.job_id is not None:
                c.client.cancel(job_id=job.job_id)
            else:
                c.client.cancel(ref=job.ref)
        if self.layer_id is not None and self.canvas is not None:
            layer_id, canvas = self.layer_id, self.canvas
            c._safely(lambda: canvas.remove_layer(layer_id), canvas)
        self.layer_id = self.shown_region = self.latest = None
        self.canvas = None
        c.changed.emit()

    # -- noticing strokes ----------------------------------------------------------------------------
    def _map_id(self) -> str | None:
        layer = find_map_layer(self.canvas.layers(), self.controller.settings.map_layer,
                               {self.layer_id} if self.layer_id else set())
        return layer.id if layer is not None else None

    def _look(self) -> bool | None:
        """Did the map change since the last look? None: the document was closed (Live stops)."""
        canvas = self.canvas
        try:
            return self.watcher.changed(canvas, self._map_id())
        except DocumentGone:
            self._stop()
            return None
        except (RuntimeError, JobInputError):
            return False  # a layer removed under the look: the next one sees what is there

    def tick(self) -> None:
        """One look at the map; a change (re)starts the debounce: the job goes once it is still."""
        if not self.enabled:
            return
        if self._look():
            self._debounce.start(int(self.controller.settings.validated().live_debounce_ms))

    # -- sending -------------------------------------------------------------------------------------
    def live_settings(self):
        """The painter's settings as a live job uses them: the change map, one variant, the live
        steps and scheduler, the seed fixed while Live is on (a stroke changes only what it touches)."""
        s = self.controller.settings.validated()
        return dataclasses.replace(s, mode="change_map", variants=1, steps=s.live_steps,
                                   scheduler=s.live_scheduler or s.scheduler, random_seed=False,
                                   seed=self.seed if self.seed is not None else s.seed)

    def send(self) -> bool:
        """Send one live job for the map as it is now; False when there was nothing to send."""
        c = self.controller
        if not self.enabled or c.connection_state != "connected" or c.host.active_canvas() is not self.canvas:
            return False
        try:
            job = c.prepare_job(self.live_settings())
        except JobInputError:
            return False  # no map, or a black one: nothing to follow yet (the next stroke is)
        except (ImageError, protocol.ProtocolError) as exc:
            c.notice.emit("error", getattr(exc, "message", str(exc)))
            return False
        caps = c.capabilities
        job.request.replace = True
        if caps is None or not caps.supports(protocol.FEATURE_REPLACE):
            for old in self._live_jobs():  # an older server: cancel the previous live job ourselves
                old.cancel_requested = True
                if old.job_id is not None:
                    c.client.cancel(job_id=old.job_id)
                else:
                    c.client.cancel(ref=old.ref)
        try:
            c.submit_job(job, live=True)
        except NotConnected:
            return False
        except protocol.ProtocolError as exc:
            c.notice.emit("error", exc.message)
            return False
        self.jobs_sent += 1
        return True

    def _live_jobs(self) -> list:
        c = self.controller
        return [j for j in [*c.jobs.values(), *c.pending.values()] if getattr(j, "live", False)]

    def hidden_layers(self, canvas: Any) -> tuple:
        """The Live layer, left out of the picture a job reads (a job never edits the last one's result)."""
        return (self.layer_id,) if self.layer_id is not None and canvas is self.canvas else ()

    # -- drawing on the Live layer -------------------------------------------------------------------
    def draw(self, job: Any, region: Region, pixels: bytes) -> bool:
        """Put a live job's preview or result on the Live layer (made again if it was deleted);
        what the last job drew elsewhere is cleared. Nothing once Live is off (a late preview)."""
        canvas = job.canvas
        if not self.enabled or canvas is not self.canvas:
            return False

        def write() -> bool:
            old = self.shown_region
            if self.layer_id is not None and canvas.layer_exists(self.layer_id):
                if old is not None and old != region:
                    canvas.write_layer(self.layer_id, old, bytes(old.width * old.height * 4))
                canvas.write_layer(self.layer_id, region, pixels)
            else:
                self.layer_id = canvas.add_layer(LIVE_LAYER_NAME, region, pixels, job.layer.above_id,
                                                 job.layer.below_id)
            self.shown_region = region
            return True

        return bool(self.controller._safely(write, canvas))

    def on_result(self, job: Any, ev: protocol.Result, region: Region, bgra: bytes) -> None:
        """A live job's result: onto the Live layer, remembered for Keep (not listed in the history)."""
        job.results += 1
        job.pending_preview = None
        if not self.enabled or job.canvas is not self.canvas or not self.draw(job, region, bgra):
            return
        self.latest = LiveResult(ev.job_id, ev.seed, region, ev.png, bgra, job.layer,
                                 result_layer_name(job.prompt, ev.seed, "live"))
        if job.outcome is not None:
            job.outcome.layer_ids = [self.layer_id]
            job.outcome.layer_names = [LIVE_LAYER_NAME]

    # -- keeping -------------------------------------------------------------------------------------
    def keep(self) -> str | None:
        """The current live result as an ordinary result layer, in the history; Live goes on.
        Returns the new layer's id (None when there is no result yet)."""
        c, got = self.controller, self.latest
        if got is None:
            c.notice.emit("info", "No live result to keep yet: paint on the change map.")
            return None
        layer = dataclasses.replace(got.layer, layer_id=None, shown_key=None)
        entry = c.history.add(job_id=got.job_id, index=0, seed=got.seed, name=got.name, region=got.region,
                              png=got.png, job_layer=layer,
                              thumbnail=c._safely(lambda: thumbnail(got.bgra, got.region.width,
                                                                     got.region.height, 64), layer.canvas))
        if not c._show(entry):
            c.history.remove(entry)
            return None
        c.history_changed.emit()
        return layer.layer_id
