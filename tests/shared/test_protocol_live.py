"""``submit.replace`` and the ``features`` of a welcome (issue 16, live mode)."""

from __future__ import annotations

import pytest

from shared import protocol as p


def test_replace_round_trips_and_is_absent_when_false():
    request = p.SubmitRequest(ref=1, width=8, height=8, replace=True)
    assert request.to_message()["replace"] is True
    assert p.parse_submit(request.to_message()).replace is True
    plain = p.SubmitRequest(ref=2, width=8, height=8)
    assert "replace" not in plain.to_message()
    assert p.parse_submit(plain.to_message()).replace is False


@pytest.mark.parametrize("value", [1, "yes", [], {}])
def test_replace_must_be_a_boolean(value):
    with pytest.raises(p.ProtocolError) as caught:
        p.parse_submit({"type": "submit", "ref": 3, "width": 8, "height": 8, "replace": value})
    assert caught.value.code == p.E_BAD_MESSAGE and "'replace'" in caught.value.message
    assert caught.value.ref == 3


def test_a_welcome_lists_features_and_an_older_one_has_none():
    caps = p.Capabilities(models=["m"], current_model="m", schedulers=[], families=["sd"])
    sent = caps.to_dict()
    assert sent["features"] == [p.FEATURE_REPLACE]
    assert p.Capabilities.from_dict(sent).supports(p.FEATURE_REPLACE)
    older = {k: v for k, v in sent.items() if k != "features"}
    assert not p.Capabilities.from_dict(older).supports(p.FEATURE_REPLACE)
    with pytest.raises(p.ProtocolError):
        p.Capabilities.from_dict({**sent, "features": "replace"})
