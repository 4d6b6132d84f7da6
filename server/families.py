"""What the server advertises about its models: family, schedulers and options.

Everything here is read off the pipelines themselves, so that a new family or option shows up in
the handshake without a second list to keep in step:

- the families are the ``family`` attributes of the pipeline classes (one file per family in
  ``server.pipelines``);
- a model's schedulers are its pipeline's ``scheduler_names`` (flow-matching models: the
  flow-matching ones) or else the common :data:`server.schedulers.SCHEDULER_NAMES`;
- a model's options are the keyword arguments its pipeline call takes beyond the common ones,
  for the parts that model really has (a refiner, stage II/III, a prior), with the pipeline's
  own defaults.

The option names are the pipeline's keyword names, so a validated ``submit.options`` is passed to
the call as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.pipelines.deepfloyd_if import DeepFloydIFDifferentialPipeline
from server.pipelines.flux import FluxDifferentialPipeline
from server.pipelines.kandinsky import KandinskyV22DifferentialPipeline
from server.pipelines.sd import StableDiffusionDifferentialPipeline, StableDiffusionXLDifferentialPipeline
from server.pipelines.sd3 import StableDiffusion3DifferentialPipeline
from server.schedulers import SCHEDULER_NAMES
from shared import protocol as p

PIPELINE_CLASSES: tuple[type, ...] = (
    StableDiffusionDifferentialPipeline,
    StableDiffusionXLDifferentialPipeline,
    StableDiffusion3DifferentialPipeline,
    FluxDifferentialPipeline,
    KandinskyV22DifferentialPipeline,
    DeepFloydIFDifferentialPipeline,
)
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(cls.family for cls in PIPELINE_CLASSES))
_CLASS_BY_FAMILY = {cls.family: cls for cls in PIPELINE_CLASSES}


def schedulers_of(pipe_or_class: Any) -> list[str]:
    """The scheduler names a pipeline (or pipeline class) runs with."""
    return list(getattr(pipe_or_class, "scheduler_names", SCHEDULER_NAMES))


def options_of(pipe: Any) -> list[p.OptionSpec]:
    """The options a loaded pipeline takes, with its defaults (the parts it really has only)."""
    family = getattr(pipe, "family", "")
    if family == "sdxl" and getattr(pipe, "refiner", None) is not None:
        return [p.OptionSpec(
            "refiner_split", "float", float(pipe.default_refiner_split), 0.0, 1.0,
            min_exclusive=True, label="Refiner split",
            help="Fraction of the steps run on the base model; the refiner does the rest "
                 "(1 = no refiner).")]
    if family == "kandinsky22":
        return [
            p.OptionSpec("prior_num_inference_steps", "int",
                         int(pipe.prior_num_inference_steps), 1, p.MAX_STEPS,
                         label="Prior steps", help="Steps of the prior (prompt to image embedding)."),
            p.OptionSpec("prior_guidance_scale", "float", float(pipe.prior_guidance_scale), 0.0,
                         p.MAX_GUIDANCE, label="Prior guidance"),
        ]
    if family == "if":
        has = getattr(pipe, "options", {})
        specs: list[p.OptionSpec] = []
        if has.get("stage_2"):
            specs += [
                p.OptionSpec("stage_2", "bool", True, label="Stage II (x4 upscale)",
                             help="Off: stage I only, scaled up to the picture's size."),
                p.OptionSpec("num_inference_steps_2", "int", None, 1, p.MAX_STEPS,
                             label="Stage II steps", help="Default: the job's steps."),
                p.OptionSpec("guidance_scale_2", "float", None, 0.0, p.MAX_GUIDANCE,
                             label="Stage II guidance", help="Default: the job's guidance."),
            ]
        if has.get("stage_3"):
            specs.append(p.OptionSpec("stage_3", "bool", True, label="Stage III (x4 upscaler)",
                                      help="Runs after stage II, as usual (not differential)."))
        return specs
    if family == "flux":
        return [p.OptionSpec(
            "true_cfg_scale", "float", 1.0, 1.0, p.MAX_GUIDANCE, label="True CFG",
            help="Above 1: real classifier-free guidance, so the negative prompt counts "
                 "(two model calls per step).")]
    return []


def describe(pipe: Any) -> p.ModelInfo:
    """What the handshake says about a loaded pipeline."""
    return p.ModelInfo(family=str(pipe.family), schedulers=schedulers_of(pipe),
                       options=options_of(pipe), loaded=True)


def guess_family(model: str) -> str:
    """The family a model id most likely loads as, without loading it (cheap: the id, and a
    local folder's layout or ``model_index.json``). '' when it cannot tell."""
    from server.pipelines.deepfloyd_if import is_deepfloyd_if
    from server.pipelines.kandinsky import is_kandinsky22
    from server.tiny_flow import flow_family_of

    try:
        if model.startswith("tiny-"):
            family = model.removeprefix("tiny-")
            return family if family in FAMILIES else ""
        if is_kandinsky22(model):
            return "kandinsky22"
        if is_deepfloyd_if(model):
            return "if"
        flow = flow_family_of(model)
        if flow is not None:
            return flow
    except (OSError, ValueError):  # an unreadable folder or index: the loader will say why
        return ""
    name = Path(model).name.lower()
    return "sdxl" if "xl" in name else "sd"


def guess_info(model: str) -> p.ModelInfo:
    """A model's family and schedulers before it is loaded (its options come with the load)."""
    family = guess_family(model)
    cls = _CLASS_BY_FAMILY.get(family)
    return p.ModelInfo(family=family, schedulers=schedulers_of(cls) if cls else list(SCHEDULER_NAMES),
                       options=[], loaded=False)
