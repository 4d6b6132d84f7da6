"""The submit message: its checks on both sides, its round trip, the frames that carry it."""

from __future__ import annotations

import json

import pytest
from tests.shared.protocol_helpers import caps, png, raises, submit_msg

from shared import protocol as p

def test_parse_submit_defaults_and_round_trip():
    r = p.parse_submit(submit_msg(), caps())
    assert (r.ref, r.width, r.height, r.mode, r.steps, r.guidance, r.seed) == (
        1, 64, 48, "change_map", 10, 5.0, 3)
    assert r.variants == 1 and r.preview_every is None and r.scheduler is None and r.needs_map
    full = p.SubmitRequest(ref=9, width=64, height=48, mode="fan", prompt="x", steps=4,
                           guidance=1.5, seed=0, scheduler="Euler", model="tiny-sd", variants=3,
                           preview_every=2, region=p.Region(8, 8, 32, 16),
                           fan=p.FanSpec(4, 0.2, 0.8))
    again = p.parse_submit(json.loads(p.dumps(full.to_message())), caps())
    assert again == full
    soft = p.SubmitRequest(ref=2, width=64, height=48, mode="soft_inpaint",
                           soft_inpaint=p.SoftInpaint(softness_px=12.5, grow_px=3))
    assert p.parse_submit(json.loads(p.dumps(soft.to_message())), caps()) == soft
    uni = p.SubmitRequest(ref=3, width=64, height=48, mode="uniform", strength=0.4)
    assert p.parse_submit(uni.to_message(), caps()) == uni
    assert not uni.needs_map


@pytest.mark.parametrize("change, code, words", [
    ({"ref": None}, p.E_BAD_MESSAGE, "missing field 'ref'"),
    ({"width": None}, p.E_BAD_MESSAGE, "missing field 'width'"),
    ({"width": "64"}, p.E_BAD_MESSAGE, "'width' must be an integer"),
    ({"steps": True}, p.E_BAD_MESSAGE, "'steps' must be an integer"),
    ({"steps": 2.5}, p.E_BAD_MESSAGE, "'steps' must be an integer"),
    ({"steps": 0}, p.E_BAD_MESSAGE, "out of range"),
    ({"steps": 100_000}, p.E_BAD_MESSAGE, "out of range"),
    ({"guidance": "high"}, p.E_BAD_MESSAGE, "'guidance' must be a number"),
    ({"guidance": -1}, p.E_BAD_MESSAGE, "out of range"),
    ({"seed": -1}, p.E_BAD_MESSAGE, "'seed'"),
    ({"variants": 0}, p.E_BAD_MESSAGE, "'variants'"),
    ({"prompt": 42}, p.E_BAD_MESSAGE, "'prompt' must be a string"),
    ({"prompt": "a" * (p.MAX_PROMPT_CHARS + 1)}, p.E_BAD_MESSAGE, "characters"),
    ({"negative_prompt": "a" * (p.MAX_PROMPT_CHARS + 1)}, p.E_BAD_MESSAGE, "'negative_prompt' is 4001 characters"),
    ({"guidance": p.MAX_GUIDANCE + 1}, p.E_BAD_MESSAGE, "'guidance' = 51.0 is out of range"),
    ({"preview_every": p.MAX_STEPS + 1}, p.E_BAD_MESSAGE, "'preview_every'"),
    ({"mode": "sketch"}, p.E_BAD_MESSAGE, "unknown mode"),
    ({"width": 4096, "height": 4096}, p.E_TOO_LARGE, "at most 65536"),
    ({"width": 4}, p.E_BAD_MESSAGE, "out of range"),
    ({"scheduler": "Heun"}, p.E_UNKNOWN_SCHEDULER, "DDIM, Euler"),
    ({"model": "sdxl-turbo"}, p.E_UNKNOWN_MODEL, "tiny-sd"),
    ({"region": [0, 0, 8, 8]}, p.E_BAD_MESSAGE, "'region' must be an object"),
    ({"region": {"x": 60, "y": 0, "width": 8, "height": 8}}, p.E_BAD_MESSAGE, "does not fit"),
    ({"region": {"x": 0, "y": 0, "width": 8}}, p.E_BAD_MESSAGE, "missing field 'height'"),
    ({"mode": "uniform"}, p.E_BAD_MESSAGE, "missing field 'strength'"),
    ({"mode": "uniform", "strength": 1.5}, p.E_BAD_MESSAGE, "'strength'"),
    ({"mode": "fan"}, p.E_BAD_MESSAGE, "missing field 'fan'"),
    ({"mode": "fan", "fan": {"count": 3, "low": 0.9, "high": 0.1}}, p.E_BAD_MESSAGE, "above"),
    ({"mode": "fan", "fan": {"count": 0, "low": 0, "high": 1}}, p.E_BAD_MESSAGE, "'count'"),
    ({"mode": "soft_inpaint", "soft_inpaint": {"softness_px": -3}}, p.E_BAD_MESSAGE,
     "'softness_px'"),
])
def test_parse_submit_rejects_with_named_field(change, code, words):
    err = raises(code, p.parse_submit, submit_msg(**change), caps())
    assert words in err.message
    if change.get("ref", 1) is not None:
        assert err.ref == 1  # the server can answer this submit alone


def test_submit_limits_come_from_the_server():
    err = raises(p.E_BAD_MESSAGE, p.parse_submit, submit_msg(steps=20), caps(max_steps=15))
    assert "'steps'" in err.message and "[1, 15]" in err.message
    err = raises(p.E_BAD_MESSAGE, p.parse_submit, submit_msg(variants=3), caps(max_variants=2))
    assert "'variants'" in err.message and "[1, 2]" in err.message
    # The limits themselves are allowed.
    assert p.parse_submit(submit_msg(steps=15), caps(max_steps=15)).steps == 15
    assert p.parse_submit(submit_msg(variants=2), caps(max_variants=2)).variants == 2
    # Without capabilities only the protocol's own limits apply.
    assert p.parse_submit(submit_msg(scheduler="anything"), None).scheduler == "anything"


def test_submit_frames_checks_its_inputs():
    request = p.SubmitRequest(ref=1, width=64, height=48)
    with pytest.raises(ValueError, match="64x48"):
        p.submit_frames(request, png(32, 32), bytes(64 * 48))
    with pytest.raises(ValueError, match="needs a gray8 map"):
        p.submit_frames(request, png(64, 48))
    with pytest.raises(ValueError, match="carries 10 bytes"):
        p.submit_frames(request, png(64, 48), bytes(10))
    uniform = p.SubmitRequest(ref=2, width=64, height=48, mode="uniform", strength=0.5)
    with pytest.raises(ValueError, match="takes no map frame"):
        p.submit_frames(uniform, png(64, 48), bytes(64 * 48))


def test_a_submit_of_exactly_max_pixels_is_accepted_and_one_row_more_is_not():
    # The limit itself is allowed (a `>=` in place of `>` passed every test before this one).
    limit = caps(max_pixels=64 * 48)
    assert p.parse_submit(submit_msg(width=64, height=48), limit).width == 64
    err = raises(p.E_TOO_LARGE, p.parse_submit, submit_msg(width=64, height=49), limit)
    assert "3136 pixels" in err.message and "at most 3072" in err.message and err.ref == 1
    # Without capabilities, the protocol's default limit, exactly.
    side = int(p.DEFAULT_MAX_PIXELS ** 0.5)
    assert p.parse_submit(submit_msg(width=side, height=side), None).height == side
    raises(p.E_TOO_LARGE, p.parse_submit, submit_msg(width=side, height=side + 1), None)
    # The client checks the same before uploading anything.
    s = p.ClientSession()
    s.receive(p.dumps(p.welcome(limit)))
    request = p.SubmitRequest(ref=0, width=64, height=48, mode="uniform", strength=0.5)
    assert len(s.submit(request, png(64, 48))) == 2
