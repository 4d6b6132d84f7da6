"""The studio engine on a local Ray instance (2 CPU replicas, tiny models), through the websocket:
many clients at once, fair and true queue positions, results identical to the in-process
engine's, cancel / disconnect within one step on whichever replica, model multiplexing, and a
replica killed mid-job. Skipped without ``ray[serve]`` (``pip install '.[ray]'``).

One Ray instance and one pool for the whole module (Ray takes seconds to start; the module runs
in well under a minute on two cores).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from tests.server.ray_helpers import steered_loader
from tests.server.server_harness import Client, decode, gradient_map, of, serving
from tests.server.test_server_maps import make_map

from server.app import DiffusionServer, ServerConfig, run_server
from shared import protocol as p
from tests.conftest import make_test_image

os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # as the server sets it: before Ray loads
ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]
ENDS = (p.Done, p.Cancelled, p.Error)


class PoolServer:
    """A ray-engine server on its own event loop thread; tests talk to it from theirs."""

    def __init__(self, loader=steered_loader, **config) -> None:
        self.loop = asyncio.new_event_loop()
        config = {"model": "tiny-sd", "replicas": 2, **config}
        self.server = DiffusionServer(ServerConfig(port=0, engine="ray", **config), loader)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.server.start(), timeout=240)

    def call(self, coroutine, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def stats(self) -> dict[int, dict]:
        """Each replica's counters, by pid (Serve routes each call to one replica: ask a few)."""
        handle, found = self.server.worker.handle, {}
        for _ in range(30):
            stats = handle.stats.remote().result(timeout_s=30)
            found[stats["pid"]] = stats
            if len(found) == self.server.worker.slots:
                break
        return found


@pytest.fixture(scope="module")
def pool():
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=3, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    server = PoolServer(extra_models=("tiny-sdxl", "tiny-sd-copy"))
    try:
        yield server
    finally:
        server.close()
        ray.shutdown()  # Serve's actors go with the instance


OPEN: list[Client] = []


async def connect(pool: PoolServer) -> Client:
    """A client, closed when the test's ``run`` ends (an open one would hold the server's
    shutdown for its close timeout)."""
    client = await Client.connect(pool.server)
    OPEN.append(client)
    return client


def run(coroutine):
    async def then_close():
        try:
            return await asyncio.wait_for(coroutine, 240)
        finally:
            while OPEN:
                await OPEN.pop().close()

    return asyncio.run(then_close())


async def submit_all(client: Client, jobs: list[dict]) -> dict[int, list[p.Event]]:
    """Submit ``jobs`` (fields for ``Client.submit``), then read until each has ended; returns
    every job's events by job id, its ``accepted`` first."""
    image, change = make_test_image(), gradient_map()
    for fields in jobs:
        await client.submit(image, change, **fields)
    events: dict[int, list[p.Event]] = {}
    open_jobs = len(jobs)
    while open_jobs:
        event = await client.next()
        if isinstance(event, p.Error) and event.job_id is None:
            raise AssertionError(event)
        if isinstance(event, p.ModelLoaded):  # the in-process engine swapped models: not a job's
            continue
        job_id = event.job_id
        events.setdefault(job_id, []).append(event)
        open_jobs -= isinstance(event, ENDS)
    return events


def positions(events: list[p.Event]) -> list[int]:
    return [e.position for e in events if isinstance(e, (p.Accepted, p.QueuePosition))]


def test_six_painters_share_two_replicas_fairly_with_the_in_process_pixels(pool, gated_pipe):
    seeds = [11, 12, 13, 14]
    sd_jobs = [{"seed": s} for s in seeds]
    xl_jobs = [{"seed": 21, "model": "tiny-sdxl"}, {"seed": 22, "model": "tiny-sdxl"}]

    async def painters():
        clients = [await connect(pool) for _ in range(7)]
        jobs = [sd_jobs] * 6 + [xl_jobs]
        return await asyncio.gather(*(submit_all(c, j) for c, j in zip(clients, jobs, strict=True)))

    started = time.monotonic()
    per_client = run(painters())
    pool_s = time.monotonic() - started

    # Every job ended with its results; both replicas did work.
    results: dict[tuple[str | None, int], list[np.ndarray]] = {}
    for client_jobs, fields in zip(per_client, [sd_jobs] * 6 + [xl_jobs], strict=True):
        assert len(client_jobs) == len(fields)
        for events, job in zip(client_jobs.values(), fields, strict=True):
            assert isinstance(events[0], p.Accepted) and isinstance(events[-1], p.Done), events
            result = of(events, p.Result)[0]
            results.setdefault((job.get("model"), job["seed"]), []).append(decode(result.png))
        # Fair and true: a client's next waiting job never moves back.
        first = next(iter(client_jobs.values()))
        assert positions(first) == sorted(positions(first), reverse=True)
    replicas = pool.server.worker.jobs_by_replica
    assert len(replicas) == 2 and all(n >= 3 for n in replicas.values()), replicas

    # The same jobs on the in-process engine: the same pixels.
    async def in_process():
        reference = {}
        async with serving(gated_pipe, loader=steered_loader, extra_models=("tiny-sdxl",)) as s:
            client = await Client.connect(s)
            for events, job in zip((await submit_all(client, sd_jobs + xl_jobs)).values(),
                                   sd_jobs + xl_jobs, strict=True):
                reference[(job.get("model"), job["seed"])] = decode(of(events, p.Result)[0].png)
        return reference

    for key, expected in run(in_process()).items():
        for got in results[key]:
            np.testing.assert_array_equal(got, expected, err_msg=str(key))
    print(f"\n26 jobs on 2 replicas in {pool_s:.1f}s")


def test_jobs_for_a_model_go_to_the_replica_that_has_it(pool):
    async def one_after_another():
        client = await connect(pool)
        for seed in (31, 32, 33):  # one at a time: both replicas are free for each
            await submit_all(client, [{"seed": seed, "model": "tiny-sd-copy"}])
            await asyncio.sleep(1.0)

    run(one_after_another())
    loads = [s["models_loaded"].count("tiny-sd-copy") for s in pool.stats().values()]
    assert sorted(loads) == [0, 1], loads  # loaded once, on one replica, which ran all three


def test_a_clients_load_model_makes_it_that_clients_default(pool):
    async def load_then_submit():
        client = await connect(pool)
        named = await submit_all(client, [{"seed": 61, "model": "tiny-sdxl"}])
        await client.send_json({"type": "load_model", "model": "tiny-sdxl"})
        loaded = await client.until(lambda e: isinstance(e, (p.ModelLoaded, p.Error)))
        assert isinstance(loaded[-1], p.ModelLoaded) and loaded[-1].model == "tiny-sdxl"
        default = await submit_all(client, [{"seed": 61}])
        other = await connect(pool)  # another painter still gets the server's
        theirs = await submit_all(other, [{"seed": 61}])
        return [decode(of(events, p.Result)[0].png) for jobs in (named, default, theirs)
                for events in jobs.values()]

    named, default, theirs = run(load_then_submit())
    np.testing.assert_array_equal(default, named)
    assert not np.array_equal(theirs, named)


def test_a_map_request_is_served_by_the_pool_front_in_its_turn(pool):
    async def depth_map():
        client = await connect(pool)
        await make_map(client, make_test_image(96, 64, seed=2))
        accepted = await client.accepted()
        return await client.until_end(accepted.job_id)

    events = run(depth_map())
    assert isinstance(events[-1], p.Done)
    [ready] = of(events, p.MapReady)
    assert (ready.width, ready.height, ready.kind) == (96, 64, "depth")


def test_cancel_and_disconnect_stop_the_job_within_one_step_on_its_replica(pool):
    async def cancel_then_disconnect():
        client = await connect(pool)
        await client.submit(make_test_image(), gradient_map(), prompt="hold", steps=20)
        accepted = await client.accepted()
        await client.until(lambda e: isinstance(e, p.Progress))
        await client.send_json({"type": "cancel", "job_id": accepted.job_id})
        cancelled = (await client.until_end(accepted.job_id))[-1]
        assert isinstance(cancelled, p.Cancelled) and cancelled.reason == "cancelled by the client"

        await client.submit(make_test_image(), gradient_map(), prompt="hold", steps=20)
        gone = await client.accepted()
        await client.until(lambda e: isinstance(e, p.Progress))
        await client.close()
        return accepted.job_id, gone.job_id

    cancelled_job, gone_job = run(cancel_then_disconnect())
    deadline = time.monotonic() + 30
    while pool.server.worker._running and time.monotonic() < deadline:  # the front let go
        time.sleep(0.05)
    steps = {}
    for stats in pool.stats().values():
        steps.update(stats["steps_by_job"])
    # Held after step 1 until the cancel reached the replica: at most one step more.
    assert steps[cancelled_job] <= 2 and steps[gone_job] <= 2, steps


def test_out_of_memory_on_a_replica_fails_that_job_only(pool):
    async def jobs():
        client = await connect(pool)
        return list((await submit_all(client, [{"prompt": "oom"}, {"seed": 41}])).values())

    oom, fine = run(jobs())
    assert oom[-1].code == p.E_OUT_OF_MEMORY and "memory" in oom[-1].message
    assert isinstance(fine[-1], p.Done)


def test_replicas_log_to_their_files_and_only_their_errors_reach_the_server_log(pool, capfd):
    async def fine_then_oom():
        client = await connect(pool)
        return list((await submit_all(client, [{"seed": 42}, {"prompt": "oom"}])).values())

    capfd.readouterr()  # what came before this test
    fine, oom = run(fine_then_oom())
    deadline, console = time.monotonic() + 30, ""
    while f"job {oom[0].job_id}: out of memory" not in console and time.monotonic() < deadline:
        time.sleep(0.2)  # Ray forwards a replica's console to the driver's in batches
        console += capfd.readouterr().err
    # The error reached the server's console; Serve's line per request did not, nor our INFO.
    assert f"job {oom[0].job_id}: out of memory" in console, console
    assert "CALL run" not in console and f"job {fine[0].job_id}: " not in console
    # Both are in the replicas' files, under the Ray session's logs/serve/.
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    files = "".join(f.read_text() for f in logs.glob(f"replica_{pool.server.worker.app_name}_*"))
    assert f"job {fine[0].job_id}: " in files and "CALL run OK" in files


def test_a_replica_killed_mid_job_fails_that_job_and_the_next_ones_run(pool):
    async def kill_one():
        client = await connect(pool)
        await client.submit(make_test_image(), gradient_map(), prompt="hold", steps=20)
        accepted = await client.accepted()
        await client.until(lambda e: isinstance(e, p.Progress))
        victim = pool.server.worker.runs_on[accepted.job_id].pid
        other = await connect(pool)  # another painter's jobs, running meanwhile
        others = asyncio.ensure_future(submit_all(other, [{"seed": s, "steps": 10}
                                                          for s in (55, 56)]))
        await asyncio.sleep(0.2)
        os.kill(victim, signal.SIGKILL)
        error = (await client.until_end(accepted.job_id))[-1]
        later = await submit_all(client, [{"seed": s} for s in (51, 52, 53, 54)])
        return victim, error, list(later.values()) + list((await others).values())

    victim, error, later = run(kill_one())
    assert isinstance(error, p.Error) and error.code == p.E_JOB_FAILED, error
    assert "died" in error.message and "again" in error.message
    assert len(later) == 6 and all(isinstance(events[-1], p.Done) for events in later), later
    # The deployment replaced the dead replica: two live ones again, the victim not among them.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        live = set(pool.stats())
        if len(live) == 2 and victim not in live:
            break
        time.sleep(0.5)
    assert len(live) == 2 and victim not in live, live


def test_a_second_server_on_the_same_ray_has_its_own_application_and_its_lora(pool, tmp_path):
    from ray import serve

    from tests.server.test_lora import _kohya

    lora, _ = _kohya(tmp_path)
    # A server started on the first one's port stops before it deploys anything.
    taken = DiffusionServer(ServerConfig(model="tiny-sd", engine="ray", replicas=1,
                                         port=pool.server.port))
    with pytest.raises(OSError):
        asyncio.run(taken.start())
    assert set(serve.status().applications) == {pool.server.worker.app_name}
    # Ray's 3 CPUs: 2 for the first pool's replicas, 1 for this one's.
    second = PoolServer(loader=None, replicas=1, lora=str(lora))
    try:
        names = {pool.server.worker.app_name, second.server.worker.app_name}
        assert len(names) == 2 and names <= set(serve.status().applications), names

        async def one_job_each():
            theirs, first = await connect(second), await connect(pool)
            return [decode(of(events, p.Result)[0].png) for client in (theirs, first)
                    for events in (await submit_all(client, [{"seed": 71}])).values()]

        merged, plain = run(one_job_each())
    finally:
        second.close()
    # Its application went with it; the first server's pool still serves.
    assert second.server.worker.app_name not in serve.status().applications
    assert pool.server.worker.app_name in serve.status().applications

    async def in_process():  # the same LoRA, merged by the in-process engine's own loader
        async with run_server(ServerConfig(model="tiny-sd", port=0, lora=str(lora))) as server:
            client = await Client.connect(server)
            OPEN.append(client)
            events = await submit_all(client, [{"seed": 71}])
            return decode(of(next(iter(events.values())), p.Result)[0].png)

    np.testing.assert_array_equal(merged, run(in_process()))
    assert not np.array_equal(merged, plain)
