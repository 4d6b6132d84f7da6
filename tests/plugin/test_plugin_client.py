"""The plugin's websocket client against the REAL server (server.app, tiny-sd, in this process).

The server runs on its own asyncio loop in a thread on a free loopback port; the controller and
the client run as in Krita: UI objects on this (main) thread, network I/O on the client's thread,
events crossing back as queued Qt signals, pumped here with controller.pump_events.
"""

from __future__ import annotations

import asyncio
import io
import socket
import threading

import numpy as np
import pytest
from PIL import Image
from plugin_fakes import FakeCanvas, FakeHost, qapp

from krita_plugin import client as client_module
from krita_plugin import controller as controller_module
from krita_plugin import results as results_module
from krita_plugin.client import NotConnected, ServerClient
from krita_plugin.controller import Controller, pump_events
from krita_plugin.jobs import PREVIEW_LAYER_NAME
from krita_plugin.qt import QTimer
from server.app import ServerConfig, run_server
from shared import protocol

pytestmark = pytest.mark.timeout(180)

W = H = 64


class ServerThread:
    """server.app.run_server on its own loop and thread; stop() is the real shutdown path."""

    def __init__(self, pipe, port: int = 0, preview_every: int = 1) -> None:
        self.config = ServerConfig(model="tiny-sd", port=port, preview_every=preview_every)
        self.pipe = pipe
        self.url = ""
        self.port = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="test-server", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with run_server(self.config, loader=lambda _name: self.pipe) as server:
            self.url, self.port = server.url, server.port
            self._ready.set()
            await self._stop.wait()

    def start(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(60), "the server did not start"
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)


@pytest.fixture(autouse=True)
def _app():
    return qapp()


def picture() -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    bgra = np.stack([x * 4, y * 4, (x + y) * 2, np.full_like(x, 255)], -1).astype(np.uint8)
    return bgra


def controller_for(url: str) -> tuple[Controller, FakeCanvas, list]:
    canvas = FakeCanvas(picture())
    c = Controller(FakeHost(canvas), client=None)
    c.client.reconnect_delays = (0.05, 0.1, 0.2)
    events: list = []
    c.client.event.connect(events.append)
    c.update_settings(server_url=url, prompt="a lake", steps=3, random_seed=False, seed=5, preview_every=1,
                      mode="uniform", strength=0.7, variants=1)  # a new URL connects
    return c, canvas, events


class SocketThreads:
    """Record which threads do network I/O (TCP sockets; an event loop's wake-up socketpair, which
    call_soon_threadsafe writes from any thread, is not the network) while the test runs."""

    METHODS = ("connect", "connect_ex", "send", "sendall", "sendmsg", "recv", "recv_into", "accept")

    def __init__(self, monkeypatch) -> None:
        self.threads: set[str] = set()
        for name in self.METHODS:
            original = getattr(socket.socket, name)

            def wrapper(sock, *args, _original=original, **kwargs):
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    self.threads.add(threading.current_thread().name)
                return _original(sock, *args, **kwargs)

            monkeypatch.setattr(socket.socket, name, wrapper)


def threads_calling(monkeypatch, name: str, *modules) -> list[str]:
    """Wrap the function `name` (the first module's) in every module: the names of the threads that call it."""
    threads: list[str] = []
    real = getattr(modules[0], name)

    def wrapper(*args):
        threads.append(threading.current_thread().name)
        return real(*args)

    for module in modules:
        monkeypatch.setattr(module, name, wrapper)
    return threads


def test_client_runs_a_job_on_the_real_server_off_the_ui_thread(tiny_sd, monkeypatch):
    sockets = SocketThreads(monkeypatch)
    encoders = threads_calling(monkeypatch, "bgra_to_png", controller_module)
    decoders = threads_calling(monkeypatch, "png_to_bgra", client_module, results_module)
    server = ServerThread(tiny_sd).start()
    c, canvas, events = controller_for(server.url)
    try:
        assert c.wait_connected(60), c.connection_text
        assert c.capabilities.current_model == "tiny-sd" and "Connected" in c.connection_text
        outcome = c.run_job(timeout_s=120)
    finally:
        c.shutdown()
        server.stop()

    assert outcome.state == "done", (outcome.message, [type(e).__name__ for e in events])
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "Welcome" and "Accepted" in kinds and "Progress" in kinds
    assert "Preview" in kinds and "Result" in kinds and kinds[-1] == "Done"
    assert kinds.index("Preview") < kinds.index("Result")
    result = next(e for e in events if isinstance(e, protocol.Result))
    assert (result.seed, result.index) == (5, 0) and protocol.png_size(result.png) == (result.width, result.height)
    previews = kinds.count("Preview")
    # Drawn coalesced: at most as many as came (a result arriving first supersedes them), each
    # one drawn and then the result rewriting the job's layer, made empty at submit.
    assert previews >= 1 and outcome.previews <= previews and canvas.writes == outcome.previews + 1
    # One result layer, named after prompt and seed, holding the server's picture; no preview left.
    (layer,) = canvas.plugin_layers()
    assert layer.name == "a lake · seed 5 · strength 0.70" and layer.id == outcome.layer_ids[0]
    assert layer.bgra[..., 3].min() == 255
    # The layer's pixels are the server's PNG, decoded here with Pillow, in Krita's BGRA order.
    served = np.asarray(Image.open(io.BytesIO(result.png)).convert("RGBA"))[..., [2, 1, 0, 3]]
    assert result.region == protocol.Region(0, 0, W, H)
    np.testing.assert_array_equal(layer.bgra, served)
    assert c.history.entries[0].layer_id == layer.id and not c.busy
    # The network ran on the client's (and the server's) threads, never on the UI thread.
    assert "diffdiff-client" in sockets.threads
    assert threading.main_thread().name not in sockets.threads, sockets.threads
    # So did encoding the canvas to PNG (a second for a 4K canvas).
    assert len(encoders) == 1 and encoders[0] != threading.main_thread().name
    # And decoding what came back: every preview and the result, none on the UI thread.
    assert len(decoders) == previews + 1 and threading.main_thread().name not in decoders


def test_client_reconnects_by_itself_after_a_server_restart(tiny_sd):
    first = ServerThread(tiny_sd, preview_every=0).start()
    c, canvas, events = controller_for(first.url)
    states: list[str] = []
    c.client.state_changed.connect(lambda state, _text: states.append(state))
    try:
        assert c.wait_connected(60), c.connection_text
        # A job in flight when the server goes down ends cleanly (cancelled by the server, or lost).
        c.update_settings(steps=200)
        running = c.submit_job(c.prepare_job())
        first.stop()
        assert pump_events(lambda: c.connection_state != "connected" and running.finished, 30), states
        assert running.state in ("cancelled", "lost") and not c.busy
        assert not [la for la in canvas.plugin_layers() if la.name == PREVIEW_LAYER_NAME]

        second = ServerThread(tiny_sd, port=first.port, preview_every=0).start()
        try:
            # Nobody calls connect: the client retries on its own until the new server answers.
            assert pump_events(lambda: c.connection_state == "connected" and c.capabilities is not None, 30), states
            assert "disconnected" in states and states[-1] == "connected"
            c.update_settings(steps=2)
            outcome = c.run_job(timeout_s=120)
            assert outcome.state == "done" and len(outcome.layer_ids) == 1
        finally:
            second.stop()
    finally:
        c.shutdown()
        first.stop()


def test_ui_thread_never_waits_for_a_server_that_does_not_answer():
    # A TCP listener that accepts and never speaks: the websocket handshake hangs forever.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    client = ServerClient(reconnect_delays=(0.05,))
    states: list[str] = []
    client.state_changed.connect(lambda state, _text: states.append(state))
    ticks: list[str] = []
    try:
        client.connect_to(f"ws://127.0.0.1:{port}")  # returns at once
        # Meanwhile the UI thread keeps running its own events (a QTimer fires) while connecting.
        QTimer.singleShot(0, lambda: ticks.append("tick"))
        assert pump_events(lambda: ticks and states, 10)
        conn, _ = listener.accept()  # the client really is waiting on it
        assert pump_events(lambda: False, 0.2) is False  # a little longer: still waiting, UI still free
        assert ticks == ["tick"] and states == ["connecting"] and client.state == "connecting"
        with pytest.raises(NotConnected):  # submit refuses at once instead of waiting
            client.submit(protocol.SubmitRequest(ref=0, width=8, height=8, mode="uniform", strength=0.5),
                          b"", None)
        client.close(timeout_s=5)
        assert client._thread is None
        conn.close()
    finally:
        listener.close()


def test_a_wrong_token_is_refused_with_a_message_and_not_retried(tiny_sd):
    server = ServerThread(tiny_sd)
    server.config.token = "right"
    server.start()
    c, _, _ = controller_for(server.url)
    try:
        c.update_settings(token="wrong")
        assert pump_events(lambda: c.connection_state == "refused", 30), c.connection_text
        assert "token" in c.connection_text.lower() and not c.capabilities
        c.update_settings(token="right")  # new settings: tries again
        assert c.wait_connected(30), c.connection_text
    finally:
        c.shutdown()
        server.stop()


def test_the_connection_line_names_the_studio_user_the_token_belongs_to(tiny_sd):
    from server.users import parse_users

    server = ServerThread(tiny_sd)
    server.config.users = parse_users({"users": {"anna": {"token": "annas-long-secret"},
                                                 "ben": {"token": "bens-long-secret"}}}, ["tiny-sd"])
    server.start()
    c, _, _ = controller_for(server.url)
    try:
        c.update_settings(token="bens-long-secret")
        assert c.wait_connected(30), c.connection_text
        assert " as ben " in c.connection_text and "anna" not in c.connection_text
        assert "secret" not in c.connection_text
    finally:
        c.shutdown()
        server.stop()


def _slow(encode, seconds: float):
    def slow(*args):
        threading.Event().wait(seconds)  # a big canvas takes a while to encode
        return encode(*args)

    return slow


def test_cancel_right_after_generate_never_overtakes_the_submit(tiny_sd, monkeypatch):
    monkeypatch.setattr(controller_module, "bgra_to_png", _slow(controller_module.bgra_to_png, 0.3))
    server = ServerThread(tiny_sd, preview_every=0).start()
    c, canvas, events = controller_for(server.url)
    try:
        assert c.wait_connected(60), c.connection_text
        c.update_settings(steps=100)
        outcome = c.submit_job(c.prepare_job())
        c.cancel()  # still encoding: the cancel (by ref) must reach the server after the submit
        c.wait_for(outcome, 60)
    finally:
        c.shutdown()
        server.stop()
    assert outcome.state == "cancelled", (outcome.message, [type(e).__name__ for e in events])
    assert not any(isinstance(e, protocol.Error) for e in events) and not c.busy
    assert [la.owner for la in canvas.layers_] == ["painter"]


def test_a_picture_that_cannot_be_encoded_ends_the_job_with_a_message(tiny_sd, monkeypatch):
    def broken(*_args):
        raise ValueError("no memory for the PNG")

    monkeypatch.setattr(controller_module, "bgra_to_png", broken)
    server = ServerThread(tiny_sd, preview_every=0).start()
    c, canvas, _ = controller_for(server.url)
    notices: list[str] = []
    c.notice.connect(lambda _level, text: notices.append(text))
    try:
        assert c.wait_connected(60), c.connection_text
        outcome = c.run_job(timeout_s=30)
    finally:
        c.shutdown()
        server.stop()
    assert outcome.state == "error" and "no memory for the PNG" in outcome.message
    assert "Could not prepare the picture" in notices[-1] and not c.busy


def test_an_address_that_is_not_a_websocket_url_is_refused_not_retried():
    client = ServerClient(reconnect_delays=(0.01,))
    states: list[tuple[str, str]] = []
    client.state_changed.connect(lambda state, text: states.append((state, text)))
    try:
        client.connect_to("localhost:7860")  # no ws:// in front
        # (the state is set on the client's thread; its signal reaches this thread a moment later)
        assert pump_events(lambda: bool(states) and states[-1][0] == "refused", 10), states
        assert "not a websocket address" in states[-1][1] and "ws://127.0.0.1:7860" in states[-1][1]
        assert pump_events(lambda: False, 0.2) is False  # and it does not try again by itself
        assert [s for s, _ in states].count("connecting") == 1 and client.state == "refused"
    finally:
        client.close(timeout_s=5)


def test_the_client_keeps_retrying_after_its_list_of_delays_runs_out():
    qapp()
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = ServerClient(reconnect_delays=(0.01, 0.02))
    states: list[tuple[str, str]] = []
    client.state_changed.connect(lambda state, text: states.append((state, text)))
    try:
        client.connect_to(f"ws://127.0.0.1:{port}")
        # Many more attempts than delays listed: the last delay repeats, the loop never dies.
        assert pump_events(lambda: [s for s, _ in states].count("connecting") >= 6, 20), states
        assert client._thread is not None and client._thread.is_alive()
        text = next(t for s, t in states if s == "disconnected")
        assert "Is it running?" in text and "Errno" not in text  # the painter's words, not the socket's
    finally:
        client.close(timeout_s=5)


def test_shutdown_says_goodbye_with_a_close_frame(tiny_sd, caplog):
    """Krita quitting (controller.shutdown) closes the websocket properly: the server sees a clean
    close, not a connection that vanished (which it logs as 'connection closed (...)')."""
    caplog.set_level("INFO", logger="server")
    server = ServerThread(tiny_sd).start()
    c, _canvas, _events = controller_for(server.url)
    try:
        assert c.wait_connected(60), c.connection_text
        c.shutdown()
        assert pump_events(lambda: any("disconnected" in r.getMessage() for r in caplog.records), 10)
    finally:
        server.stop()
    server_lines = [r.getMessage() for r in caplog.records if r.name.startswith("server")]
    assert any(line.endswith("disconnected") for line in server_lines), server_lines
    assert not [line for line in server_lines if "connection closed" in line], server_lines
