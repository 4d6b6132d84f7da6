"""The worker without a socket: it emits typed protocol messages (never wire frames), one job's in
order, and each job ends with exactly one of done / cancelled / error."""

from __future__ import annotations

import threading

import pytest

from server import regions
from server.jobs import Job, ModelHost, Worker
from shared import protocol as p
from tests.conftest import make_test_image

pytestmark = pytest.mark.timeout(120)
ENDS = (p.Done, p.Cancelled, p.Error)


class Inbox:
    """A job's ``send``: collects its messages and says when the job has ended."""

    def __init__(self) -> None:
        self.messages: list[p.Event] = []
        self.ended = threading.Event()

    def __call__(self, message: p.Event) -> None:
        self.messages.append(message)
        if isinstance(message, ENDS):
            self.ended.set()


def uniform_job(job_id: int, inbox: Inbox, **fields) -> Job:
    fields = {"mode": "uniform", "strength": 1.0, "steps": 3, "prompt": "x", **fields}
    request = p.SubmitRequest(ref=job_id, width=64, height=64, **fields)
    change = regions.map_uniform((64, 64), request.strength, None)
    return Job(id=job_id, owner="client", request=request, image=make_test_image(), change=change,
               seed=5, send=inbox, preview_every=1)


def test_a_job_sends_typed_messages_in_order_and_one_end(tiny_sd):
    worker = Worker(ModelHost(lambda name: tiny_sd, "tiny-sd"))
    worker.start()
    try:
        done, refused = Inbox(), Inbox()
        worker.submit(uniform_job(1, done), p.Accepted(ref=1, job_id=1, position=0, seed=5))
        worker.submit(uniform_job(2, refused, scheduler="Warp"))
        assert done.ended.wait(60) and refused.ended.wait(60)
    finally:
        worker.stop()
    assert all(isinstance(m, p.Event) for m in done.messages + refused.messages)
    kinds = [type(m).__name__ for m in done.messages]
    assert kinds[:2] == ["Accepted", "Started"] and kinds[-2:] == ["Result", "Done"]
    assert {"Progress", "Preview"} <= set(kinds[2:-2]) <= {"Progress", "Preview", "QueuePosition"}
    result = done.messages[-2]
    assert (result.width, result.height, result.seed) == (64, 64, 5) and result.png
    assert [type(m) for m in refused.messages if isinstance(m, ENDS)] == [p.Error]
    assert refused.messages[-1].code == p.E_UNKNOWN_SCHEDULER and refused.messages[-1].job_id == 2


def test_a_job_cancelled_before_it_ran_sends_cancelled_only():
    worker = Worker(ModelHost(lambda name: None, "none"))  # never started: nothing runs
    inbox = Inbox()
    job = uniform_job(3, inbox)
    worker.submit(job)
    assert worker.cancel("client", 3, "changed my mind")
    assert inbox.messages == [p.Cancelled(3, "changed my mind")]
