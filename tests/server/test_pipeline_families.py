"""What every family promises alike, because the base class gives it: cancel is checked before
the first model call, previews show a clean estimate, refiner_split is refused unless SDXL has a
refiner, and the options a pipeline declares are what the handshake advertises."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from server.families import describe
from server.pipelines import Cancelled
from tests.conftest import make_test_image
from tests.pipeline_helpers import PROMPT, ForwardCalls

FAMILIES = {"tiny_sd": "unet", "tiny_sdxl": "unet", "tiny_sd3": "transformer",
            "tiny_flux": "transformer", "tiny_k22": "unet", "tiny_if": "unet"}


def call(pipe, **kwargs):
    kwargs = {"prompt": PROMPT, "image": make_test_image(), "num_inference_steps": 4,
              "change_map": np.full((64, 64), 0.5, np.float32), "output_type": "np",
              "generator": torch.Generator().manual_seed(0), **kwargs}
    return pipe(**kwargs)


@pytest.mark.parametrize("fixture", FAMILIES)
def test_a_cancelled_job_runs_no_model_and_reads_no_prompt(request, fixture, monkeypatch):
    pipe = request.getfixturevalue(fixture)
    calls = ForwardCalls(monkeypatch, getattr(pipe, FAMILIES[fixture]))
    cancel = threading.Event()
    cancel.set()
    reads_prompt = "image_embeddings" if fixture == "tiny_k22" else "encode_prompt"  # (the prior)
    monkeypatch.setattr(pipe, reads_prompt, lambda *a, **k: pytest.fail("the prompt was read"))
    with pytest.raises(Cancelled, match="before the first step"):
        call(pipe, cancel=cancel)
    assert calls.count == 0


@pytest.mark.parametrize("fixture", ["tiny_sd", "tiny_k22", "tiny_if"])
def test_previews_show_the_clean_estimate_with_a_multistep_scheduler(request, fixture):
    # DPM++ keeps its clean estimate as its last model output, not as pred_original_sample.
    pipe = request.getfixturevalue(fixture)
    seen = []
    call(pipe, scheduler="DPM++ 2M", callback=seen.append)
    assert seen and all(info.denoised is not None for info in seen)
    assert not torch.allclose(seen[0].denoised, seen[0].latents, atol=1e-2)


@pytest.mark.parametrize("fixture", FAMILIES)
def test_refiner_split_is_refused_without_a_refiner(request, fixture):
    pipe = request.getfixturevalue(fixture)
    with pytest.raises(ValueError, match="refiner"):
        call(pipe, refiner_split=0.5)


def test_sdxl_with_a_refiner_takes_refiner_split(tiny_sdxl_refined):
    assert call(tiny_sdxl_refined, refiner_split=0.5).steps_run == 2


@pytest.mark.parametrize("fixture, names", [
    ("tiny_sd", []), ("tiny_sdxl", []), ("tiny_sdxl_refined", ["refiner_split"]),
    ("tiny_sd3", []), ("tiny_flux", ["true_cfg_scale"]),
    ("tiny_k22", ["prior_num_inference_steps", "prior_guidance_scale"]),
    ("tiny_if", ["stage_2", "num_inference_steps_2", "guidance_scale_2"]),
])
def test_each_pipeline_declares_its_options_and_the_handshake_reads_them(request, fixture, names):
    pipe = request.getfixturevalue(fixture)
    assert [o.name for o in pipe.options()] == names
    assert describe(pipe).options == pipe.options()
