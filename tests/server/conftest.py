"""The server tests' pipeline: tiny-sd behind a gate (see ``server_harness.GatedPipe``)."""

from __future__ import annotations

import pytest
from tests.server.server_harness import GatedPipe


@pytest.fixture
def gated_pipe(tiny_sd) -> GatedPipe:
    return GatedPipe(tiny_sd)
