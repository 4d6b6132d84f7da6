"""The client's side of a connection, sans-I/O: what it sends, and the events it makes of what the server says."""

from __future__ import annotations

import json
import struct

import pytest
from tests.shared.protocol_helpers import caps, png, server_says

from shared import protocol as p

def test_capabilities_round_trip():
    c = caps(token_required=True, native_resolution=64, device="cuda")
    message = json.loads(p.dumps(p.welcome(c, server="test")))
    assert p.Capabilities.from_dict(message["capabilities"]) == c


def test_client_session_full_exchange():
    s = p.ClientSession(token="tok")
    assert json.loads(s.hello()) == {"type": "hello", "protocol": 1, "token": "tok",
                                     "client": "krita-plugin"}
    (welcome,) = server_says(s, p.welcome(caps(), "srv"))
    assert isinstance(welcome, p.Welcome) and s.connected and s.capabilities.models == ["tiny-sd"]

    request = p.SubmitRequest(ref=0, width=64, height=48, mode="fan", prompt="a",
                              fan=p.FanSpec(3, 0.1, 0.9), variants=2, seed=11)
    frames = s.submit(request, png(64, 48))
    assert request.ref == 1 and p.decode_frame(frames[1]).ref == 1
    assert s.submit(p.SubmitRequest(ref=0, width=64, height=48, mode="uniform", strength=0.2),
                    png(64, 48))[1][6:10] == struct.pack(">I", 2)  # fresh ref per submit

    region = p.Region(0, 0, 64, 48)
    prev_png, res_png = png(32, 24), png(64, 48)
    events = server_says(
        s, p.accepted(1, 40, 1, 11), p.queue_position(40, 0), p.started(40, 64, 48, region),
        p.progress(40, 2, 8, 0.5, 1.5), p.preview(40, 2, region),
        p.encode_frame(p.FRAME_PREVIEW_PNG, 40, 0, 32, 24, prev_png),
        p.result(40, 0, 11, region, {"run_s": 1.0}),
        p.encode_frame(p.FRAME_RESULT_PNG, 40, 0, 64, 48, res_png),
        p.result(40, 1, 12, region, {"run_s": 1.0}),
        p.encode_frame(p.FRAME_RESULT_PNG, 40, 1, 64, 48, res_png),
        p.done(40, 2, 8, {"run_s": 1.0}),
    )
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Accepted", "QueuePosition", "Started", "Progress", "Preview", "Result",
                     "Result", "Done"]
    assert s.job_by_ref == {}  # forgotten once done
    accepted, _, started, prog, prev, r0, r1, _ = events
    assert accepted.job_id == 40 and accepted.position == 1 and started.region == region
    assert prog.fraction == 0.25 and prog.eta_s == 1.5
    assert prev.png == prev_png and (prev.width, prev.height) == (32, 24) and prev.step == 2
    assert (r0.index, r0.seed, r1.index, r1.seed) == (0, 11, 1, 12)
    assert r0.png == res_png and r0.timings == {"run_s": 1.0}


def test_client_session_cancel_and_errors():
    s = p.ClientSession()
    server_says(s, p.welcome(caps()))
    assert json.loads(s.cancel(ref=3)) == {"type": "cancel", "ref": 3}
    server_says(s, p.accepted(3, 77, 0, 1))
    assert json.loads(s.cancel(ref=3)) == {"type": "cancel", "job_id": 77}
    (c,) = server_says(s, p.cancelled(77, "cancelled by the client"))
    assert isinstance(c, p.Cancelled) and c.job_id == 77
    assert s.job_by_ref == {}  # an ended job is forgotten: its ref no longer names it
    assert json.loads(s.cancel(ref=3)) == {"type": "cancel", "ref": 3}
    server_says(s, p.accepted(4, 78, 0, 1))
    (e,) = server_says(s, p.error(p.E_OUT_OF_MEMORY, "too big", job_id=78))
    assert (e.code, e.message, e.job_id) == (p.E_OUT_OF_MEMORY, "too big", 78)
    assert s.job_by_ref == {}
    (e,) = s.receive("{garbage")
    assert isinstance(e, p.Error) and e.code == "bad_server_message"
    (e,) = s.receive(p.encode_frame(p.FRAME_RESULT_PNG, 5, 0, 8, 8, png(8, 8)))
    assert isinstance(e, p.Error) and "announcement" in e.message
    assert server_says(s, {"type": "from_the_future", "x": 1}) == []  # ignored, not fatal
    (e,) = server_says(s, {"type": "welcome", "protocol": 2, "capabilities": {}})
    assert e.code == p.E_BAD_VERSION


def test_client_session_checks_limits_before_upload():
    s = p.ClientSession()
    server_says(s, p.welcome(caps(max_pixels=32 * 32)))
    with pytest.raises(p.ProtocolError) as info:
        s.submit(p.SubmitRequest(ref=0, width=64, height=48, mode="uniform", strength=0.5),
                 png(64, 48))
    assert info.value.code == p.E_TOO_LARGE


def test_models_messages():
    s = p.ClientSession()
    server_says(s, p.welcome(caps()))
    assert json.loads(s.load_model("tiny-sdxl")) == {"type": "load_model", "model": "tiny-sdxl"}
    assert json.loads(s.list_models()) == {"type": "list_models"}
    (m,) = server_says(s, p.models(["a", "b"], "a"))
    assert m.models == ["a", "b"] and m.current_model == "a"
    (m,) = server_says(s, p.model_loaded("b", "sdxl", 1024))
    assert m.family == "sdxl" and s.capabilities.current_model == "b"


def test_describe_close():
    assert "size limit" in p.describe_close(1009)
    assert "shutting down" in p.describe_close(1001)
    assert "token" in p.describe_close(1008, "Wrong or missing access token")
