"""What the Ray engine's tests run in the replicas (imported there by name, so module-level).

``steered_loader`` loads the built-in tiny models like the server does, behind a pipeline the
job's prompt steers, since a test cannot reach into a replica's process: ``hold`` waits after
its first step until the job is cancelled (so a cancel, a disconnect or a kill lands mid-job),
``oom`` runs out of memory. A model named ``<tiny model>-copy`` is that model under another name
(a model no other test has loaded yet).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

HOLD_LIMIT_S = 60.0  # a held job that is never cancelled still ends


@dataclass
class SteeredPipe:
    pipe: Any

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def __call__(self, **kwargs: Any) -> Any:
        prompt = kwargs.get("prompt")
        if prompt == "oom":
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (a test)")
        if prompt == "hold":
            callback, cancel = kwargs["callback"], kwargs["cancel"]

            def hook(info: Any) -> None:
                callback(info)
                deadline = time.monotonic() + HOLD_LIMIT_S
                while info.step == 1 and not cancel.is_set() and time.monotonic() < deadline:
                    cancel.wait(0.01)

            kwargs = {**kwargs, "callback": hook}
        return self.pipe(**kwargs)


def steered_loader(model: str) -> SteeredPipe:
    from server.models import load_pipeline

    return SteeredPipe(load_pipeline(model.removesuffix("-copy")))
