"""Fair sharing: owners take turns, the order iterated is the order served, positions are true."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from server import regions
from server.fair_queue import FairQueue, queue_position, task_owner
from server.jobs import Job, ModelHost, Worker
from shared import protocol as p
from tests.conftest import make_test_image


@dataclass(eq=False)
class T:
    owner: str
    n: int

    def __repr__(self) -> str:
        return f"{self.owner}{self.n}"


def drain(queue: FairQueue) -> list[T]:
    return [queue.popleft() for _ in range(len(queue))]


def test_one_owner_with_eight_jobs_does_not_starve_another_with_one():
    queue = FairQueue()
    for n in range(8):
        queue.append(T("a", n))
    queue.append(T("b", 0))
    order = list(queue)
    assert [repr(t) for t in order[:3]] == ["a0", "b0", "a1"]
    assert drain(queue) == order  # iterating says exactly what popping does


def test_owners_take_turns_in_the_order_they_joined():
    queue = FairQueue()
    for owner, n in [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("c", 0), ("c", 1), ("b", 1)]:
        queue.append(T(owner, n))
    assert [repr(t) for t in drain(queue)] == ["a0", "b0", "c0", "a1", "b1", "c1", "a2"]
    assert not queue and len(queue) == 0


def test_a_served_owner_goes_to_the_back_and_a_newcomer_behind_every_waiting_owner():
    queue = FairQueue()
    for owner in "ab":
        queue.append(T(owner, 0))
        queue.append(T(owner, 1))
    assert repr(queue.popleft()) == "a0"
    queue.append(T("c", 0))
    assert [repr(t) for t in queue] == ["b0", "a1", "c0", "b1"]


def test_removing_tasks_keeps_the_turns_right():
    queue = FairQueue()
    a0, a1, b0 = T("a", 0), T("a", 1), T("b", 0)
    for t in (a0, a1, b0):
        queue.append(t)
    queue.remove(a0)
    assert list(queue) == [a1, b0]
    queue.remove(a1)
    assert list(queue) == [b0] and queue.index(b0) == 0
    with pytest.raises(ValueError):
        queue.remove(a1)
    with pytest.raises(IndexError):
        FairQueue().popleft()


def test_an_owners_next_job_never_moves_back_when_others_arrive():
    queue = FairQueue()
    first = T("a", 0)
    queue.append(first)
    queue.append(T("a", 1))
    seen = [queue.index(first)]
    for owner in "bcdef":
        queue.append(T(owner, 0))
        seen.append(queue.index(first))
    assert seen == [0] * 6


def test_studio_users_share_one_turn_across_their_connections():
    class User:
        name = "alice"

    class Conn:
        def __init__(self, user=None):
            self.user = user

    alice_1, alice_2, bob = Conn(User()), Conn(User()), Conn()
    assert task_owner(T(alice_1, 0)) == task_owner(T(alice_2, 0)) != task_owner(T(bob, 0))


def test_positions_count_the_jobs_that_start_first_with_several_slots():
    assert [queue_position(i, busy=1) for i in range(3)] == [1, 2, 3]  # one worker, running
    assert [queue_position(i, busy=0) for i in range(2)] == [0, 1]
    assert [queue_position(i, busy=2, slots=2) for i in range(3)] == [1, 2, 3]
    assert [queue_position(i, busy=0, slots=2) for i in range(3)] == [0, 0, 1]


def test_the_in_process_worker_serves_clients_in_turn(tiny_sd):
    """Client a queues three jobs, then b one: b's runs second, and its position says so."""
    gate, first_started, order = threading.Event(), threading.Event(), []
    ended = threading.Semaphore(0)
    accepted: dict[int, int] = {}

    def send(message):
        if isinstance(message, p.Accepted):
            accepted[message.job_id] = message.position
        if isinstance(message, p.Started):
            order.append(message.job_id)
            first_started.set()
            gate.wait(30)
        if isinstance(message, (p.Done, p.Error, p.Cancelled)):
            ended.release()

    def job(job_id: int, owner: str) -> Job:
        request = p.SubmitRequest(ref=job_id, width=64, height=64, mode="uniform", strength=1.0,
                                  steps=1, prompt="x")
        return Job(id=job_id, owner=owner, request=request, image=make_test_image(),
                   change=regions.map_uniform((64, 64), 1.0, None), seed=1, send=send,
                   preview_every=0)

    worker = Worker(ModelHost(lambda name: tiny_sd, "tiny-sd"))
    worker.start()
    try:
        for job_id, owner in [(1, "a"), (2, "a"), (3, "a"), (4, "b")]:
            worker.submit(job(job_id, owner), p.Accepted(ref=job_id, job_id=job_id, position=0,
                                                         seed=1))
            assert first_started.wait(30)  # job 1 runs before the others arrive
        gate.set()
        for _ in range(4):
            assert ended.acquire(timeout=60)
    finally:
        worker.stop()
    assert order == [1, 2, 4, 3]
    assert accepted[4] == 2  # job 1 running, job 2 (a's next) before it


def test_taking_a_later_task_uses_its_owners_turn():
    """A client that does not read is passed over; the one served instead goes to the back."""
    queue = FairQueue()
    a0, b0, b1, c0 = T("a", 0), T("b", 0), T("b", 1), T("c", 0)
    for t in (a0, b0, b1, c0):
        queue.append(t)
    assert queue.take(b0) is b0  # a is not reading: b's turn
    assert list(queue) == [a0, c0, b1]
