"""Each message's encoding and decoding, which live side by side: what one side builds, the other
reads back as the same thing (through real frames, as over the socket)."""

from __future__ import annotations

import json

import pytest
from tests.shared.protocol_helpers import caps, png

from shared import protocol as p

REGION = p.Region(8, 16, 32, 24)
OPTION = p.OptionSpec("refiner_split", "float", 0.8, min=0.0, max=1.0, min_exclusive=True,
                      label="Refiner split", help="Share of the steps the base model runs.")
INFO = p.ModelInfo("sdxl", ["Euler"], [OPTION])

# One of each server -> client message, with values that survive the 1 ms rounding.
EVENTS = [
    p.Welcome(caps(model_info={"tiny-sd": INFO}), "srv"),
    p.Accepted(ref=4, job_id=40, position=2, seed=11),
    p.QueuePosition(job_id=40, position=1),
    p.Started(40, 64, 48, REGION),
    p.Progress(40, 2, 8, 0.5, 1.5),
    p.Progress(40, 0, 8, 0.0, None),
    p.Preview(40, 2, REGION, png(16, 12), 16, 12),
    p.Result(40, 1, 12, REGION, png(32, 24), 32, 24, {"queued_s": 0.25, "run_s": 1.5}),
    p.Done(40, 2, 8, {"run_s": 1.5, "total_s": 2.0}),
    p.Cancelled(40, "cancelled by the client"),
    p.Error(p.E_OUT_OF_MEMORY, "too big", job_id=40),
    p.Error(p.E_QUEUE_FULL, "wait", ref=4),
    p.Models(["tiny-sd", "tiny-sdxl"], "tiny-sdxl", {"tiny-sdxl": INFO}),
    p.ModelLoaded("tiny-sdxl", "sdxl", 1024, INFO),
    p.ModelLoaded("tiny-sd", "sd", 512),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: f"{type(e).__name__}")
def test_what_the_server_sends_the_client_reads_back_unchanged(event):
    session = p.ClientSession()
    if not isinstance(event, p.Welcome):
        session.receive(p.Welcome(caps()).frames()[0])
    frames = event.frames()
    got = [e for frame in frames for e in session.receive(frame)]
    assert got == [event]
    assert json.loads(frames[0])["type"] == event.TYPE == type(event).TYPE


def test_pictures_travel_as_an_announcement_then_their_binary_frame():
    preview, result = EVENTS[6], EVENTS[7]
    text, frame = preview.frames()
    assert json.loads(text) == p.preview(40, 2, REGION)  # the dict builder says the same
    decoded = p.decode_frame(frame)
    assert (decoded.kind, decoded.ref, decoded.index) == (p.FRAME_PREVIEW_PNG, 40, 0)
    text, frame = result.frames()
    assert json.loads(text) == p.result(40, 1, 12, REGION, result.timings)
    decoded = p.decode_frame(frame)
    assert (decoded.kind, decoded.ref, decoded.index) == (p.FRAME_RESULT_PNG, 40, 1)
    assert (decoded.width, decoded.height, decoded.payload) == (32, 24, result.png)


def test_timings_and_times_go_out_rounded_to_the_millisecond():
    progress = json.loads(p.Progress(1, 1, 2, 0.12345, 2.00049).frames()[0])
    assert (progress["elapsed_s"], progress["eta_s"]) == (0.123, 2.0)
    done = json.loads(p.Done(1, 1, 2, {"run_s": 1.23456}).frames()[0])
    assert done["timings"] == {"run_s": 1.235}


def test_the_dict_builders_are_the_dataclasses_encodings():
    assert p.started(40, 64, 48, REGION) == EVENTS[3].to_dict()
    assert p.error(p.E_OUT_OF_MEMORY, "too big", job_id=40) == EVENTS[10].to_dict()
    assert p.error_from(p.ProtocolError(p.E_QUEUE_FULL, "wait", ref=4)) == EVENTS[11].to_dict()
    assert p.models(["a"], "a") == {"type": "models", "models": ["a"], "current_model": "a"}
    assert p.model_loaded("tiny-sd", "sd", 512) == EVENTS[14].to_dict()
    assert p.cancel(ref=3) == {"type": "cancel", "ref": 3}
    with pytest.raises(ValueError, match="exactly one"):
        p.cancel()


def test_client_messages_read_back_on_the_server_side():
    assert p.Cancel.from_dict(p.cancel(job_id=7)) == p.Cancel(job_id=7)
    assert p.Cancel.from_dict(p.cancel(ref=9)) == p.Cancel(ref=9)
    assert p.LoadModel.from_dict(p.load_model("tiny-sdxl")) == p.LoadModel("tiny-sdxl")
    with pytest.raises(p.ProtocolError, match="missing field 'model'"):
        p.LoadModel.from_dict({"type": "load_model"})
    with pytest.raises(p.ProtocolError, match="'job_id' must be an integer"):
        p.Cancel.from_dict({"type": "cancel", "job_id": "7"})
    assert p.decode_event({"type": "from_the_future"}) is None
