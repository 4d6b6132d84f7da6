"""Events arriving while the controller is still handling one (Krita's GUI runs the Qt event loop
inside layer operations: `waitForDone`) are handled after it, in order, never in the middle."""

from __future__ import annotations

import numpy as np
from plugin_fakes import FakeCanvas
from test_plugin_controller import accept, make, result, rgba_png, settle

from shared import protocol
from shared.protocol import Region

W, H = 32, 24


class ReentrantCanvas(FakeCanvas):
    """Like Krita's GUI: every layer operation lets queued events through before it is done."""

    def __init__(self, picture: np.ndarray) -> None:
        super().__init__(picture)
        self.queued: list[protocol.Event] = []
        self.deliver = None  # the controller's event slot, set by the test

    def _let_events_through(self) -> None:
        while self.queued:
            self.deliver(self.queued.pop(0))

    def add_layer(self, *args, **kwargs):
        self._let_events_through()  # before the new layer has its id, like waitForDone inside addChildNode
        return super().add_layer(*args, **kwargs)

    def write_layer(self, *args):
        self._let_events_through()
        return super().write_layer(*args)

    def remove_layer(self, layer_id):
        self._let_events_through()
        return super().remove_layer(layer_id)


def test_events_during_a_layer_operation_wait_their_turn():
    canvas = ReentrantCanvas(np.zeros((H, W, 4), np.uint8))
    c, client, _, notices = make(canvas, mode="uniform")
    canvas.deliver = c._on_event
    assert c.generate(), notices
    accept(client, job_id=5, seed=11)
    outcome = next(iter(c.outcomes.values()))
    region = Region(0, 0, W, H)
    small = rgba_png(np.full((6, 8, 4), (9, 9, 9, 255), np.uint8))
    # While the first preview's layer is being made, the second preview, the result and `done`
    # arrive (as they would from the network while Krita waits for its image).
    canvas.queued = [protocol.Preview(5, 4, region, small, 8, 6),
                     result(5, 0, 11, region, np.full((H, W, 4), 200, np.uint8)),
                     protocol.Done(5, 1, 9, {"total_s": 1.0})]
    client.feed(protocol.Preview(5, 2, region, small, 8, 6))
    settle(c)  # the preview is drawn from a timer, through the same queue

    plugin_layers = [la.name for la in canvas.layers_ if la.owner == "plugin"]
    assert plugin_layers == [outcome.layer_names[0]]  # the result, and no preview left behind
    assert outcome.state == "done" and outcome.previews == 1 and len(outcome.layer_ids) == 1
    assert len(c.history.entries) == 1


def test_a_connection_lost_during_a_layer_operation_ends_the_job_after_it():
    canvas = ReentrantCanvas(np.zeros((H, W, 4), np.uint8))
    c, client, _, notices = make(canvas, mode="uniform")
    assert c.generate(), notices
    accept(client, job_id=6, seed=11)
    outcome = next(iter(c.outcomes.values()))
    layers_when_finished = []
    c.finished.connect(lambda o: layers_when_finished.append(list(o.layer_ids)))
    region = Region(0, 0, W, H)
    # The connection drops while the result layer is being made.
    canvas.deliver = lambda _: client.state_changed.emit("disconnected", "Cannot reach the server")
    canvas.queued = ["lost"]
    client.feed(result(6, 0, 11, region, np.full((H, W, 4), 200, np.uint8)))

    # The result that was being written is kept and recorded; the job then ends as lost.
    assert [la.name for la in canvas.layers_ if la.owner == "plugin"] == outcome.layer_names
    assert len(outcome.layer_ids) == 1 and len(c.history.entries) == 1
    assert outcome.state == "lost" and c.connection_state == "disconnected"
    # Whoever waits for the job's end (scripts, run_job) sees the result it already has.
    assert layers_when_finished == [outcome.layer_ids]
