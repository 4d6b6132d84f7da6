"""Previews and results on the canvas: the controller's half that writes layers.

One job, one layer of the plugin's own: the preview is drawn on it while the job runs (only the
newest preview, a few times a second at most), the first result replaces the preview, and the
other variants wait in the history until the painter shows one. Pixels where the job's map is 0
are transparent (they equal the picture below), so the layer shows exactly what changed. Every
canvas call goes through `_safely`: a closed document ends its jobs quietly, never a Script error.
"""

from __future__ import annotations

import time
from typing import Any

from shared import protocol
from shared.protocol import Region

from .history import HistoryEntry, JobLayer
from .images import ImageError, clear_where_kept, png_to_bgra, thumbnail
from .jobs import PREVIEW_LAYER_NAME, DocumentGone, JobInputError, crop_gray, result_layer_name
from .qt import QTimer

PREVIEW_INTERVAL_S = 0.25  # previews drawn at most this often; the ones in between are skipped
# ...and at most this share of the UI thread's time: drawing one costs Krita a recomposition of the
# whole image (the only redraw its API offers without an undo step), long on a big canvas, so the
# interval stretches to PREVIEW_BUSY_FACTOR times the last drawing's duration.
PREVIEW_BUSY_FACTOR = 4.0
THUMBNAIL_PX = 64


def event_pixels(ev: protocol.Preview | protocol.Result) -> bytes:
    """The event's picture as BGRA at its region's size: decoded already by the client's network
    thread (`ev.bgra`), or here when that failed or the event came from elsewhere (tests)."""
    bgra = getattr(ev, "bgra", None)
    if bgra is not None:
        return bgra
    return png_to_bgra(ev.png, ev.region.width, ev.region.height)


def on_canvas(layer: JobLayer, region: Region) -> Region:
    """A region of the job's crop (what the server saw) in canvas coordinates."""
    return Region(region.x + layer.crop.x, region.y + layer.crop.y, region.width, region.height)


def shown_pixels(layer: JobLayer, region: Region, bgra: bytes) -> bytes:
    """The pixels as the layer shows them: transparent where the job's map keeps the picture."""
    if layer.change_map is None:
        return bgra
    return clear_where_kept(bgra, region.width, region.height, crop_gray(layer.change_map, layer.crop.width, region))


class ResultsMixin:
    """Mixed into the Controller (which has the signals, `jobs`, `history` and `client`)."""

    def _init_results(self) -> None:
        self._preview_timer = QTimer(self)
        self._preview_timer.setSingleShot(True)
        # Through the controller's inbox: events that arrive while a layer is being made wait their turn.
        self._preview_timer.timeout.connect(lambda: self._one_at_a_time(self._draw_previews))
        self._last_preview_draw = 0.0
        self._preview_interval_s = PREVIEW_INTERVAL_S

    # -- previews ----------------------------------------------------------------------------------
    def _on_Preview(self, ev: protocol.Preview) -> None:
        job = self.jobs.get(ev.job_id)
        if job is None or job.results:  # a late preview must not cover the results
            return
        job.pending_preview = ev
        if not self._preview_timer.isActive():
            wait = self._preview_interval_s - (time.monotonic() - self._last_preview_draw)
            self._preview_timer.start(max(0, int(wait * 1000)))

    def _draw_previews(self) -> None:
        started = self._last_preview_draw = time.monotonic()
        try:
            self._draw_newest_previews()
        finally:
            took = time.monotonic() - started
            self._preview_interval_s = max(PREVIEW_INTERVAL_S, PREVIEW_BUSY_FACTOR * took)

    def _draw_newest_previews(self) -> None:
        for job in list(self.jobs.values()):
            ev, job.pending_preview = job.pending_preview, None
            if ev is None or job.results:
                continue
            region = on_canvas(job.layer, ev.region)
            pixels = self._safely(lambda e=ev, j=job: shown_pixels(j.layer, e.region, event_pixels(e)), job.canvas)
            if pixels is None:
                continue
            if job.live:
                if self.live.draw(job, region, pixels) and job.outcome is not None:
                    job.outcome.previews += 1
                continue
            job.preview_region = region
            if job.preview_id is not None and self._safely(
                    lambda j=job, r=region, p=pixels: j.canvas.write_layer(j.preview_id, r, p), job.canvas):
                drawn = True
            else:
                job.preview_id = self._safely(lambda j=job, r=region, p=pixels: j.canvas.add_layer(
                    PREVIEW_LAYER_NAME, r, p, j.layer.above_id, j.layer.below_id), job.canvas)
                drawn = job.preview_id is not None
            if drawn and job.outcome is not None:
                job.outcome.previews += 1

    def _remove_preview(self, job) -> None:
        job.pending_preview = None
        if job.preview_id is not None:
            preview_id, job.preview_id = job.preview_id, None
            self._safely(lambda: job.canvas.remove_layer(preview_id), job.canvas)

    # -- results -----------------------------------------------------------------------------------
    def _on_Result(self, ev: protocol.Result) -> None:
        job = self.jobs.get(ev.job_id)
        if job is None:
            return
        region = on_canvas(job.layer, ev.region)
        if job.live:
            bgra = self._safely(lambda: shown_pixels(job.layer, ev.region, event_pixels(ev)), job.canvas)
            if bgra is not None:
                self.live.on_result(job, ev, region, bgra)
            return
        if job.results == 0:
            if job.preview_id is not None and job.preview_region in (None, region) and job.layer.layer_id is None:
                # The preview's layer becomes the result's: rewritten in place, no layer removed or
                # added (each of those costs Krita a layer-box refresh, long on a big canvas).
                job.layer.layer_id, job.preview_id, job.pending_preview = job.preview_id, None, None
            else:
                self._remove_preview(job)
        job.results += 1
        name = result_layer_name(job.prompt, ev.seed, job.label)
        bgra = self._safely(lambda: event_pixels(ev), job.canvas)
        if bgra is None:
            return
        entry = self.history.add(job_id=ev.job_id, index=ev.index, seed=ev.seed, name=name, region=region,
                                 png=ev.png, job_layer=job.layer,
                                 thumbnail=thumbnail(bgra, ev.region.width, ev.region.height, THUMBNAIL_PX))
        if job.layer.shown_key is None and not self._show(entry, bgra):  # the first variant shows
            self.history.remove(entry)
            return
        if job.outcome is not None:
            if job.layer.layer_id not in job.outcome.layer_ids:
                job.outcome.layer_ids.append(job.layer.layer_id)
                job.outcome.layer_names.append(name)
            job.outcome.history_keys.append(entry.key)
        self.history_changed.emit()

    def _show(self, entry: HistoryEntry, bgra: bytes | None = None) -> bool:
        """Put this variant on its job's layer (made again if the painter deleted it)."""
        layer = entry.job_layer
        local = Region(entry.region.x - layer.crop.x, entry.region.y - layer.crop.y,
                       entry.region.width, entry.region.height)

        def write() -> bool:
            pixels = bgra if bgra is not None else png_to_bgra(entry.png, local.width, local.height)
            pixels = shown_pixels(layer, local, pixels)
            if layer.layer_id is not None and layer.canvas.layer_exists(layer.layer_id):
                if layer.shown_key != entry.key:
                    layer.canvas.write_layer(layer.layer_id, entry.region, pixels)
                    layer.canvas.rename_layer(layer.layer_id, entry.name)
                layer.canvas.set_layer_visible(layer.layer_id, True)
            else:
                layer.layer_id = layer.canvas.add_layer(entry.name, entry.region, pixels, layer.above_id,
                                                        layer.below_id)
            layer.shown_key = entry.key
            return True

        return bool(self._safely(write, layer.canvas))

    def show_result(self, key: int) -> None:
        """Show this variant on its job's layer."""
        entry = self.history.get(key)
        if entry is not None:
            self._show(entry)

    def apply_result(self, key: int) -> None:
        """Keep this variant as an ordinary layer: it becomes the painter's, its job leaves the list."""
        entry = self.history.get(key)
        if entry is None or not self._show(entry):
            return
        for other in [entry, *self.history.siblings(entry)]:
            self.history.remove(other)
        entry.job_layer.layer_id = None  # the painter's now: never touched again
        self.history_changed.emit()

    def discard_result(self, key: int) -> None:
        """Drop a variant; the job's layer goes with its last variant (it is the plugin's own)."""
        entry = self.history.get(key)
        if entry is None:
            return
        self.history.remove(entry)
        siblings = self.history.siblings(entry)
        layer = entry.job_layer
        if layer.shown_key == entry.key:
            if siblings:
                self._show(siblings[0])
            elif layer.layer_id is not None:
                layer_id, layer.layer_id = layer.layer_id, None
                self._safely(lambda: layer.canvas.remove_layer(layer_id), layer.canvas)
        self.history_changed.emit()

    # -- closed documents and other canvas failures ------------------------------------------------------
    def _safely(self, action, canvas: Any = None):
        """Run a canvas action; a closed document ends its jobs quietly, a bad image is a notice."""
        try:
            return action()
        except DocumentGone:
            self._document_closed(canvas)
        except (ImageError, JobInputError) as exc:
            self.notice.emit("error", str(exc))
        except RuntimeError as exc:  # Krita refused something: say it, never a Script error dialog
            self.notice.emit("error", f"Krita could not update the document ({exc}).")
        return None

    def _document_closed(self, canvas: Any) -> None:
        """Cancel the closed document's jobs (without a word from the server afterwards) and drop
        its results from the list."""
        if canvas is None:
            return
        stopped = [job for job in list(self.jobs.values()) + list(self.pending.values()) if job.canvas is canvas]
        for job in stopped:
            job.cancel_requested = True
            if job.job_id is not None:
                self.jobs.pop(job.job_id, None)
                self.client.cancel(job_id=job.job_id)
            else:
                self.pending.pop(job.ref, None)
                self.client.cancel(ref=job.ref)
            self._finish(job, "cancelled", "The document was closed.")
        if self.history.drop_canvas(canvas):
            self.history_changed.emit()
        if stopped:
            self.notice.emit("info", "The document was closed; its job was stopped.")
        self.changed.emit()

    def check_documents(self) -> None:
        """Called when Krita's active view changes: end the jobs of documents closed meanwhile."""
        open_keys = getattr(self.host, "open_keys", None)
        if open_keys is None:
            return
        try:
            keys = open_keys()
        except RuntimeError:
            return
        canvases = {id(job.canvas): job.canvas for job in list(self.jobs.values()) + list(self.pending.values())}
        canvases.update({id(e.canvas): e.canvas for e in self.history.entries})
        for canvas in canvases.values():
            if getattr(canvas, "key", None) not in keys:
                self._document_closed(canvas)
