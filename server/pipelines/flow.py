"""The differential loop on flow-matching models (SD3 and Flux share it).

The method (``docs/method.md``) on a rectified-flow model. The change map uses the painter's
convention: **1 (white) = change fully, 0 (black) = keep**; ``mu_paper = 1 - change_map``.

What differs from SD/SDXL (``server.pipelines.sd``): the model predicts a velocity, and the
original noised to a step's sigma is ``sigma * noise + (1 - sigma) * z_init``, the scheduler's
``scale_noise`` (there is no ``add_noise``). The latents are 16-channel, normalised with a shift
and a scale, and the transformer sees 2 x 2 patches, so images are padded to multiples of
``vae_scale_factor * patch_size`` pixels (16). The step test and the nested masks are the
same as SD's.

:class:`FlowMatchingDifferentialPipeline` holds the loop; a family (``sd3.py``, ``flux.py``)
says how to encode the prompt, set the schedule, lay out latents for its transformer and call
it. Prompt encoding and image pre/post-processing come from the diffusers img2img pipeline of
the family (``self.helper``), so a uniform map of value ``s`` reproduces that pipeline at
``strength=s`` exactly (for ``s*k`` whole: diffusers' flow img2img rounds ``s*k`` up, this loop
rounds down like SD's).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3_img2img import (
    retrieve_latents,
)
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from server.pipelines import (
    DifferentialDiffusionOutput,
    DifferentialPipeline,
    Generator,
    StepInfo,
    check_generators,
    padded_pixels,
    raise_if_cancelled,
    reinjection_changes,
)

# Flow-matching schedulers by name: the model's FlowMatchEulerDiscreteScheduler config (its shift
# or dynamic shifting stays) with another spacing of the sigmas. All first order, all with
# `scale_noise`, so one transformer call is one step and img2img is defined for each.
_SIGMA_SPACINGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
FLOW_SCHEDULERS: dict[str, dict[str, bool]] = {
    "Euler": {},
    "Euler Karras": {"use_karras_sigmas": True},
    "Euler exponential": {"use_exponential_sigmas": True},
}
FLOW_SCHEDULER_NAMES: tuple[str, ...] = tuple(FLOW_SCHEDULERS)


def make_flow_scheduler(name: str | None, scheduler: Any) -> FlowMatchEulerDiscreteScheduler:
    """A fresh flow-matching scheduler for one run: the model's own (``name`` None) or a named one."""
    if name is None:
        return type(scheduler).from_config(scheduler.config)
    if name not in FLOW_SCHEDULERS:
        raise ValueError(f"Scheduler {name!r} does not work with flow-matching models (SD3, Flux); "
                         f"choose one of: {', '.join(FLOW_SCHEDULER_NAMES)}.")
    spacing = {key: False for key in _SIGMA_SPACINGS} | FLOW_SCHEDULERS[name]
    return FlowMatchEulerDiscreteScheduler.from_config(scheduler.config, **spacing)


@dataclass
class FlowConditioning:
    """What the transformer needs besides latents and timestep (doubled for CFG where used)."""

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)


class FlowMatchingDifferentialPipeline(DifferentialPipeline):
    """The differential loop on a flow-matching transformer; subclasses fill in the family."""

    family = "flow"
    model_name = "transformer"
    scheduler_names = FLOW_SCHEDULER_NAMES
    helper: Any

    def _init_common(self, native_resolution: int | None, patch_size: int) -> None:
        self.helper.set_progress_bar_config(disable=True)
        self.vae_scale_factor: int = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.patch_size = patch_size
        self.native_resolution: int = native_resolution or self._default_resolution()

    def _default_resolution(self) -> int:
        return 1024

    # -- components (scheduler, device, to: DifferentialPipeline) --------------------------------
    @property
    def vae(self) -> Any:
        return self.helper.vae

    @property
    def transformer(self) -> Any:
        return self.helper.transformer

    @property
    def pad_multiple(self) -> int:
        """Images are padded to multiples of this many pixels (one transformer patch)."""
        return self.vae_scale_factor * self.patch_size

    # -- what a family fills in ------------------------------------------------------------------
    def encode_prompt(self, prompt: str, negative_prompt: str | None, num_images: int,
                      guidance_scale: float, true_cfg_scale: float) -> FlowConditioning:
        raise NotImplementedError

    def to_model_layout(self, x: torch.Tensor) -> torch.Tensor:
        """B x C x h x w latents -> the layout the transformer takes (SD3: unchanged)."""
        return x

    def from_model_layout(self, x: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
        return x

    def predict(self, latents: torch.Tensor, t: torch.Tensor, cond: FlowConditioning,
                guidance_scale: float, true_cfg_scale: float,
                latent_hw: tuple[int, int]) -> torch.Tensor:
        """The (guided) velocity for ``latents`` (model layout) at timestep ``t``."""
        raise NotImplementedError

    # -- shared steps ----------------------------------------------------------------------------
    def new_scheduler(self, name: str | None) -> Any:
        return make_flow_scheduler(name, self.scheduler)

    def prepare_image(self, image: Image.Image) -> tuple[torch.Tensor, np.ndarray]:
        """Image -> (1 x 3 x H' x W' tensor in [-1, 1], H x W x 3 float input in [0, 1]).

        H', W' are H, W rounded up to a whole number of patches by repeating the border pixels;
        the result is cropped back afterwards."""
        padded, original = padded_pixels(image, self.pad_multiple)
        tensor = self.helper.image_processor.preprocess(
            Image.fromarray(padded), height=padded.shape[0], width=padded.shape[1])
        return tensor.to(dtype=torch.float32), original

    def prepare_latents(
        self, image: torch.Tensor, batch_size: int, generator: Generator, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``z_init`` (the encoded, normalised image, B copies) and ``noise``, the one Gaussian
        draw reused for every noised original (B x C x h x w). With a list of generators, image
        i is encoded with generator i, so variant i alone (its own seed) gives the same result."""
        check_generators(generator, batch_size)
        image = image.to(device=self.device, dtype=dtype)
        if isinstance(generator, list):
            z_init = torch.cat([retrieve_latents(self.vae.encode(image), generator=g)
                                for g in generator])
        else:
            z_init = retrieve_latents(self.vae.encode(image), generator=generator)
        cfg = self.vae.config
        z_init = ((z_init - (cfg.shift_factor or 0.0)) * cfg.scaling_factor).to(dtype)
        if z_init.shape[0] != batch_size:
            z_init = torch.cat([z_init] * batch_size)
        noise = randn_tensor(z_init.shape, generator=generator, device=self.device, dtype=dtype)
        return z_init, noise

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """B x C x h x w latents -> B x H' x W' x 3 float32 in [0, 1] (padded size)."""
        cfg = self.vae.config
        latents = (latents / cfg.scaling_factor + (cfg.shift_factor or 0.0)).to(self.vae.dtype)
        decoded = self.vae.decode(latents, return_dict=False)[0]
        return self.helper.image_processor.postprocess(decoded, output_type="np")

    def reinject(self, scheduler: Any, latents: torch.Tensor, z_init: torch.Tensor,
                 noise: torch.Tensor, t: torch.Tensor, keep: torch.Tensor,
                 changes: bool = True) -> torch.Tensor:
        """Regions whose own run has not started yet go back to the original, noised to ``t``
        (``scale_noise``: the sigma of the step the scheduler is at); ``changes``: see the base."""
        if not changes:
            return latents
        noised = scheduler.scale_noise(z_init, t.repeat(z_init.shape[0]), noise)
        return torch.where(keep, noised, latents)

    # -- the run ---------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str = "",
        image: Image.Image | None = None,
        change_map: Any = None,
        negative_prompt: str | None = None,
        num_inference_steps: int = 28,
        guidance_scale: float = 7.0,
        generator: Generator = None,
        num_images_per_prompt: int = 1,
        scheduler: str | None = None,
        output_type: str = "pil",
        keep_unchanged_exact: bool = True,
        callback: Callable[[StepInfo], None] | None = None,
        cancel: threading.Event | None = None,
        refiner_split: float | None = None,
        true_cfg_scale: float = 1.0,
    ) -> DifferentialDiffusionOutput:
        """Edit ``image`` where ``change_map`` allows (1 = change fully, 0 = keep exactly).

        ``change_map``: PIL image or H x W array in [0, 1], any size (resized to the image).
        ``generator``: one, or one per image (variant i of seed S is reproduced alone by S + i).
        ``scheduler``: None (the model's own) or one of :data:`FLOW_SCHEDULER_NAMES`.
        ``output_type="latent"`` gives B x C x h x w latents (unpacked, for Flux too).
        ``true_cfg_scale`` (Flux only): real classifier-free guidance with the negative prompt.
        """
        # 1. Image and map: steps per latent cell; Algorithm 2 skips what changes nothing.
        run = self.prepare_run(image, change_map, num_inference_steps, num_images_per_prompt,
                               output_type, keep_unchanged_exact, refiner_split)
        if run.longest == 0:
            return self.unchanged_result(run, generator)
        raise_if_cancelled(cancel, 0, run.longest)
        sched, start, timesteps = self.prepare_timesteps(run, scheduler)
        k, batch, latent_hw = run.k, run.batch, run.latent_hw

        # 2. Prompt, latents and the one noise tensor, all in the transformer's layout.
        cond = self.encode_prompt(prompt, negative_prompt, batch, guidance_scale, true_cfg_scale)
        dtype = cond.prompt_embeds.dtype
        z_init, noise = self.prepare_latents(run.image_tensor, batch, generator, dtype)
        channels = z_init.shape[1]
        z_init, noise = self.to_model_layout(z_init), self.to_model_layout(noise)
        steps = self.to_model_layout(run.steps.expand(1, channels, *latent_hw))
        latents = sched.scale_noise(z_init, timesteps[:1].repeat(batch), noise)

        # 3. The loop. Step index i runs from `start` (noisiest) to k-1.
        for j, t in enumerate(timesteps):
            raise_if_cancelled(cancel, j, len(timesteps))
            i = start + j // sched.order
            # Nested masks: a region with n steps is re-injected up to and including step k-n.
            # At the first step every region is the noised original already (a no-op there).
            latents = self.reinject(sched, latents, z_init, noise, t, keep=steps <= k - i,
                                    changes=reinjection_changes(j, i, k, run.fewest))
            velocity = self.predict(latents, t, cond, guidance_scale, true_cfg_scale, latent_hw)
            sigma = sched.sigmas[start * sched.order + j]
            previous = latents
            latents = sched.step(velocity, t, latents, return_dict=False)[0]
            if callback is not None:
                # The clean estimate of a rectified flow: x0 = x_t - sigma * v.
                denoised = previous - sigma.to(previous.device, previous.dtype) * velocity
                callback(StepInfo(step=j + 1, total=len(timesteps),
                                  latents=self.from_model_layout(latents, latent_hw),
                                  denoised=self.from_model_layout(denoised, latent_hw),
                                  family=self.family, latent_size=run.latent_size,
                                  backdrop=run.backdrop))
        if run.fewest == 0:  # strength-0 regions end exactly on the original latent
            latents = torch.where(steps == 0, z_init, latents)

        # 4. Decode, crop the padding, put the kept pixels back exactly.
        return self.finish_run(run, self.from_model_layout(latents, latent_hw), len(timesteps))
