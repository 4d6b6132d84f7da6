"""The docker and the model's own options, without Krita (Qt offscreen, under PyQt5 and PyQt6).

The server advertises each model's schedulers and options; the panel shows controls for the chosen
model's options and its scheduler list, and the controller puts the chosen values into the request.
Requests are read back through the server's own protocol.SubmitCollector (see plugin_fakes).
"""

from __future__ import annotations

import numpy as np
import pytest
from plugin_fakes import FakeCanvas, FakeHost, RecordingClient, caps, qapp

from krita_plugin.controller import Controller
from krita_plugin.docker import DiffDiffPanel
from krita_plugin.settings import DictStore
from shared import protocol

W, H = 48, 32
SD = ["DDIM", "Euler", "Euler a"]
FLOW = ["Euler", "Euler Karras"]
REFINER_SPLIT = protocol.OptionSpec("refiner_split", "float", 0.8, 0.0, 1.0, min_exclusive=True,
                                    label="Refiner split", help="Fraction of the steps on the base.")
IF_OPTIONS = [protocol.OptionSpec("stage_2", "bool", True, label="Stage II"),
              protocol.OptionSpec("num_inference_steps_2", "int", None, 1, 200, label="Stage II steps")]


@pytest.fixture(autouse=True)
def _app():
    return qapp()


def server_caps() -> protocol.Capabilities:
    return caps(models=["xl", "if", "flow"], current_model="xl", schedulers=SD,
                families=["sdxl", "if", "sd3"],
                model_info={"xl": protocol.ModelInfo("sdxl", SD, [REFINER_SPLIT]),
                            "if": protocol.ModelInfo("if", SD, IF_OPTIONS),
                            "flow": protocol.ModelInfo("sd3", FLOW, [], loaded=False)})


def make(store: DictStore | None = None, **settings):
    picture = np.full((H, W, 4), 120, np.uint8)
    client = RecordingClient(server_caps())
    c = Controller(FakeHost(FakeCanvas(picture), store), client=client)
    c.capabilities = client.session.capabilities
    c.connection_state = "connected"
    notices: list[tuple[str, str]] = []
    c.notice.connect(lambda level, text: notices.append((level, text)))
    c.update_settings(**{"prompt": "a red barn", "mode": "uniform", "strength": 0.5, **settings})
    return c, client, notices


def sent(client: RecordingClient) -> protocol.SubmitRequest:
    """The last request as the server parses it (options checked against its specs)."""
    return client.received().request


def test_chosen_options_go_into_the_request_for_the_model_that_takes_them():
    c, client, notices = make()
    assert c.generate(), notices
    assert sent(client).options is None  # nothing chosen: nothing sent, the server's defaults
    assert "options" not in protocol.loads(client.frames[-1][0])
    c.set_option("refiner_split", 0.5)
    c.set_option("stage_2", False)  # an IF option: not for the SDXL model
    assert c.generate(), notices
    assert sent(client).options == {"refiner_split": 0.5}
    c.update_settings(model="if")
    assert c.generate(), notices
    assert sent(client).options == {"stage_2": False}
    assert sent(client).model == "if"
    c.set_option("stage_2", None)  # back to the default
    assert c.generate() and sent(client).options is None
    # A stored value out of the model's range is not sent (the default applies).
    c.update_settings(model="", model_options='{"refiner_split": 7}')
    assert c.generate() and sent(client).options is None
    assert c.option_value(REFINER_SPLIT) == 0.8  # and the panel shows the default, not 7


def test_options_persist_with_the_settings():
    store = DictStore()
    c, *_ = make(store)
    c.set_option("refiner_split", 0.65)
    c2, client2, _ = make(store)
    assert c2.option_value(REFINER_SPLIT) == 0.65 and c2.chosen_options() == {"refiner_split": 0.65}
    c2.update_settings(model_options="{not json")
    assert c2.settings.validated().model_options == "" and c2.chosen_options() == {}


def test_panel_shows_the_models_options_and_sends_what_the_painter_sets():
    c, client, notices = make()
    panel = DiffDiffPanel(c.host, controller=c)
    assert not panel.options_box.isHidden()
    split = panel.option_widgets["refiner_split"]
    assert list(panel.option_widgets) == ["refiner_split"]
    assert split.value() == 0.8 and split.minimum() > 0.0 and split.maximum() == 1.0
    assert split.toolTip() == REFINER_SPLIT.help
    split.slider.setValue(50)  # the refiner split slider
    assert split.value() == 0.5
    assert c.generate(), notices
    assert sent(client).options == {"refiner_split": 0.5}

    # Another model: its own controls (IF: a stage II checkbox, stage II steps on 'auto').
    panel.model.setCurrentIndex(panel.model.findData("if"))
    panel.model.activated.emit(panel.model.currentIndex())
    assert list(panel.option_widgets) == ["stage_2", "num_inference_steps_2"]
    stage_2, steps_2 = panel.option_widgets["stage_2"], panel.option_widgets["num_inference_steps_2"]
    assert stage_2.isChecked() and steps_2.text() == "auto"
    assert panel.minimumSizeHint().width() <= 360  # still fits a docker column
    stage_2.setChecked(False)
    assert c.generate(), notices
    assert sent(client).options == {"stage_2": False}
    steps_2.setValue(12)
    assert c.generate() and sent(client).options == {"stage_2": False, "num_inference_steps_2": 12}
    steps_2.setValue(steps_2.minimum())  # back to 'auto': not sent
    assert c.generate() and sent(client).options == {"stage_2": False}

    # A model without options hides the box.
    panel.model.setCurrentIndex(panel.model.findData("flow"))
    panel.model.activated.emit(panel.model.currentIndex())
    assert panel.options_box.isHidden() and panel.option_widgets == {}


def test_scheduler_list_follows_the_model_and_a_stale_choice_is_not_sent():
    c, client, notices = make(scheduler="DDIM")
    panel = DiffDiffPanel(c.host, controller=c)
    items = lambda: [panel.scheduler.itemData(i) for i in range(1, panel.scheduler.count())]  # noqa: E731
    assert items() == SD and panel.scheduler.currentData() == "DDIM"
    panel.model.setCurrentIndex(panel.model.findData("flow"))
    panel.model.activated.emit(panel.model.currentIndex())
    assert items() == FLOW
    assert c.generate(), notices
    assert sent(client).scheduler is None  # DDIM does not run on a flow model: its own scheduler
    assert any("DDIM" in text and level == "warning" for level, text in notices)
    panel.scheduler.setCurrentIndex(panel.scheduler.findData("Euler Karras"))
    panel.scheduler.activated.emit(panel.scheduler.currentIndex())
    assert c.generate() and sent(client).scheduler == "Euler Karras"


def test_a_model_change_on_the_server_updates_schedulers_and_options():
    c, client, _ = make()
    panel = DiffDiffPanel(c.host, controller=c)
    assert list(panel.option_widgets) == ["refiner_split"]
    # The server loaded the flow model (a load, or another client's job): its real description.
    info = protocol.ModelInfo("sd3", FLOW, [protocol.OptionSpec("true_cfg_scale", "float", 1.0, 1.0, 50.0)])
    client.feed(protocol.ModelLoaded("flow", "sd3", 64, info))
    assert c.capabilities.current_model == "flow" and c.scheduler_names() == FLOW
    assert [panel.scheduler.itemData(i) for i in range(1, panel.scheduler.count())] == FLOW
    assert list(panel.option_widgets) == ["true_cfg_scale"]
    panel.option_widgets["true_cfg_scale"].setValue(3.0)
    assert c.generate() and sent(client).options == {"true_cfg_scale": 3.0}
