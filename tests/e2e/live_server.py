"""The real server as a subprocess for the end-to-end and GUI tests: `python -m server --model
tiny-sd` on a free loopback port, ready once it answers a protocol handshake.

Loaded by path (tests/ is not a package); runs in the test environment, not inside Krita.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
START_TIMEOUT_S = 180


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    """A real protocol handshake: hello -> welcome."""
    from websockets.sync.client import connect

    from shared import protocol

    try:
        with connect(url, open_timeout=2, close_timeout=1) as ws:
            session = protocol.ClientSession(client="e2e-probe")
            ws.send(session.hello())
            events = session.receive(ws.recv(timeout=5))
            return any(isinstance(ev, protocol.Welcome) for ev in events)
    except Exception:  # not up yet: refused, reset, or closed mid-handshake
        return False


@contextlib.contextmanager
def running_server(log_path: Path, model: str = "tiny-sd") -> Iterator[str]:
    """Start the server, yield its ws:// URL once it answers, stop it (SIGTERM) afterwards."""
    port = free_loopback_port()
    url = f"ws://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--model", model, "--host", "127.0.0.1", "--port", str(port),
             "--device", "cpu"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer on {url}:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
