"""The Ray engine's front without Ray: a fake deployment handle whose job streams the test steers.
Fair dispatch over the replicas, true positions, cancels (waiting and running), a replica dying."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.server.server_harness import async_test

from server import regions
from server.jobs import Job
from server.pool_wire import RunsOn
from server.ray_engine import RayEngine, replica_count, replica_resources
from server.config import ServerConfig
from shared import protocol as p
from tests.conftest import make_test_image

ENDS = (p.Done, p.Cancelled, p.Error)


class ActorDiedError(Exception):
    """Named like Ray's: what a stream raises when its replica's process died."""


class FakeStream:
    """One job on a fake replica: ``RunsOn``, ``Started``, then waits for ``finish`` or ``die``."""

    def __init__(self, payload: Any) -> None:
        self.payload = payload
        self.items: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.loop = asyncio.get_running_loop()
        self.items.put_nowait(RunsOn(1000 + payload.id, "fake"))
        self.items.put_nowait(p.Started(payload.id, 64, 64, p.Region(0, 0, 64, 64)))

    def finish(self, close: bool = True) -> None:
        self.items.put_nowait(p.Done(self.payload.id, 1, 3, {}))
        if close:
            self.close()

    def close(self) -> None:  # the replica's generator returned
        self.items.put_nowait(StopAsyncIteration())

    def die(self) -> None:
        self.items.put_nowait(ActorDiedError("The actor died unexpectedly before finishing"))

    def cancel(self) -> None:  # called on an executor thread; the reader then raises, as Serve's
        self.cancelled = True
        self.loop.call_soon_threadsafe(self.items.put_nowait, asyncio.CancelledError())

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self.items.get()
        if isinstance(item, BaseException):
            raise item
        return item


class FakeHandle:
    def __init__(self) -> None:
        self.streams: dict[int, FakeStream] = {}

    def options(self, **_: Any) -> FakeHandle:
        return self

    @property
    def run(self) -> FakeHandle:
        return self

    def remote(self, payload: Any) -> FakeStream:
        stream = self.streams[payload.id] = FakeStream(payload)
        return stream


class Inbox(list):
    def __call__(self, event: p.Event) -> None:
        self.append(event)

    def positions(self, job_id: int) -> list[int]:
        return [e.position for e in self if isinstance(e, (p.Accepted, p.QueuePosition))
                and e.job_id == job_id]

    def ended(self, job_id: int) -> list[p.Event]:
        return [e for e in self if isinstance(e, ENDS) and e.job_id == job_id]


def engine(slots: int = 2) -> tuple[RayEngine, FakeHandle]:
    pool = RayEngine(ServerConfig(model="tiny-sd"))
    pool.handle, pool.slots, pool.loop = FakeHandle(), slots, asyncio.get_running_loop()
    return pool, pool.handle


def submit(pool: RayEngine, job_id: int, owner: str, inbox: Inbox) -> Job:
    request = p.SubmitRequest(ref=job_id, width=64, height=64, mode="uniform", strength=1.0,
                              steps=3, prompt="x")
    job = Job(id=job_id, owner=owner, request=request, image=make_test_image(),
              change=regions.map_uniform((64, 64), 1.0, None), seed=1, send=inbox,
              preview_every=0)
    pool.submit(job, p.Accepted(ref=job_id, job_id=job_id, position=0, seed=1))
    return job


async def settle() -> None:
    """Let the engine's tasks (and a cancel's executor thread) run."""
    for _ in range(5):
        await asyncio.sleep(0.01)


@async_test
async def test_jobs_fill_the_replicas_then_wait_fairly_with_true_positions():
    pool, handle = engine(slots=2)
    inbox = Inbox()
    for job_id, owner in [(1, "a"), (2, "a"), (3, "a"), (4, "a"), (5, "b")]:
        submit(pool, job_id, owner, inbox)
    await settle()
    assert sorted(handle.streams) == [1, 2]  # both replicas busy at once
    # Waiting: a's 3, then b's 5 (it joined behind a), then a's 4; one job must end first.
    assert [t.id for t in pool._pending] == [3, 5, 4]
    assert inbox.positions(3) == [1] and inbox.positions(5) == [2] and inbox.positions(4) == [2, 3]
    handle.streams[1].finish()
    await settle()
    assert sorted(handle.streams) == [1, 2, 3]
    assert inbox.positions(5)[-1] == 1 and inbox.positions(4)[-1] == 2
    for job_id in (2, 3):
        handle.streams[job_id].finish()
    await settle()
    for job_id in (4, 5):
        handle.streams[job_id].finish()
    await settle()
    assert all(isinstance(inbox.ended(j)[0], p.Done) and len(inbox.ended(j)) == 1
               for j in range(1, 6))
    assert dict(pool.jobs_by_replica) == {1000 + j: 1 for j in range(1, 6)}
    assert pool.count("a") == pool.count("b") == 0


@async_test
async def test_cancels_waiting_and_running_and_a_disconnect():
    pool, handle = engine(slots=1)
    inbox = Inbox()
    for job_id, owner in [(1, "a"), (2, "b"), (3, "b"), (4, "a")]:
        submit(pool, job_id, owner, inbox)
    await settle()
    assert pool.cancel("b", 3)  # waiting: at once
    assert isinstance(inbox.ended(3)[0], p.Cancelled)
    assert not pool.cancel("b", 1)  # not b's
    assert pool.cancel("a", 1, "cancelled by the client")  # running: its stream is closed
    await settle()
    assert handle.streams[1].cancelled
    assert [type(e) for e in inbox.ended(1)] == [p.Cancelled]
    assert sorted(handle.streams) == [1, 2]  # the replica went to the next job
    assert pool.cancel_owner("b", "the client disconnected") == 1
    await settle()
    assert inbox.ended(2)[0].reason == "the client disconnected"
    handle.streams[4].finish()
    await settle()
    assert isinstance(inbox.ended(4)[0], p.Done)


@async_test
async def test_a_job_whose_done_is_out_is_no_longer_its_clients_but_holds_its_replica():
    pool, handle = engine(slots=1)
    inbox = Inbox()
    submit(pool, 1, "a", inbox)
    submit(pool, 2, "b", inbox)
    await settle()
    handle.streams[1].finish(close=False)  # 'done' sent; the replica's generator not yet returned
    await settle()
    assert pool.count("a") == 0 and pool.find("a", 1) is None
    assert pool.cancel_owner("a", "the client disconnected") == 0  # nothing of a's to cancel
    await settle()
    assert not handle.streams[1].cancelled and [type(e) for e in inbox.ended(1)] == [p.Done]
    assert sorted(handle.streams) == [1]  # its replica is still busy: b's job waits
    handle.streams[1].close()
    await settle()
    assert sorted(handle.streams) == [1, 2]


@async_test
async def test_a_dead_replica_fails_its_job_with_a_clear_error_and_the_next_one_runs():
    pool, handle = engine(slots=1)
    inbox = Inbox()
    submit(pool, 1, "a", inbox)
    submit(pool, 2, "b", inbox)
    await settle()
    handle.streams[1].die()
    await settle()
    error = inbox.ended(1)[0]
    assert error.code == p.E_JOB_FAILED and "its process died" in error.message
    handle.streams[2].finish()
    await settle()
    assert isinstance(inbox.ended(2)[0], p.Done)


def test_replicas_and_their_resources():
    assert replica_count("auto", gpus=4, cpus=64) == 4
    assert replica_count("auto", gpus=0, cpus=2) == 1
    assert replica_count(3, gpus=0, cpus=2) == 3
    assert replica_resources(2, gpus=4, cpus=64, cpus_per_replica=None) == {"num_gpus": 1.0,
                                                                             "num_cpus": 1}
    assert replica_resources(4, gpus=2, cpus=64, cpus_per_replica=None)["num_gpus"] == 0.5
    assert replica_resources(2, gpus=0, cpus=2, cpus_per_replica=None) == {"num_cpus": 1.0}
    assert replica_resources(4, gpus=0, cpus=2, cpus_per_replica=None) == {"num_cpus": 0.5}
