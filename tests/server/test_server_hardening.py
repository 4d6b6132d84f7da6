"""Issue 12: what a hostile or unlucky client found, each sent exactly as found over a real
socket. Every test here failed before its fix (see the commit that added it).
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from tests.server.server_harness import (
    Client,
    async_test,
    decode,
    frame,
    of,
    serving,
    submit_message,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from shared import protocol as p
from tests.conftest import make_test_image

pytestmark = pytest.mark.timeout(120)

LONE_SURROGATE = "\ud800"  # valid in a JSON escape, not encodable as text


# --- 1. lone surrogates -------------------------------------------------------------------------


@async_test
async def test_a_lone_surrogate_in_any_text_field_is_refused_at_parse_time_naming_the_field(gated_pipe):
    async with serving(gated_pipe) as server:
        client = await Client.connect(server)
        cases = [
            (submit_message(options={LONE_SURROGATE: 1}), "options", 500),
            (submit_message(prompt="a red " + LONE_SURROGATE + " barn"), "prompt", 500),
            (submit_message(negative_prompt=LONE_SURROGATE), "negative_prompt", 500),
            (submit_message(scheduler=LONE_SURROGATE), "scheduler", 500),
            (submit_message(model=LONE_SURROGATE), "model", 500),
            (submit_message(mode=LONE_SURROGATE), "mode", 500),
            ({"type": "load_model", "model": LONE_SURROGATE}, "model", None),
        ]
        for message, field, ref in cases:
            # json.dumps writes the surrogate as the escape "\ud800": valid JSON, valid UTF-8.
            await client.ws.send(json.dumps(message))
            error = await client.error()
            assert (error.code, error.ref) == (p.E_BAD_MESSAGE, ref), (field, error)
            assert field in error.message and "not valid text" in error.message, error.message
        # The connection is alive and nothing ran.
        await client.ws.send(p.dumps(p.list_models()))
        assert isinstance(await client.next(), p.Models)
        assert gated_pipe.runs == []


@async_test
async def test_a_lone_surrogate_as_the_token_is_unauthorized_not_a_crash(gated_pipe):
    async with serving(gated_pipe, token="s3cret") as server:
        async with connect(server.url) as ws:
            await ws.send(json.dumps({**p.hello(), "token": LONE_SURROGATE}))
            (error,) = p.ClientSession().receive(await ws.recv())
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert error.code == p.E_UNAUTHORIZED
        assert closed.value.rcvd.code == p.CLOSE_POLICY_VIOLATION
        await Client.connect(server, token="s3cret")


# --- 2. the text-frame limit counts bytes -------------------------------------------------------


@async_test
async def test_the_text_frame_limit_counts_utf8_bytes_not_characters(gated_pipe):
    async with serving(gated_pipe) as server:
        client = await Client.connect(server)
        emoji = "\U0001f600"  # 4 bytes in UTF-8
        text = json.dumps(submit_message(prompt=emoji * 70_000), ensure_ascii=False)
        assert len(text) < p.MAX_TEXT_BYTES < len(text.encode("utf-8"))
        await client.ws.send(text)
        error = await client.error()
        assert error.code == p.E_TOO_LARGE and str(len(text.encode("utf-8"))) in error.message


# --- 3. variant seeds stay in range -------------------------------------------------------------


@async_test
async def test_variant_seeds_wrap_so_every_result_can_be_reproduced_alone(gated_pipe):
    image = make_test_image()
    async with serving(gated_pipe) as server:
        client = await Client.connect(server)
        await client.submit(image, mode="uniform", strength=1.0, steps=2, seed=p.MAX_SEED, variants=2)
        events = await client.until_end((await client.accepted()).job_id)
        results = of(events, p.Result)
        assert [r.seed for r in results] == [p.MAX_SEED, 0]
        # The second variant's seed is accepted back and gives the same picture alone.
        await client.submit(image, mode="uniform", strength=1.0, steps=2, seed=results[1].seed)
        (alone,) = of(await client.until_end((await client.accepted()).job_id), p.Result)
        assert (decode(alone.png) == decode(results[1].png)).all()


# --- 4. an error about a submit's frame carries its ref and ends it ------------------------------


@async_test
async def test_a_broken_png_frame_gets_an_error_with_the_ref_and_ends_that_submit(gated_pipe):
    async with serving(gated_pipe) as server:
        client = await Client.connect(server)
        await client.send_json(submit_message(mode="uniform", strength=0.5))
        header = p.FRAME_HEADER.pack(p.FRAME_MAGIC, p.PROTOCOL_VERSION, p.FRAME_IMAGE_PNG, 500, 0, 64, 64)
        await client.ws.send(header + b"this is no PNG at all")
        error = await client.error()
        assert (error.code, error.ref) == (p.E_BAD_FRAME, 500)
        # The submit is over: its real image now belongs to nothing.
        await client.ws.send(frame(p.FRAME_IMAGE_PNG, 500))
        error = await client.error()
        assert (error.code, error.ref) == (p.E_BAD_FRAME, 500) and "no pending submit" in error.message
        assert gated_pipe.runs == []


# --- 5. a submit whose frames never come expires ----------------------------------------------


@async_test
async def test_a_submit_whose_frames_never_come_expires_and_frees_its_slot(gated_pipe):
    async with serving(gated_pipe, submit_frames_timeout_s=0.3) as server:
        client = await Client.connect(server)
        for ref in range(1, 5):  # as many half-sent submits as a connection may hold
            await client.send_json(submit_message(ref=ref))
        errors = [await client.error() for _ in range(4)]
        assert sorted(e.ref for e in errors) == [1, 2, 3, 4]
        assert {e.code for e in errors} == {p.E_FRAMES_TIMEOUT}
        assert "0.3" in errors[0].message
        # Their slots are free again: a whole job goes through.
        await client.submit(make_test_image(), mode="uniform", strength=0.5)
        events = await client.until_end((await client.accepted()).job_id)
        assert isinstance(events[-1], p.Done)


# --- 6. cancel by ref before accepted is answered ----------------------------------------------


@async_test
async def test_cancel_by_ref_before_accepted_is_answered_and_the_submit_never_runs(gated_pipe):
    async with serving(gated_pipe) as server:
        client = await Client.connect(server)
        await client.send_json(submit_message(ref=9))
        await client.ws.send(client.session.cancel(ref=9))
        cancelled = await client.next()
        assert isinstance(cancelled, p.Cancelled), cancelled
        assert (cancelled.ref, cancelled.job_id) == (9, None) and cancelled.reason
        # Its frames arrive late: they belong to no submit, and nothing runs.
        await client.ws.send(frame(p.FRAME_IMAGE_PNG, 9))
        assert (await client.error()).code == p.E_BAD_FRAME
        # A ref the server never saw: said so, with the ref.
        await client.ws.send(client.session.cancel(ref=77))
        error = await client.error()
        assert (error.code, error.ref) == (p.E_UNKNOWN_JOB, 77)
        await client.ws.send(p.dumps(p.list_models()))
        assert isinstance(await client.next(), p.Models)
        assert gated_pipe.runs == []


# --- 7. a client that never reads -------------------------------------------------------------


async def connect_slow_reader(server) -> Client:
    """A client whose socket takes a few kB and whose websocket library buffers one message: once
    that is full it reads nothing, so what the server sends waits on the server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    ws = await connect(server.url, sock=sock, max_size=None, max_queue=1, compression=None)
    session = p.ClientSession(client="slow")
    await ws.send(session.hello())
    assert isinstance(session.receive(await ws.recv())[0], p.Welcome)
    return Client(ws, session)


@async_test
async def test_a_client_that_does_not_read_has_its_jobs_paused_not_buffered(gated_pipe):
    image = make_test_image(256, 256)
    # The server's sockets take a few kB too, so unread results wait in the server's outbox.
    async with serving(gated_pipe, max_unread_bytes=50_000, max_pixels=256 * 256) as server:
        for sock in server._listener.sockets:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        slow, fast = await connect_slow_reader(server), await Client.connect(server)
        gated_pipe.hold(1)  # the slow client's first job waits until every job is queued
        for _ in range(3):
            await slow.submit(image, mode="uniform", strength=1.0, steps=2, variants=4)
        while sum(server.worker.count(s) for s in server.sessions) < 3:  # it reads no 'accepted'
            await asyncio.sleep(0.01)
        await fast.submit(make_test_image(), mode="uniform", strength=1.0, steps=2)
        job_fast = (await fast.accepted()).job_id
        gated_pipe.release()
        # The slow client's first job ran; its results wait unread, so its next two wait too,
        # and the fast client's job (queued behind them) runs meanwhile.
        events = await fast.until_end(job_fast)
        assert isinstance(events[-1], p.Done)
        assert len(gated_pipe.runs) == 2
        (session,) = [s for s in server.sessions if s.protocol is not None and s.unread_bytes > 0]
        assert 50_000 < session.unread_bytes < 50_000 + 4 * 256 * 256 * 4  # the limit + one job
        # Once it reads, its jobs run, in order.
        done = []
        while len(done) < 3:
            done += of([await slow.next()], p.Done)
        assert len(gated_pipe.runs) == 4


# --- spec gaps: the answers PROTOCOL.md now writes down ------------------------------------------


@async_test
async def test_the_handshake_and_frame_answers_the_spec_writes_down(gated_pipe):
    async with serving(gated_pipe) as server:
        # Anything but a JSON object as the first message: handshake_required, then close 1008.
        for first in ("[1, 2]", "5", '"hello"', "{}", '{"type": "list_models"}'):
            async with connect(server.url) as ws:
                await ws.send(first)
                (error,) = p.ClientSession().receive(await ws.recv())
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
            assert error.code == p.E_HANDSHAKE_REQUIRED, (first, error)
            assert closed.value.rcvd.code == p.CLOSE_POLICY_VIOLATION
        client = await Client.connect(server)
        # A second hello: bad_message, and the connection goes on.
        await client.ws.send(client.session.hello())
        assert (await client.error()).code == p.E_BAD_MESSAGE
        # A binary frame of another version: bad_frame without a ref (nothing in it is trusted).
        await client.send_json(submit_message(mode="uniform", strength=1.0))
        image = frame(p.FRAME_IMAGE_PNG, 500)
        await client.ws.send(image[:4] + bytes([2]) + image[5:])
        error = await client.error()
        assert (error.code, error.ref) == (p.E_BAD_FRAME, None)
        # Only ref, width and height are required (a change map follows by default).
        await client.send_json({"type": "submit", "ref": 3, "width": 64, "height": 64})
        await client.ws.send(frame(p.FRAME_IMAGE_PNG, 3))
        await client.ws.send(frame(p.FRAME_MAP_GRAY8, 3, payload=bytes([255]) * 64 * 64))
        accepted = await client.accepted()
        assert isinstance((await client.until_end(accepted.job_id))[-1], p.Done)
        assert gated_pipe.runs[-1].kwargs["prompt"] == "" and gated_pipe.runs[-1].kwargs["num_inference_steps"] == 30
