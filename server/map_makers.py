"""Map makers: a change map from the picture itself, by monocular depth or by segmentation
(the paper's Fig. 14 and §12: "from a single depth map, many change maps can be created").

Each model loads on first use (on the worker thread, beside the diffusion model) and is freed
again after ``idle_s`` seconds unused (``--map-models-idle``), before the worker loads another
diffusion model, and when a diffusion job runs out of memory; the next map loads it again.
Real checkpoints and the built-in tiny ones (random weights from a config, for tests and
``tiny-sd`` demos) take the same path: a model and its image processor, run the same way.
Maps run in float32 whatever the diffusion dtype: these models are small, and half precision
only adds dtype traps for point prompts.

Output: gray8 bytes at the picture's size, in the painter's convention (255 = change fully);
depth has near = white.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from server.config import DEFAULT_MAP_MODELS_IDLE_S
from server.device import free_device_memory
from server.maps import soft_inpaint_map
from shared import protocol as p

log = logging.getLogger("server.map_makers")

# Apache-2.0 (Depth Anything V2 Base/Large are non-commercial: not a default).
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
DEFAULT_SEGMENT_MODEL = "facebook/sam-vit-base"
TINY_DEPTH_MODEL = "tiny-depth"
TINY_SEGMENT_MODEL = "tiny-segments"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class FlatMapError(ValueError):
    """The model gave the same value everywhere: no map can be made from it."""


def default_map_models(diffusion_model: str) -> dict[str, str]:
    """Each kind's model when the operator names none: the tiny ones beside a tiny diffusion
    model (offline demos and tests), the real checkpoints otherwise."""
    if diffusion_model.startswith("tiny-"):
        return {"depth": TINY_DEPTH_MODEL, "segments": TINY_SEGMENT_MODEL}
    return {"depth": DEFAULT_DEPTH_MODEL, "segments": DEFAULT_SEGMENT_MODEL}


def normalise_depth(depth: np.ndarray) -> np.ndarray:
    """Relative inverse depth (what Depth Anything and DPT predict: larger = nearer) to gray8,
    near = white, stretched over its own range."""
    depth = np.asarray(depth, dtype=np.float64)
    if not np.all(np.isfinite(depth)):
        raise FlatMapError("The depth model returned invalid values (NaN or infinity); no "
                           "depth map can be made from this picture.")
    lo, hi = float(depth.min()), float(depth.max())
    if not hi - lo > 1e-6 * max(abs(lo), abs(hi)) or hi == lo:
        raise FlatMapError("The depth model sees the picture as flat (the same depth "
                           "everywhere), so there is no depth map to make. Try another "
                           "picture, or paint the map.")
    return np.floor((depth - lo) / (hi - lo) * 255.0 + 0.5).astype(np.uint8)


# --- loading ----------------------------------------------------------------------------------


def _tiny_depth() -> tuple[Any, Any]:
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessor,
    )

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                            intermediate_size=64, image_size=56, patch_size=14,
                            out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32,
                                 neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16,
                                 head_hidden_size=8)
    with _seeded(14):
        model = DepthAnythingForDepthEstimation(config)
    # Depth Anything's own processor settings, at the tiny model's size.
    processor = DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True,
                                  ensure_multiple_of=14, image_mean=IMAGENET_MEAN,
                                  image_std=IMAGENET_STD)
    return model, processor


def _tiny_segments() -> tuple[Any, Any]:
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    # num_pos_feats is half the prompt encoder's hidden size, or the shapes do not meet.
    vision = SamVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, image_size=64, patch_size=8,
                             output_channels=32, num_pos_feats=16, global_attn_indexes=[1],
                             window_size=4, mlp_dim=64)
    prompt = SamPromptEncoderConfig(hidden_size=32, image_size=64, patch_size=8,
                                    mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   mlp_dim=64, iou_head_hidden_dim=32)
    with _seeded(14):
        model = SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt,
                                   mask_decoder_config=decoder))
    processor = SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}))
    return model, processor


class _seeded:
    """Random weights that are the same on every run, without touching the global generator."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        import torch

        self._fork = torch.random.fork_rng(devices=[])
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: Any) -> None:
        self._fork.__exit__(*exc)


def load_map_model(kind: str, model_id: str) -> tuple[Any, Any]:
    """(model, image processor) for ``kind``: a tiny built-in, a hub id or a local folder
    (safetensors weights only)."""
    if model_id == TINY_DEPTH_MODEL:
        return _tiny_depth()
    if model_id == TINY_SEGMENT_MODEL:
        return _tiny_segments()
    if kind == "depth":
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        return (AutoModelForDepthEstimation.from_pretrained(model_id, use_safetensors=True),
                AutoImageProcessor.from_pretrained(model_id))
    from transformers import SamModel, SamProcessor

    return (SamModel.from_pretrained(model_id, use_safetensors=True),
            SamProcessor.from_pretrained(model_id))


# --- running ----------------------------------------------------------------------------------


class MapMakers:
    """The map models by kind, each loaded on first use and freed when unused.

    One lock guards the models: a map is made under it, so nothing frees a model in use. After
    ``idle_s`` seconds with no map made, a small daemon thread frees them all (0: never)."""

    def __init__(self, models: dict[str, str], device: str = "cpu",
                 loader: Callable[[str, str], tuple[Any, Any]] = load_map_model,
                 idle_s: float = DEFAULT_MAP_MODELS_IDLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not idle_s >= 0:
            raise ValueError(f"idle_s must be a number of seconds >= 0, got {idle_s}")
        self.models = dict(models)
        self.device = device
        self.loader = loader
        self.idle_s = idle_s
        self.clock = clock
        self._loaded: dict[str, tuple[Any, Any]] = {}
        self._cv = threading.Condition(threading.RLock())
        self._last_used = 0.0
        self._reaper: threading.Thread | None = None
        self._closed = False

    def is_loaded(self, kind: str) -> bool:
        return kind in self._loaded

    def loaded(self, kind: str) -> Any:
        """The loaded model of ``kind`` (None when it is not loaded); does not count as a use."""
        entry = self._loaded.get(kind)
        return None if entry is None else entry[0]

    def ensure(self, kind: str) -> tuple[Any, Any]:
        with self._cv:
            if kind not in self._loaded:
                model_id = self.models[kind]
                log.info("loading the %s map model %s", kind, model_id)
                model, processor = self.loader(kind, model_id)
                self._loaded[kind] = (model.to(self.device).eval(), processor)
            self._used()
            return self._loaded[kind]

    def unload(self, reason: str) -> list[str]:
        """Free every loaded map model (one log line saying why); the kinds freed. The next map
        of a kind loads it again."""
        with self._cv:
            kinds = list(self._loaded)
            if not kinds:
                return []
            self._loaded.clear()
            self._cv.notify_all()  # the reaper has nothing left to watch
        free_device_memory()  # the last references are gone: give the memory back
        log.info("unloaded the %s map model(s) (%s)", ", ".join(kinds), reason)
        return kinds

    def close(self) -> None:
        """The server stops: end the reaper thread (the models go with the process)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            reaper = self._reaper
        if reaper is not None:
            reaper.join(5.0)

    def _used(self) -> None:
        """Under the lock: a map was just made; start the reaper if none watches."""
        self._last_used = self.clock()
        if self.idle_s > 0 and self._reaper is None and not self._closed:
            self._reaper = threading.Thread(target=self._reap, name="map-models-idle",
                                            daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        """Wait until the models have been unused for ``idle_s``, then free them."""
        with self._cv:
            while self._loaded and not self._closed:
                left = self._last_used + self.idle_s - self.clock()
                if left <= 0:
                    break
                self._cv.wait(left)
            idle = bool(self._loaded) and not self._closed
            self._reaper = None
            if idle:
                self.unload(f"unused for {self.idle_s:g} s")

    def make(self, request: p.MakeMap, image: Image.Image) -> bytes:
        """The map for ``request`` from ``image`` (RGB, the request's size), as gray8 bytes."""
        with self._cv:  # the model cannot be freed while it runs
            model, processor = self.ensure(request.kind)
            if request.kind == "depth":
                gray = self._depth(model, processor, image)
            else:
                gray = self._segments(model, processor, image, request)
            self._used()
        assert gray.shape == (image.height, image.width), gray.shape
        return gray.tobytes()

    def _depth(self, model: Any, processor: Any, image: Image.Image) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        inputs = processor(images=image, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            depth = model(**inputs).predicted_depth
        depth = F.interpolate(depth[:, None].float(), size=(image.height, image.width),
                              mode="bilinear", align_corners=False)[0, 0]
        return normalise_depth(depth.cpu().numpy())

    def _segments(self, model: Any, processor: Any, image: Image.Image,
                  request: p.MakeMap) -> np.ndarray:
        import torch

        prompts: dict[str, Any] = {}
        if request.points:
            prompts["input_points"] = [[[list(point) for point in request.points]]]
        if request.box is not None:
            b = request.box
            prompts["input_boxes"] = [[[b.x, b.y, b.x + b.width, b.y + b.height]]]
        inputs = processor(images=image, return_tensors="pt", **prompts).to(self.device)
        model_inputs = {k: v for k, v in inputs.items()
                        if k in ("pixel_values", "input_points", "input_boxes", "input_labels")}
        with torch.inference_mode():
            out = model(**model_inputs, multimask_output=False)
        logits = processor.image_processor.post_process_masks(
            out.pred_masks.cpu(), inputs["original_sizes"].cpu(),
            inputs["reshaped_input_sizes"].cpu(), binarize=False)[0][0, 0]
        mask = (logits.float().numpy() > 0.0).astype(np.float32)
        if request.softness_px > 0:
            mask = soft_inpaint_map(mask, request.softness_px)
        return np.floor(mask * 255.0 + 0.5).astype(np.uint8)
