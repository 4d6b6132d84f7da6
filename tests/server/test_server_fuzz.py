"""A bounded fuzz test (issue 12): well over a thousand generated malformed messages and frames,
over several connections at once, at a live server while a healthy client's jobs run.

Every malformed message must get exactly one ``error`` (a handshake failure: an ``error``, then
close 1008; an oversize frame: close 1009), the server must go on, no traceback may reach the
log, and the healthy client's jobs must complete. The messages are generated from a fixed seed,
so a failure names the message that caused it and repeats.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import struct
from typing import Any

import pytest
from tests.server.server_harness import Client, async_test, frame, gradient_map, png_bytes, serving
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from shared import protocol as p
from tests.conftest import make_test_image

pytestmark = pytest.mark.timeout(120)

REF = 7
MAX_MESSAGE_BYTES = 1_000_000
SUBMIT_CODES = {p.E_BAD_MESSAGE, p.E_TOO_LARGE, p.E_UNKNOWN_MODEL, p.E_UNKNOWN_SCHEDULER,
                p.E_BAD_OPTION}
FRAME_CODES = {p.E_BAD_FRAME, p.E_MAP_SIZE_MISMATCH}


class Raw(str):
    """A JSON token written as is (``1e999``, ``"\\udc00"``): json.dumps cannot write them."""


def dumps(message: dict[str, Any]) -> str:
    raws: list[str] = []

    def mark(value: Any) -> Any:
        if isinstance(value, Raw):
            raws.append(value)
            return f"@@raw{len(raws) - 1}@@"
        if isinstance(value, dict):
            return {mark(k) if isinstance(k, Raw) else k: mark(v) for k, v in value.items()}
        return [mark(v) for v in value] if isinstance(value, list) else value

    text = json.dumps(mark(message))
    for i, raw in enumerate(raws):
        text = text.replace(f'"@@raw{i}@@"', raw)
    return text


SURROGATES = ["\ud800", "a\udfffb", Raw('"\\udc00"'), Raw('"x\\ud83d"')]
HUGE = [10**400, Raw("1e999"), Raw("-1e999"), 2**64, -2**63, Raw("123456789" * 40)]
WRONG_TYPES = [True, False, [], [1], {}, {"a": 1}, "7"]

# For each field of a (uniform-mode) submit: values no server may accept.
BAD_FIELDS: dict[str, list[Any]] = {
    "width": [0, 7, 65537, -5, 1.5, -0.0, *HUGE, *WRONG_TYPES, None, 4096],  # 4096: too many pixels
    "height": [0, 7, 65537, -1, 2.5, *HUGE, *WRONG_TYPES, None],
    "mode": [5, "paint", "", "x" * 100, *SURROGATES, [], True, {}],
    "prompt": [5, 1.5, [], {}, True, *SURROGATES, "x" * (p.MAX_PROMPT_CHARS + 1)],
    "negative_prompt": [5, [], {}, False, *SURROGATES, "y" * (p.MAX_PROMPT_CHARS + 1)],
    "steps": [0, -1, p.MAX_STEPS + 1, 1.5, -0.0, *HUGE, *WRONG_TYPES],
    "guidance": [-0.1, p.MAX_GUIDANCE + 0.1, 1e308, *HUGE, *WRONG_TYPES],
    "seed": [-1, p.MAX_SEED + 1, 1.5, *HUGE, *WRONG_TYPES],
    "scheduler": [5, "Warp drive", "x" * 101, *SURROGATES, [], {}, True],
    "model": [5, "sd-ultra", "../../etc/passwd", "m" * 1001, *SURROGATES, [], True],
    "variants": [0, p.MAX_VARIANTS + 1, 1.5, *HUGE, *WRONG_TYPES],
    "preview_every": [-1, p.MAX_STEPS + 1, 0.5, *HUGE, *WRONG_TYPES],
    "region": ["r", [], 5, True, {}, {"x": -1, "y": 0, "width": 8, "height": 8},
               {"x": 0, "y": 0, "width": 0, "height": 8}, {"x": 60, "y": 0, "width": 10, "height": 10},
               {"x": "0", "y": 0, "width": 8, "height": 8}, {"x": 0, "y": 0, "width": 8, "height": HUGE[0]}],
    "options": ["x", 5, [], True, {"\ud800": 1}, {Raw('"\\udc00"'): 1}, {"o" * 65: 1},
                {"refiner_split": 0.5}, {str(i): 1 for i in range(p.MAX_OPTIONS + 1)},
                {"a": "s"}, {"a": []}, {"a": HUGE[0]}, {"a": Raw("1e999")}],
    "strength": [-0.01, 1.01, None, *HUGE, *WRONG_TYPES],
    "ref": [-1, p.MAX_REF + 1, 1.5, None, *HUGE, *WRONG_TYPES, *SURROGATES],
}
# Mode-specific fields, with the mode that reads them.
BAD_MODE_FIELDS: list[tuple[str, str, list[Any]]] = [
    ("fan", "fan", [None, "f", [], 5, {}, {"count": 0, "low": 0, "high": 1},
                    {"count": p.MAX_FAN_COUNT + 1, "low": 0, "high": 1}, {"count": 3, "low": 0.9, "high": 0.1},
                    {"count": 3, "low": -1, "high": 1}, {"count": "3", "low": 0, "high": 1},
                    {"count": 3, "low": 0, "high": Raw("1e999")}, {"count": 65, "low": 0, "high": 1}]),
    ("soft_inpaint", "soft_inpaint", ["s", [], 5, {"softness_px": -1}, {"softness_px": 1e9},
                                      {"softness_px": "3"}, {"grow_px": 2000}, {"grow_px": 1.5},
                                      {"grow_px": HUGE[0]}]),
]


def base_submit(**fields: Any) -> dict[str, Any]:
    return {"type": "submit", "ref": REF, "width": 64, "height": 64, "mode": "uniform",
            "strength": 0.5, "prompt": "x", "steps": 2, "preview_every": 0, **fields}


def bad_submits(rng: random.Random, count: int) -> list[tuple[list[str | bytes], set[str], int | None]]:
    """Submits with one to three fields broken: (frames, the codes allowed, the ref expected)."""
    out = []
    fields = list(BAD_FIELDS)
    for _ in range(count):
        message = base_submit()
        broken = rng.sample(fields, rng.choice((1, 1, 2, 3)))
        for field in broken:
            message[field] = rng.choice(BAD_FIELDS[field])
        if rng.random() < 0.3:
            field, mode, values = rng.choice(BAD_MODE_FIELDS)
            message.update({"mode": mode, field: rng.choice(values)})
            broken.append(field)
        out.append(([dumps(message)], SUBMIT_CODES, None if "ref" in broken else REF))
    return out


def bad_messages() -> list[tuple[list[str | bytes], set[str], int | None]]:
    """Every other kind of malformed text frame."""
    bad = p.E_BAD_MESSAGE
    cases: list[tuple[str, set[str], int | None]] = []
    for value in [5, None, [], {}, "", *SURROGATES, "dance", "x" * 1000, True]:
        cases.append((dumps({"type": value}), {bad, p.E_UNKNOWN_TYPE}, None))
    for text in ["{", "[", "{not json", '{"type": "submit"', "1", "null", '"s"', "[]", "{}",
                 '{"type": "submit", "guidance": NaN}', '{"type": "cancel", "job_id": Infinity}',
                 "[" * 100_000 + "]" * 100_000, '{"type": "list_models"} trailing', "\x00",
                 '{"type": "hello", "protocol": 1}', dumps(base_submit())[:-5]]:
        cases.append((text, {p.E_BAD_JSON, bad}, None))
    for value in ["1", -1, p.MAX_REF + 1, 1.5, *HUGE, True, [], *SURROGATES]:
        cases.append((dumps({"type": "cancel", "job_id": value}), {bad}, None))
        cases.append((dumps({"type": "cancel", "ref": value}), {bad}, None))
    cases += [(dumps({"type": "cancel"}), {bad}, None),
              (dumps({"type": "cancel", "job_id": 4242}), {p.E_UNKNOWN_JOB}, None),
              (dumps({"type": "cancel", "ref": 4242}), {p.E_UNKNOWN_JOB}, 4242)]
    for value in [None, 5, [], {}, *SURROGATES, "nope", "m" * 1001]:
        cases.append((dumps({"type": "load_model", "model": value}), {bad, p.E_UNKNOWN_MODEL}, None))
    wide = "\U0001f600" * (p.MAX_TEXT_BYTES // 4 + 10)  # bytes over the limit, characters under it
    for filler in ["x" * (p.MAX_TEXT_BYTES + 1), wide, "é" * (p.MAX_TEXT_BYTES // 2 + 1)]:
        cases.append((json.dumps(base_submit(prompt=filler), ensure_ascii=False), {p.E_TOO_LARGE}, None))
    return [([text], codes, ref) for text, codes, ref in cases]


def header(kind: int = p.FRAME_IMAGE_PNG, ref: int = REF, index: int = 0, width: int = 64,
           height: int = 64, version: int = p.PROTOCOL_VERSION, magic: bytes = p.FRAME_MAGIC) -> bytes:
    return struct.pack(">4sBBIHII", magic, version, kind, ref, index, width, height)


def bad_frames(rng: random.Random, count: int) -> list[tuple[list[str | bytes], set[str], int | None]]:
    """Binary frames that lie or break, alone or after a good submit that they then end."""
    picture = png_bytes(make_test_image())
    small = png_bytes(make_test_image(32, 32))
    submit = dumps(base_submit())
    lies: list[tuple[bytes, bool]] = [  # (frame, whether it names the pending submit)
        (header(ref=4242) + picture, False),  # no such submit
        (header(magic=b"DDIX") + picture, False),
        (header(kind=p.FRAME_PREVIEW_PNG) + picture, True),  # a server-only kind
        (header(kind=p.FRAME_MAP_GRAY8) + bytes(64 * 64), True),  # a map for a uniform submit
        (header() + small, True),  # the PNG says 32x32
        (header(width=32, height=32) + small, True),  # right PNG, not the submit's size
        (header() + b"this is no PNG" * 10, True),
        (header() + picture[:40] + bytes(200), True),  # the header is fine, the data is not
        (header() + picture[:33], True),  # cut after the IHDR
        (header() + p.PNG_SIGNATURE + b"\x00\x00\x00\x0dIDAT" + bytes(20), True),  # no IHDR first
    ]
    for _ in range(count):
        roll = rng.random()
        if roll < 0.2:
            out = bytes(rng.randrange(256) for _ in range(rng.randrange(p.FRAME_HEADER.size)))
            yield_ = ([out], FRAME_CODES, None)
        elif roll < 0.35:
            version = rng.choice([0, 2, 9, 255])
            yield_ = ([submit, header(version=version) + picture], FRAME_CODES, None)
        elif roll < 0.55:
            kind = rng.choice([0, 5, 17, 255])
            yield_ = ([submit, header(kind=kind) + picture], FRAME_CODES, REF)
        elif roll < 0.7:
            width, height = rng.choice([(0, 64), (64, 0), (65537, 8), (2**32 - 1, 2**32 - 1)])
            yield_ = ([submit, header(width=width, height=height) + picture], FRAME_CODES, REF)
        elif roll < 0.8:
            width, height = rng.choice([(64, 64), (65536, 65536), (8, 8)])
            extra = rng.choice([-1, 1, 7])
            yield_ = ([submit, header(kind=p.FRAME_MAP_GRAY8, width=width, height=height)
                       + bytes(max(0, 64 * 64 + extra))], FRAME_CODES, REF)
        else:
            lie, pending = rng.choice(lies)
            yield_ = ([submit, lie] if pending else [lie], FRAME_CODES, REF if pending else None)
        if yield_[2] is None and len(yield_[0]) == 2:  # the frame cannot end it: the submit waits
            yield_ = (yield_[0][1:], yield_[1], None)
        yield yield_


async def expect_errors(server, cases, token: str) -> int:
    """Send each case on one connection; each gets exactly one error. Returns how many."""
    client = await Client.connect(server, token=token)
    for i, (frames, codes, ref) in enumerate(cases):
        for data in frames:
            await client.ws.send(data)
        try:
            event = await asyncio.wait_for(client.next(), 10)
        except asyncio.TimeoutError:
            raise AssertionError(f"no answer to case {i}: {frames[-1][:200]!r}") from None
        assert isinstance(event, p.Error), (i, frames[-1][:200], event)
        assert event.code in codes and (ref is None or event.ref == ref), (i, frames[-1][:200], event)
        if i % 100 == 99 or i == len(cases) - 1:  # nothing more came than the one error each
            await client.ws.send(p.dumps(p.list_models()))
            assert isinstance(await asyncio.wait_for(client.next(), 10), p.Models), i
    await client.close()
    return len(cases)


async def refused_handshakes(server, rng: random.Random, count: int) -> int:
    """Malformed first messages: an error, then close 1008."""
    firsts: list[str | bytes] = [
        "{oops", "[1, 2]", "5", "null", dumps({"type": "submit"}), dumps({"type": "hello"}),
        dumps({"type": "hello", "protocol": "1"}), dumps({"type": "hello", "protocol": True}),
        dumps({"type": "hello", "protocol": 2}), dumps({"type": "hello", "protocol": HUGE[0]}),
        dumps({"type": "hello", "protocol": 1, "token": 5}), dumps({"type": "hello", "protocol": 1}),
        dumps({"type": "hello", "protocol": 1, "token": "\ud800"}),
        dumps({"type": "hello", "protocol": 1, "token": ""}),
        frame(p.FRAME_IMAGE_PNG, 1), b"", "x" * (p.MAX_TEXT_BYTES + 1), dumps({"type": SURROGATES[0]}),
    ]
    for _ in range(count):
        first = rng.choice(firsts)
        async with connect(server.url) as ws:
            await ws.send(first)
            events = p.ClientSession().receive(await asyncio.wait_for(ws.recv(), 10))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
        assert len(events) == 1 and isinstance(events[0], p.Error), (first[:100], events)
        assert closed.value.rcvd.code == p.CLOSE_POLICY_VIOLATION, first[:100]
    return count


@async_test
async def test_a_thousand_malformed_messages_get_errors_and_a_healthy_client_is_served(gated_pipe, caplog):
    caplog.set_level(logging.INFO)
    rng = random.Random(12)
    cases = bad_submits(rng, 700) + bad_messages() + list(bad_frames(rng, 300))
    rng.shuffle(cases)
    async with serving(gated_pipe, token="s3cret", max_pixels=128 * 128,
                       max_message_bytes=MAX_MESSAGE_BYTES) as server:
        healthy = await Client.connect(server, token="s3cret")
        image = make_test_image()
        await healthy.submit(image, mode="uniform", strength=1.0, steps=2, variants=2)
        job = (await healthy.accepted()).job_id

        quarter = len(cases) // 4 + 1
        counts = await asyncio.gather(*(expect_errors(server, cases[i:i + quarter], "s3cret")
                                        for i in range(0, len(cases), quarter)),
                                      refused_handshakes(server, rng, 60))
        # An oversize frame: the documented close.
        oversize = await Client.connect(server, token="s3cret")
        with pytest.raises(ConnectionClosed) as closed:
            await oversize.ws.send(b"\x00" * (MAX_MESSAGE_BYTES + 1))
            await oversize.next()
        assert closed.value.rcvd.code == p.CLOSE_MESSAGE_TOO_BIG

        events = await healthy.until_end(job)
        assert isinstance(events[-1], p.Done) and len([e for e in events if isinstance(e, p.Result)]) == 2
        await healthy.submit(image, gradient_map(), steps=2)
        events = await healthy.until_end((await healthy.accepted()).job_id)
        assert isinstance(events[-1], p.Done)
        assert not [e for e in healthy.seen if isinstance(e, p.Error)]
    assert sum(counts) >= 1000, counts
    assert len(gated_pipe.runs) == 2  # nothing malformed ever ran
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text
