"""What the server advertises about its models: family, schedulers and options.

Everything here is read off the pipelines themselves, so that a new family or option shows up in
the handshake without a second list to keep in step:

- the families are the ``family`` attributes of the pipeline classes (``server.models``);
- a model's schedulers are its pipeline's ``scheduler_names`` (flow-matching models: the
  flow-matching ones) or else the common :data:`server.schedulers.SCHEDULER_NAMES`;
- a model's options are what its pipeline's ``options()`` declares: the keyword arguments its
  call takes beyond the common ones, for the parts that model really has (a refiner, stage
  II/III, a prior), with the pipeline's own defaults.

The option names are the pipeline's keyword names, so a validated ``submit.options`` is passed to
the call as it is.
"""

from __future__ import annotations

from typing import Any

from server.models import FAMILIES, PIPELINE_CLASSES, family_of
from server.schedulers import SCHEDULER_NAMES
from shared import protocol as p

__all__ = ["FAMILIES", "describe", "guess_info", "options_of", "schedulers_of"]

_CLASS_BY_FAMILY = {cls.family: cls for cls in PIPELINE_CLASSES}


def schedulers_of(pipe_or_class: Any) -> list[str]:
    """The scheduler names a pipeline (or pipeline class) runs with."""
    return list(getattr(pipe_or_class, "scheduler_names", SCHEDULER_NAMES))


def options_of(pipe: Any) -> list[p.OptionSpec]:
    """The options a loaded pipeline takes, with its defaults (the parts it really has only)."""
    declared = getattr(pipe, "options", None)
    return list(declared()) if callable(declared) else []


def describe(pipe: Any) -> p.ModelInfo:
    """What the handshake says about a loaded pipeline."""
    return p.ModelInfo(family=str(pipe.family), schedulers=schedulers_of(pipe),
                       options=options_of(pipe), loaded=True)


def guess_info(model: str) -> p.ModelInfo:
    """A model's family and schedulers before it is loaded (its options come with the load)."""
    try:
        family = family_of(model)
    except (OSError, ValueError):  # an unreadable folder or index: the loader will say why
        family = ""
    cls = _CLASS_BY_FAMILY.get(family)
    return p.ModelInfo(family=family, schedulers=schedulers_of(cls) if cls else list(SCHEDULER_NAMES),
                       options=[], loaded=False)
