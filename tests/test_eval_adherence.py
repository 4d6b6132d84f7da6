"""The adherence harness: its maps, its pictures, and the Table 1 run on stand-in editors with known behaviour."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from eval import adherence
from eval.images import image_set, synthetic_image
from eval.maps import MAP_KINDS, gradient_map, make_map, shapes_map, triangles_map
from eval.metrics import FALLBACK_DISTANCE, get_distance


@pytest.mark.parametrize("kind", MAP_KINDS)
def test_maps_are_deterministic_in_range_and_spread_over_strengths(kind: str) -> None:
    a = make_map(kind, 96, 64, seed=3)
    assert a.shape == (64, 96) and a.dtype == np.float32
    np.testing.assert_array_equal(a, make_map(kind, 96, 64, seed=3))
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert len(np.unique(np.round(a, 3))) >= 4  # several strengths, not a mask


def test_gradient_runs_from_keep_to_change() -> None:
    m = gradient_map(11, 3)
    np.testing.assert_allclose(m[0], np.linspace(0, 1, 11), atol=1e-6)
    assert (m == m[0]).all()


def test_shapes_sit_on_a_keep_background_and_triangles_tile_the_picture() -> None:
    s = shapes_map(128, 128, seed=0)
    assert s[0, 0] == 0.0 or s[-1, -1] == 0.0 or s[0, -1] == 0.0  # background shows somewhere at a corner
    assert 0.1 < (s > 0).mean() < 0.9
    t = triangles_map(90, 90, seed=0, cells=3)
    # Inside one cell, a diagonal splits it in two constant halves.
    cell = t[:30, :30]
    assert len(np.unique(cell)) <= 2
    assert make_map("shapes", 32, 32, seed=1).tobytes() != make_map("shapes", 32, 32, seed=2).tobytes()
    with pytest.raises(ValueError, match="unknown map kind"):
        make_map("stars", 8, 8)


def test_pictures_are_deterministic_and_varied() -> None:
    a = synthetic_image(64, 48, seed=1)
    assert a.shape == (48, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, synthetic_image(64, 48, seed=1))
    assert not np.array_equal(a, synthetic_image(64, 48, seed=2))
    assert a.std() > 20  # edges, colours and texture, not a flat field
    assert len(image_set(3, 32, 32)) == 3


def test_binarise_changes_fully_above_threshold_and_keeps_below() -> None:
    m = np.array([[0.0, 0.3, 0.5, 0.9]], dtype=np.float32)
    np.testing.assert_array_equal(adherence.binarise(m, 0.4), [[0, 0, 1, 1]])
    np.testing.assert_array_equal(adherence.binarise(m, 0.5), [[0, 0, 0, 1]])  # exactly at it: kept


class _Editor:
    """Stand-in pipeline: blends each pixel toward seeded noise by `follow(map)`."""

    def __init__(self, follow) -> None:
        self.follow = follow
        self.calls: list[dict] = []

    def __call__(self, *, image, change_map, generator, **kwargs):
        self.calls.append({"change_map": np.array(change_map), "seed": generator.initial_seed(), **kwargs})
        x = np.asarray(image, dtype=np.float64)
        rng = np.random.default_rng(generator.initial_seed())
        noise = rng.integers(0, 256, size=x.shape)
        amount = self.follow(np.asarray(change_map, dtype=np.float64))[..., None]
        out = np.clip(np.round(x * (1 - amount) + noise * amount), 0, 255).astype(np.uint8)
        return SimpleNamespace(images=[Image.fromarray(out)], steps_run=kwargs["num_inference_steps"])


def test_an_editor_that_follows_the_map_beats_the_binary_baseline_on_a_gradient() -> None:
    images = image_set(3, 48, 48)
    editor = _Editor(lambda m: m)
    result = adherence.run_adherence(
        editor, images, steps=4, thresholds=(0.25, 0.5, 0.75), distance=get_distance(FALLBACK_DISTANCE)
    )
    ours, base = result.ours["gradient"], result.baseline["gradient"]
    assert ours.cam > 0.9
    # A step can only correlate with a ramp up to sqrt(3)/2 = 0.866 (at the middle).
    assert base.cam < 0.88 and base.threshold == 0.5
    assert ours.cam > base.cam and ours.dam < base.dam
    # 3 all-change runs, then per kind 3 runs with the map and 3 per usable threshold.
    usable = sum(len(v) for v in result.baseline_by_threshold.values())
    assert result.runs == 3 + 3 * len(MAP_KINDS) + 3 * usable == len(editor.calls)
    assert result.distance == FALLBACK_DISTANCE


def test_every_method_sees_the_same_seed_per_picture() -> None:
    editor = _Editor(lambda m: m)
    adherence.run_adherence(
        editor, image_set(2, 32, 32), steps=2, thresholds=(0.5,), kinds=("gradient",), seed=10,
        distance=get_distance(FALLBACK_DISTANCE),
    )
    by_seed: dict[int, int] = {}
    for call in editor.calls:
        by_seed[call["seed"]] = by_seed.get(call["seed"], 0) + 1
        assert call["prompt"] == "" and call["num_inference_steps"] == 2
    assert by_seed == {10: 3, 11: 3}  # all-change, ours, baseline for each picture
    assert editor.calls[0]["change_map"].min() == 1.0  # the all-change run comes first


def test_an_editor_that_ignores_the_map_scores_the_worst() -> None:
    editor = _Editor(lambda m: np.full_like(m, 0.5))
    result = adherence.run_adherence(
        editor, image_set(2, 32, 32), steps=2, thresholds=(0.5,), distance=get_distance(FALLBACK_DISTANCE)
    )
    for kind in MAP_KINDS:
        # Every run equals the all-change run: E_M is 0, CAM undefined, DAM as bad as it gets.
        m = make_map(kind, 32, 32)
        assert math.isnan(result.ours[kind].cam)
        assert result.ours[kind].dam == pytest.approx(float(np.linalg.norm(m - m.mean())))


def test_table_has_the_paper_layout() -> None:
    editor = _Editor(lambda m: m)
    result = adherence.run_adherence(
        editor, image_set(1, 32, 32), steps=2, thresholds=(0.5,), distance=get_distance(FALLBACK_DISTANCE)
    )
    table = adherence.format_table(result, "stand-in")
    for kind in MAP_KINDS:
        assert f"{kind} CAM" in table and f"{kind} DAM" in table
    assert "Differential diffusion (ours)" in table and "Binary-mask inpaint" in table
    assert FALLBACK_DISTANCE in table
    # Each row holds its own method's numbers, kind by kind, in the header's order.
    lines = table.splitlines()
    (header,) = [line for line in lines if line.startswith("method")]
    assert header.split()[1:] == [w for kind in MAP_KINDS for w in (kind, "CAM", kind, "DAM")]
    rows = {
        line[:34].strip(): line[34:].split() for line in lines
        if line.startswith(("Differential diffusion", "Binary-mask", "  best threshold"))}
    for name, scores in (("Differential diffusion (ours)", result.ours),
                         ("Binary-mask inpaint (best thr.)", result.baseline)):
        assert rows[name] == [f"{v:.{n}f}" for kind in MAP_KINDS
                              for v, n in ((scores[kind].cam, 3), (scores[kind].dam, 2))], name
    assert rows["best threshold"] == [f"{result.baseline[kind].threshold:g}" for kind in MAP_KINDS]
    assert result.ours["gradient"].cam != result.baseline["gradient"].cam  # so a swapped row would show
    line = adherence.summary_line(result)
    pairs = dict(p.split("=") for p in line.split())
    assert set(pairs) >= {"cam_gradient", "dam_shapes", "baseline_cam_triangles", "distance"}
    for kind in MAP_KINDS:
        ours, base = result.ours[kind], result.baseline[kind]
        assert (pairs[f"cam_{kind}"], pairs[f"dam_{kind}"]) == (f"{ours.cam:.4f}", f"{ours.dam:.3f}")
        assert (pairs[f"baseline_cam_{kind}"], pairs[f"baseline_dam_{kind}"]) == (f"{base.cam:.4f}", f"{base.dam:.3f}")
    assert pairs["distance"] == FALLBACK_DISTANCE


def test_command_line_runs_table_1_on_tiny_sd(capsys) -> None:
    import torch

    threads = torch.get_num_threads()
    try:
        code = adherence.main(["--count", "1", "--size", "32", "--steps", "4", "--thresholds", "0.5",
                               "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    out = capsys.readouterr().out
    # Without LPIPS (and its weights) on the machine, the output names the fallback it used instead.
    from eval.metrics import LPIPS_DISTANCE, lpips_unavailable_reason

    used = LPIPS_DISTANCE if lpips_unavailable_reason() is None else FALLBACK_DISTANCE
    if used == FALLBACK_DISTANCE:
        assert f"fallback {FALLBACK_DISTANCE}, not LPIPS" in out
    assert "model tiny-sd, 1 images 32x32, 4 steps" in out
    assert "Differential diffusion (ours)" in out and "Binary-mask inpaint (best thr.)" in out
    assert "(7 pipeline runs" in out  # all-change, then per map kind: ours and one threshold
    pairs = dict(pair.split("=", 1) for pair in out.strip().splitlines()[-1].split())
    assert pairs["distance"] == used and f"distance {used}" in out
    for kind in MAP_KINDS:
        assert math.isfinite(float(pairs[f"dam_{kind}"])) and -1.0 <= float(pairs[f"cam_{kind}"]) <= 1.0
