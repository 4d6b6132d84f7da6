"""``make_map`` and ``map``: both sessions, sans-I/O."""

from __future__ import annotations

from tests.shared.protocol_helpers import caps, png, raises, server_says

from shared import protocol as p


def server_session() -> p.ServerSession:
    session = p.ServerSession(caps(), max_jobs=2, jobs_in_queue=lambda: 0)
    session.receive_hello(p.dumps(p.hello()))
    return session


def client_session() -> p.ClientSession:
    client = p.ClientSession()
    server_says(client, p.welcome(caps()))
    return client


def test_a_map_request_travels_from_client_to_server():
    client, server = client_session(), server_session()
    request = p.MakeMap(0, "segments", 64, 48, points=[(3, 4), (60, 40)],
                        box=p.Region(1, 2, 30, 20), softness_px=4.0)
    frames = client.make_map(request, png(64, 48))
    assert request.ref > 0 and len(frames) == 2
    assert server.receive(frames[0]) == []
    [complete] = server.receive(frames[1])
    assert isinstance(complete, p.CompleteMakeMap) and complete.request == request
    accepted = server.accept(complete.request, 9, 0)
    assert accepted.job_id == 9 and server.job_by_ref[request.ref] == 9


def test_the_map_comes_back_with_its_frame():
    client = client_session()
    gray = bytes(range(12)) * 4
    ready = p.MapReady(7, "depth", 8, 6, gray)
    text, frame = ready.frames()
    assert server_says(client, p.loads(text)) == []
    [event] = client.receive(frame)
    assert isinstance(event, p.MapReady) and event.gray8 == gray and event.kind == "depth"
    [error] = server_says(client, p.MapReady(8, "depth", 9, 6).to_dict(),
                          p.encode_frame(p.FRAME_MAP_GRAY8, 8, 0, 8, 6, bytes(48)))
    assert isinstance(error, p.Error) and "9x6" in error.message


def test_bad_requests_say_what_is_wrong():
    server = server_session()
    base = {"type": "make_map", "ref": 3, "kind": "depth", "width": 64, "height": 48}
    err = raises(p.E_BAD_MESSAGE, server.receive, p.dumps({**base, "kind": "normals"}))
    assert "depth, segments" in err.message and err.ref == 3
    raises(p.E_TOO_LARGE, server.receive, p.dumps({**base, "width": 4000, "height": 4000}))
    raises(p.E_BAD_MESSAGE, server.receive, p.dumps({**base, "kind": "segments"}))
    raises(p.E_BAD_MESSAGE, server.receive, p.dumps({**base, "kind": "segments", "points": [[64, 1]]}))
    raises(p.E_BAD_MESSAGE, server.receive, p.dumps({**base, "kind": "segments",
                                                     "box": {"x": 60, "y": 0, "width": 10, "height": 5}}))
    server.receive(p.dumps(base))
    err = raises(p.E_BAD_FRAME, server.receive, p.encode_frame(p.FRAME_IMAGE_PNG, 3, 0, 32, 48, png(32, 48)))
    assert err.ref == 3 and server.maps.pending_refs == []


def test_map_requests_count_against_the_queue_and_cancel_by_ref():
    server = server_session()
    base = {"type": "make_map", "kind": "depth", "width": 64, "height": 48}
    server.receive(p.dumps({**base, "ref": 1}))
    server.receive(p.dumps({**base, "ref": 2}))
    raises(p.E_QUEUE_FULL, server.receive, p.dumps({**base, "ref": 3}))
    [cancelled] = server.receive(p.dumps(p.cancel(ref=1)))
    assert isinstance(cancelled, p.Cancelled) and cancelled.ref == 1 and server.maps.pending_refs == [2]


def test_a_picture_that_never_comes_ends_its_request():
    now = [100.0]
    server = server_session()
    server.maps.clock = lambda: now[0]
    server.receive(p.dumps({"type": "make_map", "ref": 4, "kind": "depth", "width": 64, "height": 48}))
    assert server.next_deadline() == 100.0 + server.maps.timeout_s and server.expire() == []
    now[0] += server.maps.timeout_s
    [error] = server.expire()
    assert error.code == p.E_FRAMES_TIMEOUT and error.ref == 4 and server.maps.pending_refs == []
    assert server.next_deadline() is None
