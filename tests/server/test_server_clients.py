"""Many clients on one server: queue positions, cancelling, disconnects, a full queue, a slow
reader, shutting down; and what the operator sees (log lines, console bar).
"""

from __future__ import annotations

import asyncio
import io
import logging
from types import SimpleNamespace

import pytest
from tests.server.server_harness import (
    TIMEOUT_S,
    Client,
    async_test,
    of,
    png_bytes,
    serving,
    submit_message,
)
from websockets.exceptions import ConnectionClosed

from server.app import (
    MAX_QUEUED_PREVIEW_FRAMES,
    DiffusionServer,
    ServerConfig,
    Session,
)
from server.jobs import ConsoleProgress
from shared import protocol as p
from tests.conftest import make_test_image

pytestmark = pytest.mark.timeout(120)


# --- many clients -------------------------------------------------------------------------------


@async_test
async def test_clients_see_their_queue_positions_and_cancel_their_own_jobs(gated_pipe):
    image = make_test_image()
    async with serving(gated_pipe) as server:
        a, b, c = [await Client.connect(server) for _ in range(3)]
        gated_pipe.hold(2)  # a's job, then c's first job, wait at their first step
        await a.submit(image, mode="uniform", strength=1.0, steps=4)
        job_a = (await a.accepted()).job_id
        await a.until(lambda e: isinstance(e, p.Progress))
        await b.submit(image, mode="uniform", strength=1.0)
        job_b = await b.accepted()
        await c.submit(image, mode="uniform", strength=1.0)
        job_c1 = await c.accepted()
        await c.submit(image, mode="uniform", strength=1.0)
        job_c2 = await c.accepted()
        assert (job_b.position, job_c1.position, job_c2.position) == (1, 2, 3)

        # b cancels its queued job: c moves up.
        await b.ws.send(b.session.cancel(job_id=job_b.job_id))
        cancelled = await b.next()
        assert isinstance(cancelled, p.Cancelled) and cancelled.job_id == job_b.job_id
        moves = [await c.next(), await c.next()]
        assert {(e.job_id, e.position) for e in moves} == {(job_c1.job_id, 1),
                                                           (job_c2.job_id, 2)}

        # c may not cancel a's job.
        await c.send_json({"type": "cancel", "job_id": job_a})
        assert (await c.error()).code == p.E_UNKNOWN_JOB

        # a cancels its running job (by ref): the worker takes c's next.
        await a.ws.send(a.session.cancel(ref=1))
        events = await a.until_end(job_a)
        assert isinstance(events[-1], p.Cancelled)
        started = await c.until(lambda e: isinstance(e, p.Started))
        assert started[-1].job_id == job_c1.job_id
        assert (job_c2.job_id, 1) in [(e.job_id, e.position) for e in of(started, p.QueuePosition)]
        gated_pipe.release()
        await c.until_end(job_c1.job_id)
        events = await c.until_end(job_c2.job_id)
        assert isinstance(events[-1], p.Done)

    run_a = gated_pipe.runs[0]
    assert run_a.cancelled and run_a.steps <= 1  # stopped at the first step boundary
    assert len(gated_pipe.runs) == 3  # b's job never ran
    assert not of(a.seen + b.seen, p.Error)


@async_test
async def test_disconnect_cancels_the_clients_jobs_and_frees_the_worker_within_a_step(gated_pipe):
    image = make_test_image()
    async with serving(gated_pipe) as server:
        a, b = await Client.connect(server), await Client.connect(server)
        gated_pipe.hold(1)
        await a.submit(image, mode="uniform", strength=1.0, steps=20)
        await a.accepted()
        await a.until(lambda e: isinstance(e, p.Progress))
        await a.submit(image, mode="uniform", strength=1.0, steps=20)
        assert (await a.accepted()).position == 1
        await b.submit(image, mode="uniform", strength=0.9, steps=3)
        job_b = await b.accepted()
        assert job_b.position == 2

        await a.close()
        events = await b.until_end(job_b.job_id)
        assert isinstance(events[-1], p.Done)
        # a's queued job went with it (b may start before it hears of its new place).
        assert all(e.position == 1 for e in of(events, p.QueuePosition))
        assert len(server.sessions) == 1

    first = gated_pipe.runs[0]
    assert first.cancelled and first.steps == 1 and first.cancel_seen_at == 1
    assert len(gated_pipe.runs) == 2  # a's second job never ran; b's did


@async_test
async def test_too_many_jobs_from_one_client_is_refused(gated_pipe):
    image = make_test_image()
    async with serving(gated_pipe, max_jobs_per_client=2) as server:
        client = await Client.connect(server)
        gated_pipe.hold(1)
        for _ in range(2):
            await client.submit(image, mode="uniform", strength=1.0)
            await client.accepted()
        await client.submit(image, mode="uniform", strength=1.0)
        error = (await client.until(lambda e: isinstance(e, p.Error)))[-1]
        assert error.code == p.E_QUEUE_FULL and error.ref == 3
        # Its frames, which arrived after the refusal, are refused too.
        assert (await client.error()).code == p.E_BAD_FRAME
        gated_pipe.release()
        # Submits still waiting for their frames count too (another client, nothing queued yet).
        other = await Client.connect(server)
        for ref in (1, 2):
            await other.send_json(submit_message(ref=ref))
        await other.send_json(submit_message(ref=3))
        error = await other.error()
        assert (error.code, error.ref) == (p.E_QUEUE_FULL, 3) and "2 jobs" in error.message


@async_test
async def test_stopping_the_server_cancels_every_job_tells_the_client_then_closes(gated_pipe):
    image = make_test_image()
    server = DiffusionServer(ServerConfig(model="tiny-sd", port=0), lambda name: gated_pipe)
    await server.start()
    try:
        client = await Client.connect(server)
        gated_pipe.hold(1)
        await client.submit(image, mode="uniform", strength=1.0, steps=10)
        running = await client.accepted()
        await client.until(lambda e: isinstance(e, p.Progress))
        await client.submit(image, mode="uniform", strength=1.0, steps=10)
        queued = await client.accepted()
    finally:
        await server.stop()
    events: list[p.Event] = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            events.append(await client.next())
    assert closed.value.rcvd.code == p.CLOSE_GOING_AWAY
    cancelled = of(events, p.Cancelled)
    assert sorted(e.job_id for e in cancelled) == [running.job_id, queued.job_id]
    assert all(e.reason == "the server is shutting down" for e in cancelled)
    assert gated_pipe.runs[0].cancelled and gated_pipe.runs[0].steps == 1 and len(gated_pipe.runs) == 1


@async_test
async def test_previews_for_a_slow_client_are_dropped_but_nothing_else():
    sent: list[str | bytes] = []

    class Connection:
        remote_address = ("127.0.0.1", 1)

        async def send(self, data: str | bytes) -> None:
            sent.append(data)

    def sent_steps(kind: type) -> list[int]:
        """The steps of the ``kind`` messages sent, read back as the client would."""
        reader = p.ClientSession()
        events = [e for data in sent for e in reader.receive(data)]
        return [e.step for e in events if isinstance(e, kind)]

    server = SimpleNamespace(capabilities=None, config=ServerConfig(model="tiny-sd"), worker=None)
    session = Session(server, Connection())
    region, picture = p.Region(0, 0, 8, 8), png_bytes(make_test_image(8, 8))

    def preview(step: int) -> p.Preview:
        return p.Preview(1, step, region, picture, 8, 8)

    for i in range(20):
        session.post(preview(i))
        session.post(p.Progress(1, i, 100, 0.0, None))
    await asyncio.sleep(0)  # post() hands over through the loop, like the worker thread's
    pump = asyncio.create_task(session.pump())
    await session.flush(TIMEOUT_S)
    pump.cancel()
    assert sent_steps(p.Progress) == list(range(20))
    assert sent_steps(p.Preview) == list(range(MAX_QUEUED_PREVIEW_FRAMES))
    # The client caught up: the next previews go out again (a sent preview frees its place).
    pump = asyncio.create_task(session.pump())
    for i in range(20, 20 + MAX_QUEUED_PREVIEW_FRAMES + 2):
        session.post(preview(i))
        await asyncio.sleep(0)  # handed over
        await session.flush(TIMEOUT_S)  # and sent before the next one comes
    pump.cancel()
    assert sent_steps(p.Preview)[MAX_QUEUED_PREVIEW_FRAMES:] == \
        list(range(20, 20 + MAX_QUEUED_PREVIEW_FRAMES + 2))


@async_test
async def test_one_log_line_per_job_and_a_console_progress_bar(gated_pipe, caplog, capsys):
    caplog.set_level(logging.INFO, logger="server")
    image = make_test_image()
    async with serving(gated_pipe, console_progress=True) as server:
        client = await Client.connect(server)
        await client.submit(image, mode="uniform", strength=1.0, steps=4)
        job_done = (await client.accepted()).job_id
        await client.until_end(job_done)
        gated_pipe.hold(1)
        await client.submit(image, mode="uniform", strength=1.0, steps=4)
        job_cancelled = (await client.accepted()).job_id
        await client.until(lambda e: isinstance(e, p.Progress))
        await client.submit(image, mode="uniform", strength=1.0, steps=4)
        job_never_ran = (await client.accepted()).job_id
        for job_id in (job_never_ran, job_cancelled):
            await client.ws.send(client.session.cancel(job_id=job_id))
            await client.until_end(job_id)
    for job_id in (job_done, job_cancelled, job_never_ran):
        lines = [r.getMessage() for r in caplog.records
                 if r.getMessage().startswith(f"job {job_id}")]
        assert len(lines) == 1, lines
    line = next(r.getMessage() for r in caplog.records
                if r.getMessage().startswith(f"job {job_done}:"))
    assert "uniform 64x64" in line and "4/4 steps" in line and "seed 7" in line
    err = capsys.readouterr().err
    assert f"\rjob {job_done} [" in err and "] 4/4 " in err


def test_console_progress_bar_draws_and_clears_one_line():
    stream = io.StringIO()
    bar = ConsoleProgress(stream, enabled=True)
    bar.update(3, 1, 4, 0.5)
    bar.update(3, 4, 4, 2.0)
    bar.finish()
    text = stream.getvalue()
    assert "\rjob 3 [#######-----------------------] 1/4" in text
    assert "[" + "#" * 30 + "] 4/4" in text and text.endswith("\r\033[K")
    quiet = io.StringIO()
    ConsoleProgress(quiet, enabled=None).update(1, 1, 2, 0.1)  # not a terminal: nothing
    assert quiet.getvalue() == ""
