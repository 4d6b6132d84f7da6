"""Waiting tasks, served round-robin by owner, so one painter's eight jobs never starve another's one.

Each owner (a client connection, or a studio user) keeps its own tasks in arrival order; owners
take turns, in the order they joined the queue. Iterating the queue gives the true dispatch order
(what :meth:`FairQueue.popleft` would return, call after call, if nothing else arrived), so the
position a client is told is the place its task really has.

A client's next waiting task never moves back: a newcomer joins the turn order behind every
owner already waiting. Its later tasks can: a newcomer with one job is served before them, which
is the fairness itself.

Not thread-safe: the owner of the queue holds its own lock (``server.jobs.Worker``) or uses it
from one event loop (the Ray engine).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def task_owner(task: Any) -> Hashable:
    """Whose turn a task counts against: the studio user when the client logged in as one,
    else the connection itself."""
    owner = task.owner
    user = getattr(owner, "user", None)
    return ("user", user.name) if user is not None else owner


class FairQueue(Generic[T]):
    """A queue of tasks, round-robin by ``key(task)`` (default: :func:`task_owner`)."""

    def __init__(self, key: Callable[[T], Hashable] = task_owner) -> None:
        self.key = key
        self._by_owner: dict[Hashable, deque[T]] = {}
        self._turns: deque[Hashable] = deque()  # owners with waiting tasks, whose turn is next first

    def append(self, task: T) -> None:
        owner = self.key(task)
        mine = self._by_owner.get(owner)
        if mine is None:
            mine = self._by_owner[owner] = deque()
            self._turns.append(owner)
        mine.append(task)

    def popleft(self) -> T:
        """The next task to run; its owner goes to the back of the turn order."""
        if not self._turns:
            raise IndexError("pop from an empty FairQueue")
        return self.take(next(iter(self)))

    def take(self, task: T) -> T:
        """Take ``task`` out to run it (the next one, or a later one when the owners before it
        cannot take theirs now): its owner's turn is used, and goes to the back."""
        owner = self.key(task)
        mine = self._by_owner.get(owner)
        if mine is None:
            raise ValueError("task not queued")
        mine.remove(task)
        self._turns.remove(owner)
        if mine:
            self._turns.append(owner)
        else:
            del self._by_owner[owner]
        return task

    def remove(self, task: T) -> None:
        owner = self.key(task)
        mine = self._by_owner.get(owner)
        if mine is None:
            raise ValueError("task not queued")
        mine.remove(task)
        if not mine:
            del self._by_owner[owner]
            self._turns.remove(owner)

    def clear(self) -> None:
        self._by_owner.clear()
        self._turns.clear()

    def __len__(self) -> int:
        return sum(len(mine) for mine in self._by_owner.values())

    def __bool__(self) -> bool:
        return bool(self._turns)

    def __iter__(self) -> Iterator[T]:
        """Every waiting task, in the order they will be dispatched."""
        queues = [list(self._by_owner[owner]) for owner in self._turns]
        for round_ in range(max((len(q) for q in queues), default=0)):
            for q in queues:
                if round_ < len(q):
                    yield q[round_]

    def index(self, task: T) -> int:
        for i, queued in enumerate(self):
            if queued is task:
                return i
        raise ValueError("task not queued")


def queue_position(index: int, busy: int, slots: int = 1) -> int:
    """What a client is told: 0 = runs at the next free slot (or now), 1 = one task before it...
    ``index`` is its place among waiting tasks, ``busy`` how many of the ``slots`` run now."""
    return max(0, index + busy - slots + 1)
