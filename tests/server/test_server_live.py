"""Live mode on the server (issue 16): a ``replace`` submit cancels the client's earlier live
jobs before it queues; its other jobs and other clients' jobs are untouched."""

from __future__ import annotations

import pytest
from tests.server.server_harness import Client, async_test, of, serving

from shared import protocol as p
from tests.conftest import make_test_image

pytestmark = pytest.mark.timeout(120)


@async_test
async def test_a_burst_of_replace_submits_leaves_only_the_last_live_job(gated_pipe):
    image = make_test_image()
    async with serving(gated_pipe) as server:
        a, b = await Client.connect(server), await Client.connect(server)
        assert a.session.capabilities.supports(p.FEATURE_REPLACE)
        gated_pipe.hold(1)  # the first live job waits at its first step while the burst arrives
        await a.submit(image, mode="uniform", strength=1.0, steps=4, replace=True)
        first = (await a.accepted()).job_id
        await a.until(lambda e: isinstance(e, p.Progress))
        await b.submit(image, mode="uniform", strength=0.9)  # another painter's job
        job_b = (await b.accepted()).job_id
        await a.submit(image, mode="uniform", strength=0.8)  # a's own job, not live
        plain = (await a.accepted()).job_id
        for _ in range(9):  # a burst: sent without waiting for any answer
            await a.submit(image, mode="uniform", strength=1.0, steps=3, replace=True)

        live = [first]
        ended: dict[int, p.Event] = {}
        while len(live) < 10 or len(ended) < 11:
            event = await a.next()
            if isinstance(event, p.Accepted) and event.job_id != plain:
                live.append(event.job_id)
            elif isinstance(event, (p.Done, p.Cancelled, p.Error)):
                assert event.job_id not in ended
                ended[event.job_id] = event
        events_b = await b.until_end(job_b)

    last = live[-1]
    assert isinstance(ended[last], p.Done)
    assert isinstance(ended[plain], p.Done)  # the client's own non-live job ran
    for job_id in live[:-1]:
        assert isinstance(ended[job_id], p.Cancelled), ended[job_id]
        assert ended[job_id].reason == p.REPLACED_REASON
    assert isinstance(events_b[-1], p.Done) and not of(b.seen, p.Cancelled)
    # The running one stopped at its first step; the replaced queued ones never ran.
    assert gated_pipe.runs[0].cancelled and gated_pipe.runs[0].steps == 1
    assert len(gated_pipe.runs) == 4  # the first live job, b's, a's plain one, the last live one
    # Each queued live job is cancelled before the next one is accepted (the running one ends
    # at its next step, later).
    order = [(type(e).__name__, e.job_id) for e in a.seen if isinstance(e, (p.Accepted, p.Cancelled))]
    for earlier, later in zip(live[1:], live[2:], strict=False):
        assert order.index(("Cancelled", earlier)) < order.index(("Accepted", later))


@async_test
async def test_a_submit_without_replace_cancels_nothing(gated_pipe):
    image = make_test_image()
    async with serving(gated_pipe) as server:
        a = await Client.connect(server)
        await a.submit(image, mode="uniform", strength=1.0, replace=True)
        live = (await a.accepted()).job_id
        await a.submit(image, mode="uniform", strength=1.0)
        plain = (await a.accepted()).job_id
        ends = [(await a.until_end(job_id))[-1] for job_id in (live, plain)]
    assert all(isinstance(e, p.Done) for e in ends)
