"""Model families and their options: what the server advertises, how submit.options is checked,
and that an option reaches the pipeline (same pixels as calling the pipeline with it directly).

Protocol checks are unit tests; the rest runs the real in-process server on loopback with tiny
models (tiny-sdxl + refiner, tiny-if, tiny-sd3), a few steps at 64x64.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from server.app import ServerConfig, run_server
from server.families import FAMILIES, describe, guess_info
from server.pipelines.flow import FLOW_SCHEDULER_NAMES
from server.schedulers import SCHEDULER_NAMES
from shared import protocol as p
from tests.conftest import make_test_image
from tests.server.server_harness import NEGATIVE, PROMPT, Client, async_test, decode, gradient_map, of

pytestmark = pytest.mark.timeout(120)

REFINER_SPLIT = p.OptionSpec("refiner_split", "float", 0.8, 0.0, 1.0, min_exclusive=True,
                             label="Refiner split")
STAGE_2 = p.OptionSpec("stage_2", "bool", True, label="Stage II")
STEPS_2 = p.OptionSpec("num_inference_steps_2", "int", None, 1, 200, label="Stage II steps")


# -- protocol (unit) -------------------------------------------------------------------------------


def test_options_are_checked_against_the_specs():
    specs = [REFINER_SPLIT, STAGE_2, STEPS_2]
    assert p.check_options({"refiner_split": 0.5, "stage_2": False, "num_inference_steps_2": 3},
                           specs) == {"refiner_split": 0.5, "stage_2": False,
                                      "num_inference_steps_2": 3}
    assert p.check_options({"refiner_split": 1}, specs) == {"refiner_split": 1.0}  # int is a number
    assert p.check_options({"refiner_split": None}, specs) == {}  # null: the default
    bad = [
        ({"refiner_splt": 0.5}, "unknown option 'refiner_splt'"),
        ({"refiner_split": 0.0}, "out of range (0, 1]"),  # 0 excluded
        ({"refiner_split": 1.5}, "out of range (0, 1]"),
        ({"refiner_split": True}, "must be a number, got a boolean"),
        ({"refiner_split": "0.5"}, "must be a number, got a string"),
        ({"stage_2": 0}, "must be true or false"),
        ({"num_inference_steps_2": 2.5}, "must be an integer"),
        ({"num_inference_steps_2": 0}, "out of range [1, 200]"),
        ({f"o{i}": 1 for i in range(p.MAX_OPTIONS + 1)}, "at most"),
    ]
    for options, words in bad:
        with pytest.raises(p.ProtocolError) as exc:
            p.check_options(options, specs, "tiny-sdxl")
        assert exc.value.code == p.E_BAD_OPTION and words in exc.value.message, exc.value.message
    with pytest.raises(p.ProtocolError, match="takes no options"):
        p.check_options({"stage_2": True}, [], "tiny-sd")
    # Unknown specs (a model not loaded yet): only the shape is checked.
    assert p.check_options({"anything": 2}, None) == {"anything": 2}
    with pytest.raises(p.ProtocolError, match="true, false or a number"):
        p.check_options({"anything": [1]}, None)


def caps_with_info() -> p.Capabilities:
    return p.Capabilities(
        models=["xl", "flow", "later"], current_model="xl", schedulers=list(SCHEDULER_NAMES),
        families=list(FAMILIES), native_resolution=64,
        model_info={"xl": p.ModelInfo("sdxl", list(SCHEDULER_NAMES), [REFINER_SPLIT]),
                    "flow": p.ModelInfo("sd3", list(FLOW_SCHEDULER_NAMES), []),
                    "later": p.ModelInfo("sd", list(SCHEDULER_NAMES), [], loaded=False)})


def submit(**fields: Any) -> dict[str, Any]:
    return {"type": "submit", "ref": 3, "width": 64, "height": 64, **fields}


def test_submit_options_and_schedulers_follow_the_target_model():
    caps = p.Capabilities.from_dict(json.loads(json.dumps(caps_with_info().to_dict())))
    assert caps.info_for().options == [REFINER_SPLIT]
    assert caps.info_for("later").loaded is False

    request = p.parse_submit(submit(options={"refiner_split": 0.5}), caps)
    assert request.options == {"refiner_split": 0.5}
    assert p.parse_submit(request.to_message(), caps).options == {"refiner_split": 0.5}
    assert "options" not in p.parse_submit(submit(), caps).to_message()  # old servers see nothing new
    assert p.parse_submit(submit(), caps).options is None
    # The options of the model the job names, not the current one.
    with pytest.raises(p.ProtocolError) as exc:
        p.parse_submit(submit(model="flow", options={"refiner_split": 0.5}), caps)
    assert (exc.value.code, exc.value.ref) == (p.E_BAD_OPTION, 3)
    assert "'flow'" in exc.value.message and "takes no options" in exc.value.message
    # A model whose options are not known yet: the shape only (the server checks once loaded).
    assert p.parse_submit(submit(model="later", options={"x": 1}), caps).options == {"x": 1}
    with pytest.raises(p.ProtocolError, match="'options' must be an object"):
        p.parse_submit(submit(options=[0.5]), caps)
    # Schedulers: the named model's list.
    assert p.parse_submit(submit(model="flow", scheduler="Euler Karras"), caps).scheduler
    with pytest.raises(p.ProtocolError) as exc:
        p.parse_submit(submit(model="flow", scheduler="DDIM"), caps)
    assert exc.value.code == p.E_UNKNOWN_SCHEDULER and "Euler Karras" in exc.value.message
    with pytest.raises(p.ProtocolError, match="Unknown scheduler 'Euler Karras' for model 'xl'"):
        p.parse_submit(submit(scheduler="Euler Karras"), caps)


def test_model_loaded_updates_the_clients_schedulers_and_options():
    session = p.ClientSession()
    caps = caps_with_info()
    session.receive(p.dumps(p.welcome(caps)))
    info = p.ModelInfo("sd3", list(FLOW_SCHEDULER_NAMES), [])
    (event,) = session.receive(p.dumps(p.model_loaded("flow", "sd3", 64, info)))
    assert isinstance(event, p.ModelLoaded) and event.info == info
    assert session.capabilities.current_model == "flow"
    assert session.capabilities.schedulers == list(FLOW_SCHEDULER_NAMES)
    request = p.SubmitRequest(ref=0, width=64, height=64, scheduler="DDIM")
    with pytest.raises(p.ProtocolError, match="Unknown scheduler 'DDIM' for model 'flow'"):
        session.submit(request, b"", None)
    # An old server's model_loaded (no schedulers/options) keeps what the client knew.
    (event,) = session.receive(p.dumps(p.model_loaded("xl", "sdxl", 64)))
    assert event.info is None and session.capabilities.info_for().options == [REFINER_SPLIT]
    assert session.capabilities.schedulers == list(SCHEDULER_NAMES)


def test_option_specs_from_a_server_are_validated():
    with pytest.raises(p.ProtocolError, match="unknown type 'str'"):
        p.OptionSpec.from_dict({"name": "x", "type": "str"})
    with pytest.raises(p.ProtocolError, match="out of range"):
        p.OptionSpec.from_dict({"name": "x", "type": "float", "min": 0, "max": 1, "default": 2})
    assert p.OptionSpec.from_dict(REFINER_SPLIT.to_dict()) == REFINER_SPLIT
    assert p.OptionSpec.from_dict({"name": "x", "type": "bool"}).label == "x"


# -- what the pipelines say ------------------------------------------------------------------------


def test_families_and_options_come_from_the_pipelines(tiny_sd, tiny_sdxl, tiny_sdxl_refined,
                                                       tiny_if, tiny_sd3):
    assert set(FAMILIES) == {"sd", "sdxl", "sd3", "flux", "kandinsky22", "if"}
    assert describe(tiny_sd) == p.ModelInfo("sd", list(SCHEDULER_NAMES), [])
    assert describe(tiny_sdxl).options == []  # no refiner, no split
    (split,) = describe(tiny_sdxl_refined).options
    assert (split.name, split.type, split.default, split.min, split.max, split.min_exclusive) == \
        ("refiner_split", "float", 0.8, 0.0, 1.0, True)
    if_info = describe(tiny_if)
    assert [o.name for o in if_info.options] == ["stage_2", "num_inference_steps_2",
                                                 "guidance_scale_2"]  # tiny-if has no stage III
    assert if_info.schedulers == list(SCHEDULER_NAMES)
    assert describe(tiny_sd3) == p.ModelInfo("sd3", list(FLOW_SCHEDULER_NAMES), [])
    # Before loading: family and schedulers from the id.
    assert guess_info("tiny-flux") == p.ModelInfo("flux", list(FLOW_SCHEDULER_NAMES), [], False)
    assert guess_info("tiny-kandinsky22").family == "kandinsky22"
    assert guess_info("stabilityai/stable-diffusion-xl-base-1.0").family == "sdxl"
    assert guess_info("stable-diffusion-v1-5/stable-diffusion-v1-5").family == "sd"


# -- over the real server --------------------------------------------------------------------------


async def run_job(client: Client, image, change, **fields: Any) -> list[p.Event]:
    await client.submit(image, change, **fields)
    accepted = await client.accepted()
    return await client.until_end(accepted.job_id)


def direct(pipe, image, change, seed: int, **kwargs: Any) -> np.ndarray:
    out = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=image, change_map=change,
               num_inference_steps=3, guidance_scale=5.0, num_images_per_prompt=1,
               generator=[torch.Generator("cpu").manual_seed(seed)], **kwargs)
    return np.asarray(out.images[0])


@async_test
async def test_sdxl_refiner_split_is_advertised_and_reaches_the_pipeline(tiny_sdxl_refined):
    image, change = make_test_image(64, 64, seed=5), gradient_map()
    config = ServerConfig(model="tiny-sdxl", port=0)
    async with run_server(config, lambda name: tiny_sdxl_refined) as server:
        client = await Client.connect(server)
        info = client.session.capabilities.info_for()
        assert info.family == "sdxl" and [o.name for o in info.options] == ["refiner_split"]
        assert info.options[0].default == 0.8
        events = await run_job(client, image, change, seed=21, options={"refiner_split": 0.5})
        default_events = await run_job(client, image, change, seed=21)
    assert isinstance(events[-1], p.Done), events[-1]
    (result,) = of(events, p.Result)
    got = decode(result.png)
    np.testing.assert_array_equal(got, direct(tiny_sdxl_refined, image, change, 21,
                                              refiner_split=0.5))
    (default,) = of(default_events, p.Result)
    assert not np.array_equal(got, decode(default.png))  # the option changed the run


@async_test
async def test_if_stage_2_off_gives_the_stage_1_result_like_the_direct_call(tiny_if):
    image, change = make_test_image(64, 64, seed=6), gradient_map()
    config = ServerConfig(model="tiny-if", port=0)
    async with run_server(config, lambda name: tiny_if) as server:
        client = await Client.connect(server)
        info = client.session.capabilities.info_for()
        assert info.family == "if"
        assert {o.name: o.type for o in info.options} == {
            "stage_2": "bool", "num_inference_steps_2": "int", "guidance_scale_2": "float"}
        events = await run_job(client, image, change, seed=8, options={"stage_2": False})
        both = await run_job(client, image, change, seed=8)
    assert isinstance(events[-1], p.Done), events[-1]
    assert events[-1].steps_run < both[-1].steps_run  # stage II did not run
    (result,) = of(events, p.Result)
    got = decode(result.png)
    assert got.shape == (64, 64, 3)
    np.testing.assert_array_equal(got, direct(tiny_if, image, change, 8, stage_2=False))
    np.testing.assert_array_equal(decode(of(both, p.Result)[0].png),
                                  direct(tiny_if, image, change, 8))
    assert not np.array_equal(got, decode(of(both, p.Result)[0].png))


@async_test
async def test_flow_model_advertises_its_schedulers_and_refuses_ddim(tiny_sd3):
    image, change = make_test_image(64, 64, seed=7), gradient_map()
    async with run_server(ServerConfig(model="tiny-sd3", port=0), lambda name: tiny_sd3) as server:
        client = await Client.connect(server)
        caps = client.session.capabilities
        assert caps.schedulers == list(FLOW_SCHEDULER_NAMES) == caps.info_for().schedulers
        assert "DDIM" not in caps.schedulers
        # The plugin's session refuses it before sending; sent anyway, the server refuses it.
        with pytest.raises(p.ProtocolError, match="DDIM"):
            await client.submit(image, change, scheduler="DDIM")
        message = p.SubmitRequest(ref=40, width=64, height=64, scheduler="DDIM").to_message()
        await client.send_json(message)
        error = await client.error()
        assert (error.code, error.ref) == (p.E_UNKNOWN_SCHEDULER, 40)
        assert "'DDIM'" in error.message and "Euler Karras" in error.message
        events = await run_job(client, image, change, seed=3, scheduler="Euler Karras")
    assert isinstance(events[-1], p.Done)
    np.testing.assert_array_equal(decode(of(events, p.Result)[0].png),
                                  direct(tiny_sd3, image, change, 3, scheduler="Euler Karras"))


@async_test
async def test_bad_options_get_errors_to_that_client_and_the_server_goes_on(tiny_sdxl_refined):
    image, change = make_test_image(64, 64, seed=9), gradient_map()
    config = ServerConfig(model="tiny-sdxl", port=0)
    async with run_server(config, lambda name: tiny_sdxl_refined) as server:
        a, b = await Client.connect(server), await Client.connect(server)
        bad = [{"refiner_split": 0}, {"refiner_split": 1.5}, {"refiner_split": "half"},
               {"refiner_split": True}, {"stage_2": False}, [0.5], "0.5"]
        for ref, options in enumerate(bad, start=100):
            message = p.SubmitRequest(ref=ref, width=64, height=64).to_message()
            await a.send_json({**message, "options": options})
            error = await a.error()
            code = p.E_BAD_MESSAGE if not isinstance(options, dict) else p.E_BAD_OPTION
            assert (error.code, error.ref) == (code, ref), (options, error)
            assert "option" in error.message
        events_a = await run_job(a, image, change, seed=1, options={"refiner_split": 0.9})
        events_b = await run_job(b, image, change, seed=1)
    assert isinstance(events_a[-1], p.Done) and isinstance(events_b[-1], p.Done)
    assert not of(b.seen, p.Error)


@async_test
async def test_model_change_updates_what_every_client_sees(tiny_sd, tiny_sd3):
    image, change = make_test_image(64, 64, seed=2), gradient_map()
    pipes = {"tiny-sd": tiny_sd, "tiny-sd3": tiny_sd3}
    config = ServerConfig(model="tiny-sd", port=0, extra_models=("tiny-sd3",))
    async with run_server(config, pipes.__getitem__) as server:
        a, b = await Client.connect(server), await Client.connect(server)
        caps = a.session.capabilities
        assert caps.schedulers == list(SCHEDULER_NAMES)
        guessed = caps.info_for("tiny-sd3")  # not loaded yet: family and schedulers from its id
        assert (guessed.family, guessed.schedulers, guessed.loaded) == \
            ("sd3", list(FLOW_SCHEDULER_NAMES), False)
        # Options for a model not loaded yet pass the submit check; the worker checks them once
        # it has loaded the model, and refuses this job alone.
        await a.submit(image, change, model="tiny-sd3", options={"refiner_split": 0.5})
        accepted = await a.accepted()
        events = await a.until_end(accepted.job_id)
        assert isinstance(events[-1], p.Error) and events[-1].code == p.E_BAD_OPTION
        assert "tiny-sd3" in events[-1].message and "takes no options" in events[-1].message
        # That job loaded tiny-sd3: both clients were told, with its schedulers.
        for client in (a, b):
            loaded = of(client.seen, p.ModelLoaded) or [
                e for e in await client.until(lambda e: isinstance(e, p.ModelLoaded))
                if isinstance(e, p.ModelLoaded)]
            assert loaded[-1].model == "tiny-sd3"
            assert loaded[-1].info.schedulers == list(FLOW_SCHEDULER_NAMES)
            assert client.session.capabilities.schedulers == list(FLOW_SCHEDULER_NAMES)
            assert client.session.capabilities.info_for().loaded
        late = await Client.connect(server)
        assert late.session.capabilities.current_model == "tiny-sd3"
        assert late.session.capabilities.schedulers == list(FLOW_SCHEDULER_NAMES)
        # Back to tiny-sd by load_model: the requester hears it once, the other client too.
        await b.ws.send(b.session.load_model("tiny-sd"))
        event = await b.next()
        assert isinstance(event, p.ModelLoaded) and event.info.schedulers == list(SCHEDULER_NAMES)
        event = await a.next()
        assert isinstance(event, p.ModelLoaded) and event.model == "tiny-sd"
        await b.ws.send(b.session.list_models())
        models = await b.next()
        assert models.model_info["tiny-sd3"].loaded and models.current_model == "tiny-sd"
        events = await run_job(a, image, change, seed=4, scheduler="DDIM")
        assert isinstance(events[-1], p.Done)
        assert not of(b.seen, p.Error)


@async_test
async def test_the_servers_own_loader_adds_a_refiner_and_advertises_its_split():
    from server.__main__ import parse_args

    assert parse_args(["--model", "tiny-sdxl", "--refiner", "tiny-sdxl-refiner"]).refiner == \
        "tiny-sdxl-refiner"
    config = ServerConfig(model="tiny-sdxl", refiner="tiny-sdxl-refiner", port=0)
    async with run_server(config) as server:  # the default loader: server.models.load_pipeline
        client = await Client.connect(server)
        info = client.session.capabilities.info_for()
        assert info.family == "sdxl" and [o.name for o in info.options] == ["refiner_split"]


@pytest.mark.parametrize("model, options", [
    ("tiny-kandinsky22", {"prior_num_inference_steps": 2, "prior_guidance_scale": 2.5}),
    ("tiny-flux", {"true_cfg_scale": 2.0}),
])
@async_test
async def test_kandinsky_and_flux_options_reach_the_pipeline(model, options):
    from server.models import load_pipeline

    pipe = load_pipeline(model)
    image, change = make_test_image(64, 64, seed=10), gradient_map()
    async with run_server(ServerConfig(model=model, port=0), lambda name: pipe) as server:
        client = await Client.connect(server)
        advertised = {o.name: o for o in client.session.capabilities.info_for().options}
        assert set(advertised) == set(options)
        events = await run_job(client, image, change, seed=12, options=options)
    assert isinstance(events[-1], p.Done), events[-1]
    got = decode(of(events, p.Result)[0].png)
    np.testing.assert_array_equal(got, direct(pipe, image, change, 12, **options))
    assert not np.array_equal(got, direct(pipe, image, change, 12))  # the options mattered
