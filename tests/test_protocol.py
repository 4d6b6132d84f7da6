"""The wire protocol, sans-I/O: frames, messages, validation and the client session."""

from __future__ import annotations

import ast
import io
import json
import pathlib
import struct

import pytest
from PIL import Image

from shared import protocol as p

ROOT = pathlib.Path(__file__).resolve().parents[1]


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), (10, 20, 30) if mode == "RGB" else 0).save(buf, "PNG")
    return buf.getvalue()


def caps(**kw) -> p.Capabilities:
    base = dict(models=["tiny-sd"], current_model="tiny-sd", schedulers=["DDIM", "Euler"],
                families=["sd"], max_pixels=256 * 256)
    base.update(kw)
    return p.Capabilities(**base)


def submit_msg(**kw) -> dict:
    message = {"type": "submit", "ref": 1, "width": 64, "height": 48, "mode": "change_map",
               "prompt": "a cat", "steps": 10, "guidance": 5, "seed": 3}
    message.update(kw)
    return message


def raises(code: str, fn, *args, **kwargs) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, info.value.message
    assert info.value.message  # every error has words for the painter
    return info.value


# --- purity -----------------------------------------------------------------------------------


def test_protocol_imports_only_the_standard_library():
    # Krita's embedded Python has no numpy/PIL; the plugin packages shared/ as is.
    import sys

    tree = ast.parse((ROOT / "shared" / "protocol.py").read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add((node.module or "").split(".")[0])
    assert modules <= set(sys.stdlib_module_names), modules - set(sys.stdlib_module_names)
    assert not modules & {"socket", "asyncio", "websockets", "threading"}


# --- binary frames ----------------------------------------------------------------------------


def test_frame_round_trip_png_and_gray8():
    data = png(64, 48)
    raw = p.encode_frame(p.FRAME_IMAGE_PNG, 7, 0, 64, 48, data)
    assert raw[:4] == b"DDIF" and len(raw) == p.FRAME_HEADER.size + len(data) == 20 + len(data)
    frame = p.decode_frame(raw)
    assert (frame.kind, frame.ref, frame.index, frame.width, frame.height) == (1, 7, 0, 64, 48)
    assert frame.payload == data

    gray = bytes(range(256)) * 12  # 64x48
    frame = p.decode_frame(p.encode_frame(p.FRAME_MAP_GRAY8, 2**32 - 1, 5, 64, 48, gray))
    assert frame.payload == gray and frame.ref == 2**32 - 1 and frame.index == 5


def test_png_size_reads_ihdr():
    assert p.png_size(png(33, 17, "RGBA")) == (33, 17)
    raises(p.E_BAD_FRAME, p.png_size, b"GIF89a" + bytes(30))


@pytest.mark.parametrize("mutate, code", [
    (lambda raw: raw[:10], p.E_BAD_FRAME),  # shorter than the header
    (lambda raw: b"XXXX" + raw[4:], p.E_BAD_FRAME),  # wrong magic
    (lambda raw: raw[:4] + bytes([9]) + raw[5:], p.E_BAD_VERSION),
    (lambda raw: raw[:5] + bytes([77]) + raw[6:], p.E_BAD_FRAME),  # unknown kind
    (lambda raw: raw[:-1], p.E_BAD_FRAME),  # gray8 payload one byte short
    (lambda raw: raw[:12] + struct.pack(">II", 0, 48) + raw[20:], p.E_BAD_FRAME),  # zero width
])
def test_bad_frames_are_rejected(mutate, code):
    raw = p.encode_frame(p.FRAME_MAP_GRAY8, 1, 0, 64, 48, bytes(64 * 48))
    raises(code, p.decode_frame, mutate(raw))


def test_png_frame_must_match_its_declared_size():
    raw = p.FRAME_HEADER.pack(b"DDIF", 1, p.FRAME_IMAGE_PNG, 1, 0, 64, 64) + png(64, 48)
    err = raises(p.E_BAD_FRAME, p.decode_frame, raw)
    assert "64x48" in err.message and "64x64" in err.message
    raw = p.FRAME_HEADER.pack(b"DDIF", 1, p.FRAME_IMAGE_PNG, 1, 0, 8, 8) + b"not a png at all" * 3
    raises(p.E_BAD_FRAME, p.decode_frame, raw)


# --- JSON -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, code", [
    ("{not json", p.E_BAD_JSON),
    ('{"type": "submit", "guidance": NaN}', p.E_BAD_JSON),
    ('{"type": "submit", "guidance": Infinity}', p.E_BAD_JSON),
    ("[1, 2]", p.E_BAD_MESSAGE),
    ('{"kind": "submit"}', p.E_BAD_MESSAGE),
    ('{"type": 5}', p.E_BAD_MESSAGE),
    ("[" * 100_000 + "]" * 100_000, p.E_BAD_JSON),
    ('{"type": "x", "pad": "' + "a" * p.MAX_TEXT_BYTES + '"}', p.E_TOO_LARGE),
])
def test_loads_rejects(text, code):
    raises(code, p.loads, text)


def test_dumps_refuses_nan():
    with pytest.raises(ValueError, match="not JSON compliant"):
        p.dumps({"type": "progress", "eta_s": float("nan")})
    with pytest.raises(ValueError, match="needs a 'type'"):
        p.dumps({"eta_s": 1.0})
    assert json.loads(p.dumps({"type": "progress", "eta_s": 1.5})) == {"type": "progress", "eta_s": 1.5}


# --- handshake --------------------------------------------------------------------------------


def test_handshake_ok_and_errors():
    p.check_hello(p.hello(), token=None)
    p.check_hello(p.hello(token="s3cret"), token="s3cret")
    raises(p.E_HANDSHAKE_REQUIRED, p.check_hello, {"type": "submit"}, None)
    err = raises(p.E_BAD_VERSION, p.check_hello, {"type": "hello", "protocol": 99}, None)
    assert "99" in err.message and str(p.PROTOCOL_VERSION) in err.message
    raises(p.E_BAD_VERSION, p.check_hello, {"type": "hello"}, None)
    raises(p.E_BAD_VERSION, p.check_hello, {"type": "hello", "protocol": True}, None)
    raises(p.E_UNAUTHORIZED, p.check_hello, p.hello(token="wrong"), "s3cret")
    raises(p.E_UNAUTHORIZED, p.check_hello, p.hello(), "s3cret")
    raises(p.E_UNAUTHORIZED, p.check_hello, {"type": "hello", "protocol": 1, "token": 5}, "s3")
    # The whole token, exactly: no prefix, no extension, no other case, not empty.
    for guess in ("s3cre", "s3cret!", "S3CRET", "", "s3cret "):
        raises(p.E_UNAUTHORIZED, p.check_hello, p.hello(token=guess), "s3cret")


def test_capabilities_round_trip():
    c = caps(token_required=True, native_resolution=64, device="cuda")
    message = json.loads(p.dumps(p.welcome(c, server="test")))
    assert p.Capabilities.from_dict(message["capabilities"]) == c


# --- submit validation ------------------------------------------------------------------------


def test_parse_submit_defaults_and_round_trip():
    r = p.parse_submit(submit_msg(), caps())
    assert (r.ref, r.width, r.height, r.mode, r.steps, r.guidance, r.seed) == (
        1, 64, 48, "change_map", 10, 5.0, 3)
    assert r.variants == 1 and r.preview_every is None and r.scheduler is None and r.needs_map
    full = p.SubmitRequest(ref=9, width=64, height=48, mode="fan", prompt="x", steps=4,
                           guidance=1.5, seed=0, scheduler="Euler", model="tiny-sd", variants=3,
                           preview_every=2, region=p.Region(8, 8, 32, 16),
                           fan=p.FanSpec(4, 0.2, 0.8))
    again = p.parse_submit(json.loads(p.dumps(full.to_message())), caps())
    assert again == full
    soft = p.SubmitRequest(ref=2, width=64, height=48, mode="soft_inpaint",
                           soft_inpaint=p.SoftInpaint(softness_px=12.5, grow_px=3))
    assert p.parse_submit(json.loads(p.dumps(soft.to_message())), caps()) == soft
    uni = p.SubmitRequest(ref=3, width=64, height=48, mode="uniform", strength=0.4)
    assert p.parse_submit(uni.to_message(), caps()) == uni
    assert not uni.needs_map


@pytest.mark.parametrize("change, code, words", [
    ({"ref": None}, p.E_BAD_MESSAGE, "missing field 'ref'"),
    ({"width": None}, p.E_BAD_MESSAGE, "missing field 'width'"),
    ({"width": "64"}, p.E_BAD_MESSAGE, "'width' must be an integer"),
    ({"steps": True}, p.E_BAD_MESSAGE, "'steps' must be an integer"),
    ({"steps": 2.5}, p.E_BAD_MESSAGE, "'steps' must be an integer"),
    ({"steps": 0}, p.E_BAD_MESSAGE, "out of range"),
    ({"steps": 100_000}, p.E_BAD_MESSAGE, "out of range"),
    ({"guidance": "high"}, p.E_BAD_MESSAGE, "'guidance' must be a number"),
    ({"guidance": -1}, p.E_BAD_MESSAGE, "out of range"),
    ({"seed": -1}, p.E_BAD_MESSAGE, "'seed'"),
    ({"variants": 0}, p.E_BAD_MESSAGE, "'variants'"),
    ({"prompt": 42}, p.E_BAD_MESSAGE, "'prompt' must be a string"),
    ({"prompt": "a" * (p.MAX_PROMPT_CHARS + 1)}, p.E_BAD_MESSAGE, "characters"),
    ({"negative_prompt": "a" * (p.MAX_PROMPT_CHARS + 1)}, p.E_BAD_MESSAGE, "'negative_prompt' is 4001 characters"),
    ({"guidance": p.MAX_GUIDANCE + 1}, p.E_BAD_MESSAGE, "'guidance' = 51.0 is out of range"),
    ({"preview_every": p.MAX_STEPS + 1}, p.E_BAD_MESSAGE, "'preview_every'"),
    ({"mode": "sketch"}, p.E_BAD_MESSAGE, "unknown mode"),
    ({"width": 4096, "height": 4096}, p.E_TOO_LARGE, "at most 65536"),
    ({"width": 4}, p.E_BAD_MESSAGE, "out of range"),
    ({"scheduler": "Heun"}, p.E_UNKNOWN_SCHEDULER, "DDIM, Euler"),
    ({"model": "sdxl-turbo"}, p.E_UNKNOWN_MODEL, "tiny-sd"),
    ({"region": [0, 0, 8, 8]}, p.E_BAD_MESSAGE, "'region' must be an object"),
    ({"region": {"x": 60, "y": 0, "width": 8, "height": 8}}, p.E_BAD_MESSAGE, "does not fit"),
    ({"region": {"x": 0, "y": 0, "width": 8}}, p.E_BAD_MESSAGE, "missing field 'height'"),
    ({"mode": "uniform"}, p.E_BAD_MESSAGE, "missing field 'strength'"),
    ({"mode": "uniform", "strength": 1.5}, p.E_BAD_MESSAGE, "'strength'"),
    ({"mode": "fan"}, p.E_BAD_MESSAGE, "missing field 'fan'"),
    ({"mode": "fan", "fan": {"count": 3, "low": 0.9, "high": 0.1}}, p.E_BAD_MESSAGE, "above"),
    ({"mode": "fan", "fan": {"count": 0, "low": 0, "high": 1}}, p.E_BAD_MESSAGE, "'count'"),
    ({"mode": "soft_inpaint", "soft_inpaint": {"softness_px": -3}}, p.E_BAD_MESSAGE,
     "'softness_px'"),
])
def test_parse_submit_rejects_with_named_field(change, code, words):
    err = raises(code, p.parse_submit, submit_msg(**change), caps())
    assert words in err.message
    if change.get("ref", 1) is not None:
        assert err.ref == 1  # the server can answer this submit alone


def test_submit_limits_come_from_the_server():
    err = raises(p.E_BAD_MESSAGE, p.parse_submit, submit_msg(steps=20), caps(max_steps=15))
    assert "'steps'" in err.message and "[1, 15]" in err.message
    err = raises(p.E_BAD_MESSAGE, p.parse_submit, submit_msg(variants=3), caps(max_variants=2))
    assert "'variants'" in err.message and "[1, 2]" in err.message
    # The limits themselves are allowed.
    assert p.parse_submit(submit_msg(steps=15), caps(max_steps=15)).steps == 15
    assert p.parse_submit(submit_msg(variants=2), caps(max_variants=2)).variants == 2
    # Without capabilities only the protocol's own limits apply.
    assert p.parse_submit(submit_msg(scheduler="anything"), None).scheduler == "anything"


# --- submit assembly (server side) ------------------------------------------------------------


def test_collector_pairs_submit_with_its_frames():
    collector = p.SubmitCollector(caps())
    request = p.SubmitRequest(ref=5, width=64, height=48, mode="change_map", prompt="x")
    image, gray = png(64, 48), bytes(64 * 48)
    frames = p.submit_frames(request, image, gray)
    assert isinstance(frames[0], str) and all(isinstance(f, bytes) for f in frames[1:])
    collector.add_submit(p.loads(frames[0]))
    assert collector.add_frame(p.decode_frame(frames[1])) is None
    complete = collector.add_frame(p.decode_frame(frames[2]))
    assert complete.request == request and complete.image_png == image
    assert complete.map_gray8 == gray and collector.pending_refs == []


def test_collector_uniform_needs_only_the_image():
    collector = p.SubmitCollector(caps())
    request = p.SubmitRequest(ref=1, width=64, height=48, mode="uniform", strength=0.5)
    frames = p.submit_frames(request, png(64, 48))
    assert len(frames) == 2
    collector.add_submit(p.loads(frames[0]))
    assert collector.add_frame(p.decode_frame(frames[1])).map_gray8 is None


def test_collector_errors():
    collector = p.SubmitCollector(caps(), max_pending=2)
    gray = p.decode_frame(p.encode_frame(p.FRAME_MAP_GRAY8, 1, 0, 64, 48, bytes(64 * 48)))
    err = raises(p.E_BAD_FRAME, collector.add_frame, gray)
    assert "no pending submit" in err.message and err.ref == 1

    collector.add_submit(submit_msg(ref=1))
    raises(p.E_BAD_MESSAGE, collector.add_submit, submit_msg(ref=1))  # ref reused
    small = p.decode_frame(p.encode_frame(p.FRAME_MAP_GRAY8, 1, 0, 32, 48, bytes(32 * 48)))
    err = raises(p.E_MAP_SIZE_MISMATCH, collector.add_frame, small)
    assert "32x48" in err.message and "64x48" in err.message
    assert collector.pending_refs == []  # the broken submit was dropped whole

    collector.add_submit(submit_msg(ref=2, mode="uniform", strength=0.3))
    raises(p.E_BAD_FRAME, collector.add_frame,
           p.decode_frame(p.encode_frame(p.FRAME_MAP_GRAY8, 2, 0, 64, 48, bytes(64 * 48))))

    collector.add_submit(submit_msg(ref=3))
    collector.add_submit(submit_msg(ref=4))
    raises(p.E_QUEUE_FULL, collector.add_submit, submit_msg(ref=5))
    preview = p.decode_frame(p.encode_frame(p.FRAME_PREVIEW_PNG, 3, 0, 64, 48, png(64, 48)))
    raises(p.E_BAD_FRAME, collector.add_frame, preview)  # server-only kind from a client


def test_submit_frames_checks_its_inputs():
    request = p.SubmitRequest(ref=1, width=64, height=48)
    with pytest.raises(ValueError, match="64x48"):
        p.submit_frames(request, png(32, 32), bytes(64 * 48))
    with pytest.raises(ValueError, match="needs a gray8 map"):
        p.submit_frames(request, png(64, 48))
    with pytest.raises(ValueError, match="carries 10 bytes"):
        p.submit_frames(request, png(64, 48), bytes(10))
    uniform = p.SubmitRequest(ref=2, width=64, height=48, mode="uniform", strength=0.5)
    with pytest.raises(ValueError, match="takes no map frame"):
        p.submit_frames(uniform, png(64, 48), bytes(64 * 48))


# --- client session ---------------------------------------------------------------------------


def server_says(session: p.ClientSession, *messages) -> list[p.Event]:
    events = []
    for m in messages:
        events += session.receive(m if isinstance(m, bytes) else p.dumps(m))
    return events


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
