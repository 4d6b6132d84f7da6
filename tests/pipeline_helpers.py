"""What the pipeline tests (tests/server/test_pipeline_*.py) share: the prompt, a model-call counter,
a seeded runner, diffusers reference pipelines, and a job over the real server."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from server.app import ServerConfig, run_server
from server.pipelines import StepInfo
from shared import protocol as p
from tests.conftest import make_test_image
from tests.server.server_harness import Client, decode, of

PROMPT = "a red boat on a lake"
NEGATIVE = "blurry"


class ForwardCalls:
    """Counts a model's forward calls (a UNet's or a transformer's: one per step for first-order
    schedulers, classifier-free guidance batched)."""

    def __init__(self, monkeypatch, model):
        self.count = 0
        forward = model.forward

        def counting(*args, **kwargs):
            self.count += 1
            return forward(*args, **kwargs)

        monkeypatch.setattr(model, "forward", counting)


def make_run(**defaults: Any):
    """``run(pipe, image, change_map, seed=0, **kwargs)``: the pipeline on ``PROMPT`` with a
    seeded generator, ``output_type="np"`` and the family's ``defaults`` unless overridden."""

    def run(pipe, image, change_map, seed=0, **kwargs):
        kwargs = {"output_type": "np", **defaults, **kwargs}
        return pipe(prompt=PROMPT, image=image, change_map=change_map,
                    generator=torch.Generator().manual_seed(seed), **kwargs)

    return run


def quiet(pipe):
    """A diffusers reference pipeline without its progress bar."""
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- a job over the real server --------------------------------------------------------------------
def half_changed(seed: int, width: int = 80, height: int = 48) -> tuple[Image.Image, np.ndarray]:
    """A test image and a change map that keeps the left half and changes the right half."""
    change = np.zeros((height, width), np.uint8)
    change[:, width // 2 :] = 255
    return make_test_image(width, height, seed=seed), change


async def server_job(pipe, model: str, image: Image.Image, change: np.ndarray,
                     **submit: Any) -> tuple[list, set[str]]:
    """One job through the in-process server on loopback: its events, and the families the
    server advertised to the client."""
    config = ServerConfig(model=model, port=0)
    async with run_server(config, lambda name: pipe) as server:
        client = await Client.connect(server)
        families = set(client.session.capabilities.families)
        await client.submit(image, change, **submit)
        accepted = await client.accepted()
        events = await client.until_end(accepted.job_id)
        await client.close()
    return events, families


def kept_part_exact(events: list, image: Image.Image) -> tuple[np.ndarray, np.ndarray, int]:
    """The job ended with one result cropped to the edited region (the right half, plus a margin)
    whose kept columns equal the input's: returns (result, input there, kept columns)."""
    assert isinstance(events[-1], p.Done), events[-1]
    (result,) = of(events, p.Result)
    box = result.region
    got = decode(result.png)
    assert got.shape == (box.height, box.width, 3) == (result.height, result.width, 3)
    source = np.asarray(image)[box.y : box.y + box.height, box.x : box.x + box.width]
    kept = image.width // 2 - box.x
    assert kept > 0 and box.x + box.width == image.width
    np.testing.assert_array_equal(got[:, :kept], source[:, :kept])
    return got, source, kept


# -- step hooks ------------------------------------------------------------------------------------
class StepRecorder:
    """A step hook that keeps every :class:`StepInfo` (``seen``) and its preview (``previews``)."""

    def __init__(self) -> None:
        self.seen: list[StepInfo] = []
        self.previews: list[np.ndarray] = []

    def __call__(self, info: StepInfo) -> None:
        self.seen.append(info)
        self.previews.append(info.preview())


def cancel_when(condition: Callable[[StepInfo], bool]) -> tuple[threading.Event, Callable]:
    """A cancel event and a step hook that sets it after the first step where ``condition``
    holds."""
    cancel = threading.Event()

    def hook(info: StepInfo) -> None:
        if condition(info):
            cancel.set()

    return cancel, hook


# -- Algorithm 1's nested masks --------------------------------------------------------------------
def striped_map(strengths: list[float], stripe_px: int, height: int) -> np.ndarray:
    """A change map of vertical stripes, ``stripe_px`` wide, one per strength, left to right."""
    change_map = np.zeros((height, stripe_px * len(strengths)), np.float32)
    for j, s in enumerate(strengths):
        change_map[:, stripe_px * j : stripe_px * (j + 1)] = s
    return change_map


def record_keeps(monkeypatch, pipe, view: Callable[[torch.Tensor], Any]) -> list:
    """Records ``view(keep)`` for the keep mask of every re-injection the pipeline makes."""
    keeps: list = []
    reinject = pipe.reinject

    def recording(scheduler, latents, z_init, noise, t, keep, **kwargs):
        keeps.append(view(keep))
        return reinject(scheduler, latents, z_init, noise, t, keep, **kwargs)

    monkeypatch.setattr(pipe, "reinject", recording)
    return keeps


# -- re-injection, step by step --------------------------------------------------------------------
# A map of four 16-px stripes; with k = 10 steps their cells receive 10, 5, 3 and 0 steps, so
# at step i the kept cells (n <= k - i) are: none of the first stripe, the 0.5 stripe up to
# step 5, the 0.3 stripe up to step 7 and the 0 stripe always.
STRIPES = [1.0, 0.5, 0.3, 0.0]
STRIPE_STEPS = [10, 5, 3, 0]
STRIPE_K = 10


def stripe_steps(cells_per_stripe: int) -> torch.Tensor:
    """Steps each latent column of :data:`STRIPES` receives: 1 x 1 x 1 x W, for broadcasting."""
    return torch.tensor(STRIPE_STEPS).repeat_interleave(cells_per_stripe)[None, None, None]


class ReinjectionProbe:
    """Records what the denoising model sees at every call (``samples``: the model input, the
    CFG half of it dropped) and the original and noise each re-injection was given
    (``originals``: ``(z_init, noise)`` per step)."""

    def __init__(self, monkeypatch, pipe, models: list, batch: int = 1) -> None:
        self.samples: list[torch.Tensor] = []
        self.originals: list[tuple[torch.Tensor, torch.Tensor]] = []
        for model in models:
            forward = model.forward

            def recording_forward(*args, _forward=forward, **kwargs):
                sample = kwargs.get("sample", kwargs.get("hidden_states"))
                self.samples.append((args[0] if sample is None else sample)[:batch].clone())
                return _forward(*args, **kwargs)

            monkeypatch.setattr(model, "forward", recording_forward)
        reinject = pipe.reinject

        def recording(scheduler, latents, z_init, noise, t, keep, **kwargs):
            self.originals.append((z_init.clone(), noise.clone()))
            return reinject(scheduler, latents, z_init, noise, t, keep, **kwargs)

        monkeypatch.setattr(pipe, "reinject", recording)


def assert_kept_cells_match(samples: list[torch.Tensor],
                            expected: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """At every step, the cells the step keeps (``keep``, broadcast) hold ``want`` there: the
    original noised by the scheduler to that step's own timestep."""
    # More than one step: re-injection after the first is what is pinned, not the noised start.
    assert len(samples) == len(expected) > 1
    for step, (sample, (keep, want)) in enumerate(zip(samples, expected, strict=True)):
        keep = keep.expand_as(want)
        assert keep.any(), step
        torch.testing.assert_close(sample[keep], want[keep], rtol=0, atol=1e-5,
                                   msg=lambda m, s=step: f"step {s}: {m}")
