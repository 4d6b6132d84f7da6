"""``python -m server`` as a real process: refusing an open bind, and a graceful shutdown."""

from __future__ import annotations

import asyncio
import functools
import io
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from shared import protocol as p
from tests.conftest import make_test_image

pytestmark = pytest.mark.timeout(180)

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT_S = 60  # safety net for a hung server; none of these waits comes near it


def async_test(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def server_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "server", *args]


def test_public_bind_without_token_exits_nonzero_with_the_reason():
    done = subprocess.run(server_command("--host", "0.0.0.0"), cwd=ROOT, capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    assert done.returncode != 0
    assert "Refusing to listen on '0.0.0.0' without a token" in done.stderr
    assert "--token" in done.stderr
    assert "loading" not in done.stderr  # refused before the (slow) model load


async def start_server(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        *server_command("--model", "tiny-sd", "--port", "0", "--device", "cpu", *args),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT_S)).decode()
        if not line:
            stderr = (await proc.stderr.read()).decode()
            raise AssertionError(f"the server exited before listening:\n{stderr}")
        match = re.match(r"listening on (ws://\S+)", line)
        if match:
            return proc, match.group(1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
@async_test
async def test_signal_cancels_the_running_job_tells_the_client_and_exits_zero(sig):
    proc, url = await start_server()
    try:
        async with connect(url, max_size=None) as ws:
            session = p.ClientSession()
            await ws.send(session.hello())
            assert isinstance(session.receive(await ws.recv())[0], p.Welcome)
            request = p.SubmitRequest(ref=0, width=64, height=64, mode="uniform", strength=1.0,
                                      steps=200, seed=1, preview_every=0)
            for data in session.submit(request, png_bytes(make_test_image())):
                await ws.send(data)
            events: list[p.Event] = []
            while not any(isinstance(e, p.Progress) for e in events):
                events += session.receive(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
            job_id = events[0].job_id

            proc.send_signal(sig)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    events += session.receive(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
        assert closed.value.rcvd.code == p.CLOSE_GOING_AWAY
        ends = [e for e in events if isinstance(e, (p.Done, p.Cancelled, p.Error))]
        assert len(ends) == 1 and isinstance(ends[0], p.Cancelled)
        assert ends[0].job_id == job_id and "shutting down" in ends[0].reason
        code = await asyncio.wait_for(proc.wait(), TIMEOUT_S)
        stderr = (await proc.stderr.read()).decode()
        assert code == 0, stderr
        assert "shutting down: cancelling jobs and closing connections" in stderr
        assert re.search(rf"job {job_id} cancelled \(the server is shutting down\)", stderr)
        assert stderr.rstrip().endswith("stopped")
        assert "Traceback" not in stderr
        # transformers' torchvision fallback notice is about parts the server never uses.
        assert "torchvision" not in stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_every_option_reaches_the_servers_config(monkeypatch):
    # The server itself is replaced here (it has its own tests): what is checked is the wiring.
    import torch

    import server.__main__ as cli
    import server.app

    built = []

    async def served(server) -> None:
        built.append(server)

    monkeypatch.setattr(server.app, "DiffusionServer", lambda config: config)
    monkeypatch.setattr(cli, "serve_until_signal", served)
    code = cli.main(["--model", "tiny-sdxl", "--refiner", "tiny-sdxl-refiner", "--allow-model", "a",
                     "--allow-model", "b", "--host", "0.0.0.0", "--port", "9123", "--token", "tok",
                     "--device", "cuda", "--preview-every", "3", "--max-pixels", "70000",
                     "--max-message-bytes", "123456", "--max-region-pixels", "4096",
                     "--max-unread-bytes", "999"])
    assert code == 0
    (config,) = built
    assert (config.model, config.refiner, config.extra_models) == ("tiny-sdxl", "tiny-sdxl-refiner", ("a", "b"))
    assert (config.host, config.port, config.token, config.device) == ("0.0.0.0", 9123, "tok", "cuda")
    assert config.dtype == torch.float16  # auto: half precision on a GPU
    assert (config.preview_every, config.max_pixels, config.max_message_bytes, config.max_region_pixels) == \
        (3, 70000, 123456, 4096)
    assert config.max_unread_bytes == 999
    built.clear()
    assert cli.main(["--device", "cpu", "--dtype", "auto"]) == 0 and built[0].dtype == torch.float32
    built.clear()
    assert cli.main(["--device", "cpu", "--dtype", "bfloat16"]) == 0 and built[0].dtype == torch.bfloat16


# --- the token: from a file or the environment, never on the command line ----------------------

SECRET = "correct-horse-battery-staple"


def test_the_token_comes_from_a_file_or_the_environment_and_a_command_line_token_is_warned(
        monkeypatch, tmp_path, caplog):
    import server.__main__ as cli
    import server.app

    built = []

    async def served(server) -> None:
        built.append(server)

    monkeypatch.setattr(server.app, "DiffusionServer", lambda config: config)
    monkeypatch.setattr(cli, "serve_until_signal", served)
    monkeypatch.delenv(cli.TOKEN_ENV, raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(SECRET + "\n")  # an editor's final newline is not part of it
    assert cli.main(["--device", "cpu", "--token-file", str(token_file)]) == 0
    assert built.pop().token == SECRET
    monkeypatch.setenv(cli.TOKEN_ENV, "from-env")
    assert cli.main(["--device", "cpu"]) == 0 and built.pop().token == "from-env"
    assert cli.main(["--device", "cpu", "--token-file", str(token_file)]) == 0
    assert built.pop().token == SECRET  # the command line wins over the environment
    assert "visible" not in caplog.text
    # --token still works, with a warning that says what to do instead (and not the token).
    assert cli.main(["--device", "cpu", "--token", SECRET]) == 0 and built.pop().token == SECRET
    assert "--token-file" in caplog.text and cli.TOKEN_ENV in caplog.text
    assert SECRET not in caplog.text and SECRET not in repr(built)
    # Unusable tokens are refused before anything loads.
    monkeypatch.delenv(cli.TOKEN_ENV)
    (tmp_path / "empty").write_text("\n")
    for argv in (["--token-file", str(tmp_path / "empty")], ["--token-file", str(tmp_path / "missing")],
                 ["--token", "a", "--token-file", str(token_file)]):
        assert cli.main(["--device", "cpu", *argv]) == 2, argv
    assert built == []


@async_test
async def test_a_token_from_a_file_is_in_no_process_list_and_no_log(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(SECRET)
    proc, url = await start_server("--token-file", str(token_file))
    try:
        cmdline = pathlib.Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert str(token_file).encode() in cmdline and SECRET.encode() not in cmdline
        for token, welcome in ((None, False), (SECRET, True)):
            async with connect(url) as ws:
                session = p.ClientSession(token=token)
                await ws.send(session.hello())
                (event,) = session.receive(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
                assert isinstance(event, p.Welcome) == welcome, event
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), TIMEOUT_S) == 0
        stderr = (await proc.stderr.read()).decode()
        assert "token required" in stderr and SECRET not in stderr and "Traceback" not in stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
