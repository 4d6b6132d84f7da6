"""Schedulers by the names painters know them (the names the UI shows and jobs carry).

Every entry is a first-order diffusers scheduler that supports img2img, so one UNet call is one
step and the differential loop's step counting stays exact.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
# The module itself, not the package's name: without scipy, diffusers exports a placeholder.
from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin


class LMSWithoutScipy(LMSDiscreteScheduler):
    """diffusers' LMS, with its coefficients integrated without scipy.

    Each coefficient integrates a Lagrange basis polynomial of degree ``order - 1`` (at most 3)
    between two sigmas; Gauss-Legendre quadrature with 4 nodes is exact up to degree 7.
    """

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        sigmas = [float(s) for s in self.sigmas]
        low, high = sigmas[t], sigmas[t + 1]
        nodes, weights = np.polynomial.legendre.leggauss(4)
        taus = (high - low) / 2.0 * nodes + (high + low) / 2.0
        basis = np.ones_like(taus)
        for k in range(order):
            if k != current_order:
                basis *= (taus - sigmas[t - k]) / (sigmas[t - current_order] - sigmas[t - k])
        return float((high - low) / 2.0 * np.sum(weights * basis))


# name -> (scheduler class, config overrides)
_SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "DDIM": (DDIMScheduler, {}),
    "Euler": (EulerDiscreteScheduler, {}),
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "DPM++ 2M": (DPMSolverMultistepScheduler, {"use_karras_sigmas": False}),
    "DPM++ 2M Karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "DPM++ 2M SDE": (DPMSolverMultistepScheduler, {"use_karras_sigmas": False,
                                                   "algorithm_type": "sde-dpmsolver++"}),
    "DPM++ 2M SDE Karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True,
                                                          "algorithm_type": "sde-dpmsolver++"}),
    "UniPC": (UniPCMultistepScheduler, {}),
    "PNDM": (PNDMScheduler, {"skip_prk_steps": True}),
    # diffusers' own LMS needs scipy (not a dependency here); with it installed, it is used as is.
    "LMS": (LMSDiscreteScheduler if importlib.util.find_spec("scipy") else LMSWithoutScipy, {}),
    # Few-step sampling (Live mode): LCM for LCM-distilled models and LCM-LoRAs (4-8 steps, low
    # guidance); turbo/lightning checkpoints take "Euler a" or "DPM++ 2M SDE" above.
    "LCM": (LCMScheduler, {}),
}

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
