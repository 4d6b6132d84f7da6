"""Command line: ``python -m server --model MODEL --host 127.0.0.1 --port 7860 [--token T]``.

Loads the model, then serves the Krita plugin over websockets until SIGINT/SIGTERM, which cancel
the running job, tell the clients and exit cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from server.config import DEFAULT_MODEL, ConfigError, PipelineOptions, ServerConfig, check_bind
from shared import protocol as p

log = logging.getLogger("server")

DTYPES = ("auto", "float32", "float16", "bfloat16")


def best_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        # Half precision halves memory and doubles speed on GPUs; CPUs are slow or wrong in it.
        return torch.float32 if device == "cpu" else torch.float16
    return getattr(torch, name)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="Differential Diffusion server for the Krita plugin (websocket, one GPU).")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="hub id, local diffusers folder, .safetensors file, or a built-in "
                             "offline test model (tiny-sd, tiny-sdxl, tiny-sd3, tiny-flux, "
                             "tiny-kandinsky22, tiny-if; sd15-size and sdxl-size: the real "
                             "architectures with random weights, for benchmarks). Default: %(default)s")
    parser.add_argument("--refiner", default=None, metavar="MODEL",
                        help="an SDXL refiner to run after --model (e.g. tiny-sdxl-refiner); "
                             "painters set the split per job")
    parser.add_argument("--allow-model", action="append", default=[], metavar="MODEL",
                        help="another model clients may switch to (repeatable)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860, help="0 picks a free port")
    parser.add_argument("--token", default=None,
                        help="access token clients must send; required off loopback")
    parser.add_argument("--device", default=None,
                        help="cuda, cuda:1, mps or cpu (default: the best one found)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="weights precision (auto: float16 on GPUs, float32 on CPU)")
    parser.add_argument("--channels-last", action="store_true",
                        help="convolutions in NHWC memory order (faster on recent GPUs)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the denoiser (compiled at start: a minute or more; "
                             "faster steps after)")
    parser.add_argument("--preview-vae", default=None, metavar="MODEL",
                        help="previews through a tiny autoencoder (e.g. madebyollin/taesd for SD "
                             "1.x/2.x, madebyollin/taesdxl for SDXL) instead of the linear map")
    parser.add_argument("--vae-tile-above", type=int, default=None, metavar="PX",
                        help="run the VAE in tiles for pictures with a side above PX (default: "
                             "twice the model's native resolution)")
    parser.add_argument("--preview-every", type=int, default=5, metavar="N",
                        help="send a preview every N steps when the client does not say "
                             "(0: never)")
    parser.add_argument("--max-pixels", type=int, default=p.DEFAULT_MAX_PIXELS,
                        help="largest canvas accepted, in pixels (default: %(default)s)")
    parser.add_argument("--max-message-bytes", type=int, default=p.DEFAULT_MAX_MESSAGE_BYTES,
                        help="largest websocket message accepted (default: %(default)s)")
    parser.add_argument("--max-region-pixels", type=int, default=None,
                        help="regions larger than this run downscaled (default: 1.5x the "
                             "model's native resolution per side, squared)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


async def serve_until_signal(server: Any) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    caps = server.capabilities
    log.info("serving %s (%s, native %dpx) on %s%s", server.host.name, caps.device,
             caps.native_resolution, server.url, " (token required)" if caps.token_required
             else "")
    # A line a script (or a test) can wait for.
    print(f"listening on {server.url}", flush=True)
    await stop.wait()
    log.info("shutting down: cancelling jobs and closing connections")
    await server.stop()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # Before the (slow) model load: a refused bind should fail at once.
        check_bind(args.host, args.token)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = args.device or best_device()
    config = ServerConfig(
        model=args.model, host=args.host, port=args.port, token=args.token, device=device,
        dtype=resolve_dtype(args.dtype, device), preview_every=args.preview_every,
        max_pixels=args.max_pixels, max_message_bytes=args.max_message_bytes,
        max_region_pixels=args.max_region_pixels, extra_models=tuple(args.allow_model),
        refiner=args.refiner, console_progress=None,
        pipeline_options=PipelineOptions(
            channels_last=args.channels_last, compile=args.compile, preview_vae=args.preview_vae,
            vae_tile_above=args.vae_tile_above))
    log.info("loading %s on %s (%s)", args.model, device, args.dtype)
    try:
        from server.app import DiffusionServer  # torch, diffusers: after the bind check

        asyncio.run(serve_until_signal(DiffusionServer(config)))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if type(exc).__name__ == "ModelNotFoundError":
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
