"""Schedulers by the names painters know them (the names the UI shows and jobs carry).

Every entry is a first-order diffusers scheduler that supports img2img, so one UNet call is one
step and the differential loop's step counting stays exact.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

# name -> (scheduler class, config overrides)
_SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "DDIM": (DDIMScheduler, {}),
    "Euler": (EulerDiscreteScheduler, {}),
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "DPM++ 2M": (DPMSolverMultistepScheduler, {"use_karras_sigmas": False}),
    "DPM++ 2M Karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "UniPC": (UniPCMultistepScheduler, {}),
    "PNDM": (PNDMScheduler, {"skip_prk_steps": True}),
}
if importlib.util.find_spec("scipy") is not None:  # LMS integrates its coefficients with scipy
    _SCHEDULERS["LMS"] = (LMSDiscreteScheduler, {})

SCHEDULER_NAMES: tuple[str, ...] = tuple(_SCHEDULERS)
DEFAULT_SCHEDULER = "DPM++ 2M Karras"


def make_scheduler(name: str, config: Any) -> SchedulerMixin:
    """A fresh scheduler called `name`, built from a model's scheduler `config`.

    The model's config carries what must not change (beta schedule, prediction type such as
    v-prediction, timestep spacing); the name only picks the sampling algorithm.
    """
    if name not in _SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULER_NAMES)}")
    cls, overrides = _SCHEDULERS[name]
    return cls.from_config(config, **overrides)


def copy_scheduler(scheduler: SchedulerMixin) -> SchedulerMixin:
    """A fresh scheduler of the same kind, so that a run never shares step state with another."""
    return type(scheduler).from_config(scheduler.config)
