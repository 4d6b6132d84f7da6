"""Running a loaded pipeline faster: memory layout, compilation, attention, a tiled VAE and a
tiny-autoencoder preview. Each is an option of the server (``--channels-last``, ``--compile``,
``--vae-tile-above``, ``--preview-vae``) applied once after loading; none changes the pictures
beyond floating-point rounding (the tiled VAE: each tile is normalised on its own, so a tiled
picture differs slightly from an untiled one; ``DifferentialPipeline.tile_vae_for``).

Attention needs no option: diffusers' attention processors call PyTorch's
``scaled_dot_product_attention`` (flash / memory-efficient kernels on GPUs) by default;
:func:`attention_processors` lets a test hold every family to that.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from server.config import PipelineOptions

TINY_PREVIEW_VAE = "tiny-taesd"  # a random-weight AutoencoderTiny, for tests


def denoisers(pipe: Any) -> list[torch.nn.Module]:
    """The model(s) called at every step: the UNet or transformer (and an SDXL refiner's UNet)."""
    helpers = [getattr(pipe, "helper", None), getattr(pipe, "refiner", None)]
    found = [getattr(h, name, None) for h in helpers if h is not None for name in ("unet", "transformer")]
    found += [getattr(pipe, "unet_2", None)]  # DeepFloyd IF's stage II
    return [m for m in found if isinstance(m, torch.nn.Module)]


def autoencoders(pipe: Any) -> list[torch.nn.Module]:
    helper = getattr(pipe, "helper", None)
    found = [getattr(helper, name, None) for name in ("vae", "movq")]
    return [m for m in found if isinstance(m, torch.nn.Module)]


def use_channels_last(pipe: Any) -> None:
    """Convolution weights in NHWC order, which cuDNN's tensor-core kernels (and oneDNN) prefer;
    activations follow the weights' layout."""
    for module in denoisers(pipe) + autoencoders(pipe):
        module.to(memory_format=torch.channels_last)


def compile_denoisers(pipe: Any, backend: str = "inductor", mode: str | None = None) -> None:
    """``torch.compile`` each denoiser in place (``Module.compile``: the pipeline keeps the same
    module object, so its device, dtype and config read as before). Compilation happens on the
    first call: see :func:`warm_up`."""
    for module in denoisers(pipe):
        module.compile(backend=backend, mode=mode)


def warm_up(pipe: Any, steps: int = 2, guidance_scale: float = 7.5) -> None:
    """One small job at the model's native resolution (with classifier-free guidance, as
    painters run), so that compilation and kernel selection happen before the first client."""
    size = pipe.native_resolution
    image = Image.new("RGB", (size, size), (128, 128, 128))
    pipe(prompt="warm-up", image=image, change_map=np.ones((size, size), np.float32),
         num_inference_steps=steps, guidance_scale=guidance_scale, output_type="latent")


def attention_processors(pipe: Any) -> set[str]:
    """The class names of every attention processor in the pipeline's denoisers and VAEs."""
    names: set[str] = set()
    for module in denoisers(pipe) + autoencoders(pipe):
        if hasattr(module, "attn_processors"):
            names |= {type(proc).__name__ for proc in module.attn_processors.values()}
    return names


def load_preview_vae(name: str, device: str | torch.device, dtype: torch.dtype) -> Any:
    """diffusers' ``AutoencoderTiny`` (TAESD: ``madebyollin/taesd`` for SD 1.x/2.x,
    ``madebyollin/taesdxl`` for SDXL; a local folder or a hub id), or a random-weight one for
    tests (:data:`TINY_PREVIEW_VAE`)."""
    from diffusers import AutoencoderTiny

    if name == TINY_PREVIEW_VAE:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            vae = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8),
                                  decoder_block_out_channels=(8, 8, 8, 8),
                                  num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))
    else:
        from server.models.files import ModelNotFoundError, one_line

        try:
            vae = AutoencoderTiny.from_pretrained(name, use_safetensors=True)
        except Exception as exc:
            raise ModelNotFoundError(f"Could not load the preview autoencoder {name!r}: "
                                     f"{one_line(exc)}") from exc
    return vae.eval().to(device=device, dtype=dtype)


def apply_options(pipe: Any, options: PipelineOptions) -> Any:
    """``options`` applied to a loaded pipeline (the compiled one warmed up); the pipeline."""
    native = getattr(pipe, "native_resolution", 512)
    pipe.vae_tile_above = options.vae_tile_above or 2 * native
    if options.preview_vae:
        pipe.preview_decoder = PreviewDecoder(load_preview_vae(options.preview_vae, pipe.device, pipe.dtype))
    if options.channels_last:
        use_channels_last(pipe)
    if options.compile:
        compile_denoisers(pipe, backend=options.compile_backend)
        warm_up(pipe)
    return pipe


class PreviewDecoder:
    """Latents -> an RGB preview through a tiny autoencoder: the picture's shapes and colours at
    half its size, for about 1 % of the full VAE's cost (TAESD), instead of the linear map's
    blurry 1/8 size one."""

    def __init__(self, vae: Any) -> None:
        self.vae = vae

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> np.ndarray:
        """One variant's latents (C x h x w, scaled as the denoiser sees them) -> uint8 RGB at
        4 h x 4 w (the decoded picture area-averaged by 2)."""
        vae = self.vae
        # TAESD reads the latents the denoiser sees (its scaling_factor is 1.0 by convention).
        decoded = vae.decode(latents[None].to(vae.device, vae.dtype) / vae.config.scaling_factor).sample
        small = torch.nn.functional.avg_pool2d(decoded.float(), 2)[0]
        rgb = ((small.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return rgb.permute(1, 2, 0).cpu().numpy()
