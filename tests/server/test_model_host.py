"""The worker's model host: swapping models, and what is left loaded when a swap fails."""

from __future__ import annotations

import pytest

from server.jobs import ModelHost


class FlakyLoader:
    """Loads named fake pipelines; ``fail`` lists the loads that raise, in order."""

    def __init__(self, fail: list[str]) -> None:
        self.fail = list(fail)
        self.calls: list[str] = []

    def __call__(self, model: str) -> object:
        self.calls.append(model)
        if self.fail and self.fail[0] == model:
            self.fail.pop(0)
            raise RuntimeError(f"cannot load {model}")
        return ("pipe", model)


def test_a_failed_swap_reloads_the_previous_model():
    loader = FlakyLoader(fail=["b"])
    host = ModelHost(loader, "a")
    host.load_initial()
    with pytest.raises(RuntimeError, match="cannot load b"):
        host.ensure("b")
    assert host.name == "a" and host.pipe == ("pipe", "a")
    assert loader.calls == ["a", "b", "a"]


def test_when_the_previous_model_fails_too_the_job_hears_about_its_own_model():
    loader = FlakyLoader(fail=["b", "a"])
    host = ModelHost(loader, "a")
    host.load_initial()
    with pytest.raises(RuntimeError, match="cannot load b"):  # not "a": the job asked for b
        host.ensure("b")
    assert host.pipe is None and host.name == "a"
    # The next job on the current model loads it again.
    assert host.ensure(None) == ("pipe", "a")
    assert loader.calls == ["a", "b", "a", "a"]
