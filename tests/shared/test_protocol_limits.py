"""The limits and the required/optional fields PROTOCOL.md writes down (issue 12), each at its
edge: the last legal value passes, the first illegal one is refused naming the field."""

from __future__ import annotations

import json

import pytest
from tests.shared.protocol_helpers import raises

from shared import protocol as p

BIG = p.Capabilities(models=["m"], current_model="m", schedulers=["DDIM"], families=["sd"],
                     max_pixels=2**40)


def minimal(**fields) -> dict:
    return {"type": "submit", "ref": 1, "width": 64, "height": 64, **fields}


@pytest.mark.parametrize("field, legal, illegal", [
    ("width", [8, p.MAX_SIDE], [7, p.MAX_SIDE + 1]),
    ("height", [8, p.MAX_SIDE], [7, p.MAX_SIDE + 1]),
    ("ref", [0, p.MAX_REF], [-1, p.MAX_REF + 1]),
    ("prompt", ["", "x" * p.MAX_PROMPT_CHARS], ["x" * (p.MAX_PROMPT_CHARS + 1)]),
    ("negative_prompt", ["x" * p.MAX_PROMPT_CHARS], ["x" * (p.MAX_PROMPT_CHARS + 1)]),
    ("steps", [1, p.MAX_STEPS], [0, p.MAX_STEPS + 1]),
    ("guidance", [0, p.MAX_GUIDANCE], [-0.001, p.MAX_GUIDANCE + 0.001]),
    ("seed", [0, p.MAX_SEED], [-1, p.MAX_SEED + 1]),
    ("variants", [1, p.MAX_VARIANTS], [0, p.MAX_VARIANTS + 1]),
    ("preview_every", [0, p.MAX_STEPS], [-1, p.MAX_STEPS + 1]),
    ("scheduler", ["DDIM"], ["x" * (p.MAX_SCHEDULER_CHARS + 1)]),
    ("model", ["m"], ["x" * (p.MAX_MODEL_CHARS + 1)]),
])
def test_each_documented_limit_holds_at_its_edge(field, legal, illegal):
    for value in legal:
        p.parse_submit(minimal(**{field: value}), BIG)
    for value in illegal:
        err = raises(p.E_BAD_MESSAGE, p.parse_submit, minimal(**{field: value}), BIG)
        assert f"'{field}'" in err.message


def test_required_fields_are_required_and_the_rest_have_their_documented_defaults():
    for field in ("ref", "width", "height"):
        message = minimal()
        del message[field]
        assert f"'{field}'" in raises(p.E_BAD_MESSAGE, p.parse_submit, message).message
    request = p.parse_submit(minimal())
    assert (request.mode, request.prompt, request.negative_prompt, request.steps, request.guidance,
            request.seed, request.scheduler, request.model, request.variants, request.preview_every,
            request.region, request.options) == ("change_map", "", "", 30, 7.0, None, None, None, 1,
                                                 None, None, None)
    assert p.parse_submit(minimal(mode="soft_inpaint")).soft_inpaint == p.SoftInpaint(16.0, 0)
    raises(p.E_BAD_MESSAGE, p.parse_submit, minimal(mode="uniform"))  # strength
    raises(p.E_BAD_MESSAGE, p.parse_submit, minimal(mode="fan"))  # fan
    raises(p.E_BAD_MESSAGE, p.parse_submit, minimal(mode="fan", fan={"count": 2, "low": 0}))  # fan.high


def test_text_frames_are_limited_in_utf8_bytes():
    def message(prompt: str) -> str:
        return json.dumps(minimal(prompt=prompt), ensure_ascii=False)

    room = p.MAX_TEXT_BYTES - len(message("").encode("utf-8"))
    p.loads(message("é" * (room // 2)))  # 2 bytes each: just fits
    raises(p.E_TOO_LARGE, p.loads, message("é" * (room // 2 + 1)))
    raises(p.E_TOO_LARGE, p.loads, message("é" * (room // 2 + 1)).encode("utf-8"))


def test_variant_seeds_wrap_and_stay_legal():
    assert [p.variant_seed(p.MAX_SEED - 1, i) for i in range(3)] == [p.MAX_SEED - 1, p.MAX_SEED, 0]
    assert p.variant_seed(5, 2) == 7


def test_nothing_an_error_says_can_fail_to_encode():
    error = p.ProtocolError(p.E_BAD_MESSAGE, "quoted: \ud800")
    error.message.encode("utf-8")
    assert "\\ud800" in error.message and str(error) == error.message
    assert p.Error.from_exception(error).frames()[0].encode("utf-8")


def test_a_half_sent_submit_expires_with_its_ref():
    now = [100.0]
    collector = p.SubmitCollector(timeout_s=60, clock=lambda: now[0])
    collector.add_submit(minimal(ref=5, mode="uniform", strength=0.5))
    now[0] = 130.0
    collector.add_submit(minimal(ref=6, mode="uniform", strength=0.5))
    assert collector.next_deadline() == 160.0
    now[0] = 160.0
    (error,) = collector.expire()
    assert (error.code, error.ref) == (p.E_FRAMES_TIMEOUT, 5) and "60 s" in error.message
    assert collector.pending_refs == [6] and collector.next_deadline() == 190.0
