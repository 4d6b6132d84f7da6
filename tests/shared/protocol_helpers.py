"""Small builders the protocol tests share: PNG bytes, capabilities, a submit message."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from shared import protocol as p


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), (10, 20, 30) if mode == "RGB" else 0).save(buf, "PNG")
    return buf.getvalue()


def caps(**kw) -> p.Capabilities:
    base = dict(models=["tiny-sd"], current_model="tiny-sd", schedulers=["DDIM", "Euler"],
                families=["sd"], max_pixels=256 * 256)
    base.update(kw)
    return p.Capabilities(**base)


def submit_msg(**kw) -> dict:
    message = {"type": "submit", "ref": 1, "width": 64, "height": 48, "mode": "change_map",
               "prompt": "a cat", "steps": 10, "guidance": 5, "seed": 3}
    message.update(kw)
    return message


def raises(code: str, fn, *args, **kwargs) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, info.value.message
    assert info.value.message  # every error has words for the painter
    return info.value


def server_says(session: p.ClientSession, *messages) -> list[p.Event]:
    events = []
    for m in messages:
        events += session.receive(m if isinstance(m, bytes) else p.dumps(m))
    return events
