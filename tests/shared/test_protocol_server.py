"""The server's side of a connection, sans-I/O: the hello check and the submit collector."""

from __future__ import annotations

from tests.shared.protocol_helpers import caps, png, raises, submit_msg

from shared import protocol as p

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
    err = raises(p.E_BAD_MESSAGE, collector.add_submit, submit_msg(ref=1))  # ref reused
    assert err.ref == 1 and collector.pending_refs == []  # an error about a ref ends that submit
    collector.add_submit(submit_msg(ref=1))
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


# --- ServerSession ------------------------------------------------------------------------------


def connected(**kw) -> p.ServerSession:
    session = p.ServerSession(caps(models=["tiny-sd", "tiny-sdxl"]), server_name="srv", **kw)
    session.receive_hello(p.dumps(p.hello()))
    return session


def test_server_session_handshake_gives_a_welcome_with_a_copy_of_the_capabilities():
    live = caps()
    session = p.ServerSession(live, token="s3cret", server_name="srv")
    raises(p.E_HANDSHAKE_REQUIRED, session.receive_hello, p.encode_frame(
        p.FRAME_IMAGE_PNG, 1, 0, 8, 8, png(8, 8)))
    raises(p.E_BAD_JSON, session.receive_hello, "{oops")
    raises(p.E_UNAUTHORIZED, session.receive_hello, p.dumps(p.hello()))
    welcome = session.receive_hello(p.dumps(p.hello(token="s3cret")))
    assert isinstance(welcome, p.Welcome) and welcome.server == "srv"
    assert welcome.capabilities == live and welcome.capabilities is not live


def test_server_session_turns_frames_into_requests():
    session = connected()
    request = p.SubmitRequest(ref=5, width=64, height=48, mode="uniform", strength=0.5)
    text, image = p.submit_frames(request, png(64, 48))
    assert session.receive(text) == []
    (complete,) = session.receive(image)
    assert isinstance(complete, p.CompleteSubmit) and complete.request == request
    assert session.receive(p.dumps(p.list_models())) == [p.ListModels()]
    assert session.receive(p.dumps(p.load_model("tiny-sdxl"))) == [p.LoadModel("tiny-sdxl")]
    err = raises(p.E_UNKNOWN_MODEL, session.receive, p.dumps(p.load_model("sd-ultra")))
    assert "tiny-sd, tiny-sdxl" in err.message
    raises(p.E_BAD_MESSAGE, session.receive, p.dumps(p.hello()))  # once only
    err = raises(p.E_UNKNOWN_TYPE, session.receive, '{"type": "dance"}')
    assert "submit" in err.message


def test_server_session_resolves_a_cancel_by_ref():
    session = connected()
    session.receive(p.dumps(submit_msg(ref=3)))
    # Cancelled before its frames came: dropped here, and the answer is the session's own.
    assert session.receive(p.dumps(p.cancel(ref=3))) == [
        p.Cancelled(None, "cancelled by the client before it was accepted", ref=3)]
    raises(p.E_BAD_FRAME, session.receive, p.encode_frame(p.FRAME_IMAGE_PNG, 3, 0, 64, 48,
                                                          png(64, 48)))
    accepted = session.accept(p.parse_submit(submit_msg(ref=4)), job_id=41, seed=9)
    assert accepted == p.Accepted(ref=4, job_id=41, position=0, seed=9)
    assert session.receive(p.dumps(p.cancel(ref=4))) == [p.Cancel(job_id=41)]
    assert session.receive(p.dumps(p.cancel(job_id=77))) == [p.Cancel(job_id=77)]
    err = raises(p.E_UNKNOWN_JOB, session.receive, p.dumps(p.cancel(ref=99)))
    assert err.ref == 99
    raises(p.E_BAD_MESSAGE, session.receive, '{"type": "cancel"}')


def test_server_session_counts_queued_jobs_and_half_sent_submits_against_its_limit():
    queued = [1]
    session = connected(max_jobs=2, jobs_in_queue=lambda: queued[0])
    session.receive(p.dumps(submit_msg(ref=1)))  # 1 queued + 0 waiting < 2
    err = raises(p.E_QUEUE_FULL, session.receive, p.dumps(submit_msg(ref=2)))
    assert err.ref == 2 and "2 jobs" in err.message
    assert raises(p.E_QUEUE_FULL, session.receive, p.dumps(submit_msg(ref="x"))).ref is None
    queued[0] = 0
    session.receive(p.dumps(submit_msg(ref=2)))
