"""``sd15-size`` and ``sdxl-size``: the real architectures from their published configs, offline.

Built on the meta device (shapes only: under a second), which counts parameters exactly as a real
build would; building the weights takes ~20 s for SD 1.5 on a CPU core and is left to the
benchmarks (``bench/pipeline_cost.py --model sd15-size``)."""

from __future__ import annotations

import pytest

from server.models import family_of
from server.models.full_size import FULL_SIZE_MODELS, full_size_components, load_full_size, parameter_count

# The published models' parameter counts (stable-diffusion-v1-5, stable-diffusion-xl-base-1.0).
PUBLISHED = {
    "sd15-size": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sdxl-size": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                  "text_encoder_2": 694_659_840},
}


@pytest.mark.parametrize("model", FULL_SIZE_MODELS)
def test_components_have_the_published_parameter_counts(model: str) -> None:
    parts = full_size_components(model, device="meta")
    counts = {name: parameter_count(part) for name, part in parts.items() if name in PUBLISHED[model]}
    assert counts == PUBLISHED[model]
    assert all(p.is_meta for p in parts["unet"].parameters())


def test_sd15_size_unet_is_the_860m_one() -> None:
    unet = full_size_components("sd15-size", device="meta")["unet"]
    assert parameter_count(unet) == pytest.approx(860e6, rel=0.001)


@pytest.mark.parametrize(("model", "family", "native"), [("sd15-size", "sd", 512), ("sdxl-size", "sdxl", 1024)])
def test_loads_as_its_family_at_its_native_resolution(model: str, family: str, native: int) -> None:
    assert family_of(model) == family
    pipe = load_full_size(model, device="meta")
    assert pipe.family == family
    assert pipe.native_resolution == native
    assert pipe.vae_scale_factor == 8
    assert pipe.device.type == "meta"
