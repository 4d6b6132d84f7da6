"""Studio access control: the users file, and a server that knows its painters by their token."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest
from tests.server.server_harness import Client, async_test, gradient_map, serving
from websockets.asyncio.client import connect as websockets_connect

from server.config import ConfigError
from server.users import Users, load_users, parse_users
from shared import protocol as p
from tests.conftest import make_test_image

pytestmark = pytest.mark.timeout(120)

ALICE, BOB = "alice-secret-token-1", "bob-secret-token-22"
MODELS = ["tiny-sd", "tiny-sdxl"]


async def connect(server, token: str | None = None) -> tuple[Client, p.Welcome]:
    """A client, and the welcome it got (the harness's ``Client.connect`` keeps no welcome)."""
    ws = await websockets_connect(server.url, max_size=None, compression=None)
    session = p.ClientSession(token=token, client="test")
    await ws.send(session.hello())
    events = session.receive(await asyncio.wait_for(ws.recv(), 30))
    assert isinstance(events[0], p.Welcome), events
    return Client(ws, session), events[0]


def studio(**alice) -> Users:
    return parse_users({"users": {"alice": {"token": ALICE, **alice}, "bob": {"token": BOB}}},
                       MODELS)


def test_a_token_names_its_user_and_nothing_else_does():
    users = studio()
    assert users.identify(ALICE).name == "alice" and users.identify(BOB).name == "bob"
    for wrong in (None, "", ALICE[:-1], ALICE + "x", 12, ["x"]):
        assert users.identify(wrong) is None
    assert ALICE not in repr(users.identify(ALICE))  # a user in a log line never shows its token


@pytest.mark.parametrize("entries, complaint", [
    ({}, "at least one user"),
    ({"a": {"token": "short"}}, "at least 12"),
    ({"a": {"token": ALICE}, "b": {"token": ALICE}}, "share a token"),
    ({"a": {"token": ALICE, "max_jobs": 0}}, "max_jobs"),
    ({"a": {"token": ALICE, "models": ["flux-dev"]}}, "flux-dev not served"),
    ({"a": {"token": ALICE, "tokn": "x"}}, "unknown field"),
    ({"a": "token"}, "expected"),
])
def test_a_bad_users_file_is_refused_with_what_to_fix(entries, complaint):
    with pytest.raises(ConfigError, match=complaint) as caught:
        parse_users({"users": entries}, MODELS)
    assert ALICE not in str(caught.value)


def test_the_users_file_is_read_and_bad_json_does_not_quote_a_token(tmp_path):
    good = tmp_path / "users.json"
    good.write_text(json.dumps({"users": {"alice": {"token": ALICE, "max_jobs": 2}}}))
    assert load_users(good, MODELS).identify(ALICE).max_jobs == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"users": {"alice": {"token": "' + ALICE + '",}}}')
    with pytest.raises(ConfigError, match="not valid JSON") as caught:
        load_users(bad, MODELS)
    assert ALICE not in str(caught.value)
    with pytest.raises(ConfigError, match="Cannot read"):
        load_users(tmp_path / "missing.json", MODELS)


@async_test
async def test_the_welcome_and_the_log_name_the_user_and_never_the_token(gated_pipe, caplog):
    caplog.set_level(logging.DEBUG)
    async with serving(gated_pipe, users=studio(models=["tiny-sd"])) as server:
        alice, welcome = await connect(server, token=ALICE)
        assert welcome.user == "alice" and welcome.capabilities.models == ["tiny-sd"]
        assert welcome.capabilities.token_required
        bob, welcome = await connect(server, token=BOB)
        assert welcome.user == "bob"
        await alice.close()
        await bob.close()
    assert re.search(r"client \d+ \(alice\) connected", caplog.text)
    assert ALICE not in caplog.text and BOB not in caplog.text


@async_test
async def test_a_wrong_token_is_refused_when_users_are_set(gated_pipe):
    async with serving(gated_pipe, users=studio()) as server:
        with pytest.raises(AssertionError):
            await Client.connect(server, token="not-anyones-token")
        with pytest.raises(AssertionError):
            await Client.connect(server)


@async_test
async def test_a_users_cap_counts_all_their_connections(gated_pipe):
    async with serving(gated_pipe, users=studio(max_jobs=2)) as server:
        gated_pipe.hold(2)
        first = await Client.connect(server, token=ALICE)
        second = await Client.connect(server, token=ALICE)
        image = make_test_image()
        await first.submit(image, gradient_map())
        await first.accepted()
        await second.submit(image, gradient_map())
        await second.accepted()
        await second.submit(image, gradient_map())
        refused = await second.error()
        assert refused.code == p.E_QUEUE_FULL
        bob = await Client.connect(server, token=BOB)  # another user's cap is their own
        await bob.submit(image, gradient_map())
        await bob.accepted()
        gated_pipe.release()
        for client in (first, second, bob):
            await client.close()


@async_test
async def test_a_user_may_only_use_their_models(gated_pipe):
    async with serving(gated_pipe, users=studio(models=["tiny-sdxl"]),
                       extra_models=("tiny-sdxl",)) as server:
        alice = await Client.connect(server, token=ALICE)
        await alice.submit(make_test_image(), gradient_map())  # the default model: tiny-sd
        refused = await alice.error()
        assert refused.code == p.E_UNKNOWN_MODEL and "alice" in refused.message
        await alice.send_json({"type": "load_model", "model": "tiny-sd"})
        assert (await alice.error()).code == p.E_UNKNOWN_MODEL
        await alice.send_json({"type": "list_models"})
        listed = await alice.next()
        assert listed.models == ["tiny-sdxl"] and set(listed.model_info) == {"tiny-sdxl"}
        await alice.close()
