"""Command line: ``python -m server --model MODEL --host 127.0.0.1 --port 7860``.

Loads the model, then serves the Krita plugin over websockets until SIGINT/SIGTERM, which cancel
the running job, tell the clients and exit cleanly. The access token comes from
``--token-file FILE`` or the ``DIFFDIFF_TOKEN`` environment variable: ``--token`` still works, but
every local user can read a command line (``ps``, ``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

from server.config import DEFAULT_MODEL, ConfigError, PipelineOptions, ServerConfig, check_bind
from server.users import load_users
from shared import protocol as p

log = logging.getLogger("server")

DTYPES = ("auto", "float32", "float16", "bfloat16")
TOKEN_ENV = "DIFFDIFF_TOKEN"


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


def replicas_arg(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("a number of replicas (1 or more) or 'auto'")
    return int(text)


def idle_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError("a number of seconds, 0 or more (0: never)")
    return seconds


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
    parser.add_argument("--token-file", default=None, metavar="FILE",
                        help="read the access token clients must send from FILE (required off "
                             f"loopback; or set {TOKEN_ENV})")
    parser.add_argument("--token", default=None, metavar="SECRET",
                        help="the access token itself: visible to every local user in the "
                             "process list, prefer --token-file")
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
    parser.add_argument("--max-unread-bytes", type=int, default=ServerConfig.max_unread_bytes,
                        help="what may wait unread for one client before its next job waits "
                             "too (default: %(default)s)")
    parser.add_argument("--max-region-pixels", type=int, default=None,
                        help="regions larger than this run downscaled (default: 1.5x the "
                             "model's native resolution per side, squared)")
    parser.add_argument("--depth-model", default=None, metavar="MODEL",
                        help="depth model for depth maps (Depth Anything, DPT; hub id or "
                             "folder). Default: Depth-Anything-V2-Small-hf; tiny-depth beside "
                             "a tiny --model")
    parser.add_argument("--segment-model", default=None, metavar="MODEL",
                        help="Segment-Anything model for maps from clicks (hub id or folder). "
                             "Default: facebook/sam-vit-base; tiny-segments beside a tiny "
                             "--model")
    parser.add_argument("--map-models-idle", type=idle_seconds, default=ServerConfig.map_models_idle_s,
                        metavar="SECONDS",
                        help="free the depth and segment models after this long unused (they load "
                             "again on the next map); 0 keeps them loaded. Default: %(default)g")
    parser.add_argument("--lora", default=None, metavar="FILE",
                        help="a LoRA (.safetensors, e.g. an LCM-LoRA for Live mode) merged into --model at start")
    parser.add_argument("--lora-scale", type=float, default=1.0, metavar="S",
                        help="how strongly the LoRA counts (default 1)")
    studio = parser.add_argument_group("studio (many painters, many GPUs)")
    studio.add_argument("--engine", choices=("inprocess", "ray"), default="inprocess",
                        help="inprocess: one worker in this process (default); ray: workers on "
                             "a Ray Serve deployment (pip install '.[ray]')")
    studio.add_argument("--ray-address", default=None, metavar="ADDRESS",
                        help="join this Ray cluster (auto, ray://host:10001); default: start a "
                             "local Ray instance")
    studio.add_argument("--replicas", type=replicas_arg, default="auto", metavar="N|auto",
                        help="workers in the pool (auto: one per GPU; one on the CPU without)")
    studio.add_argument("--ray-app-name", default=None, metavar="NAME",
                        help="the Serve application of this server's workers (default: "
                             "diffdiff-<machine>-<port>, one per server on a shared cluster)")
    studio.add_argument("--users", default=None, metavar="FILE",
                        help="studio users: a JSON file of name -> token, optional max_jobs and "
                             "models (see the README's Studio section)")
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


def read_token(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """The access token from ``--token-file``, ``--token`` or the environment (in that order),
    or None; raises ConfigError for one that cannot be used."""
    if args.token is not None and args.token_file is not None:
        raise ConfigError("Give the token once: --token-file or --token, not both.")
    if args.token_file is not None:
        try:
            with open(args.token_file, encoding="utf-8") as file:
                token = file.read().strip()  # an editor's final newline is no part of it
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"Cannot read the token file {args.token_file!r}: {exc}") from None
        source = f"the token file {args.token_file!r}"
    elif args.token is not None:
        token, source = args.token, "--token"
        log.warning("--token puts the token in the process list, where every local user can "
                    "read it: use --token-file FILE or the %s environment variable instead.",
                    TOKEN_ENV)
    else:
        token, source = environ.get(TOKEN_ENV, ""), TOKEN_ENV
        if not token:
            return None
    if not token or not p.is_text(token) or token != token.strip():
        raise ConfigError(f"The token from {source} is empty, has spaces around it or is not "
                          f"valid text.")
    return token


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    models = list(dict.fromkeys([args.model, *args.allow_model]))
    try:
        token = read_token(args, os.environ)
        users = load_users(args.users, models) if args.users else None
        # Before the (slow) model load: a refused bind should fail at once.
        check_bind(args.host, token or ("users" if users else None))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.engine == "ray" and importlib.util.find_spec("ray") is None:
        print("error: --engine ray needs Ray Serve: pip install '.[ray]'", file=sys.stderr)
        return 2
    device = args.device or best_device()
    config = ServerConfig(
        model=args.model, host=args.host, port=args.port, token=token, device=device,
        dtype=resolve_dtype(args.dtype, device), preview_every=args.preview_every,
        max_pixels=args.max_pixels, max_message_bytes=args.max_message_bytes,
        max_region_pixels=args.max_region_pixels, max_unread_bytes=args.max_unread_bytes,
        extra_models=tuple(args.allow_model),
        refiner=args.refiner, console_progress=None, depth_model=args.depth_model,
        segment_model=args.segment_model, map_models_idle_s=args.map_models_idle,
        lora=args.lora, lora_scale=args.lora_scale, engine=args.engine,
        ray_address=args.ray_address, replicas=args.replicas, ray_app_name=args.ray_app_name,
        users=users,
        pipeline_options=PipelineOptions(
            channels_last=args.channels_last, compile=args.compile, preview_vae=args.preview_vae,
            vae_tile_above=args.vae_tile_above))
    if users:
        log.info("studio users: %s", ", ".join(u.name for u in users.users))
    log.info("loading %s on %s (%s)", args.model, device, args.dtype)
    try:
        from server.app import DiffusionServer  # torch, diffusers: after the bind check

        asyncio.run(serve_until_signal(DiffusionServer(config)))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if type(exc).__name__ in ("ModelNotFoundError", "LoraError"):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
