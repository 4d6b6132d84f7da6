"""Large canvases: which rectangle a job processes, its inputs, and how results go back."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from server import regions
from server.maps import fan_map, soft_inpaint_map
from server.regions import CanvasMap, crop_inputs, paste, paste_back, plan_region
from shared.fan import fan_strengths
from shared.protocol import Region
from tests.conftest import make_test_image

pytestmark = pytest.mark.timeout(120)

NATIVE = 512


def box_map(canvas: tuple[int, int], box: Region, value: float = 1.0) -> CanvasMap:
    gray = np.zeros((canvas[1], canvas[0]), np.uint8)
    gray[box.y:box.y + box.height, box.x:box.x + box.width] = round(value * 255)
    return regions.map_from_gray8(gray.tobytes(), canvas, None)


def covers(outer: Region, inner: Region) -> bool:
    return (outer.x <= inner.x and outer.y <= inner.y
            and inner.x + inner.width <= outer.x + outer.width
            and inner.y + inner.height <= outer.y + outer.height)


# --- plan_region --------------------------------------------------------------------------------


def test_small_edit_on_4k_canvas_plans_a_native_size_crop_around_it():
    canvas = (3840, 2160)
    edit = Region(2000, 1000, 60, 40)
    plan = plan_region(box_map(canvas, edit), NATIVE)
    assert covers(plan.crop, edit)
    assert (plan.crop.width, plan.crop.height) == (NATIVE, NATIVE)
    assert not plan.scaled and plan.size == (NATIVE, NATIVE)
    assert plan.crop.x % 8 == 0 and plan.crop.y % 8 == 0
    # The edit sits inside the crop with context on every side.
    assert edit.x - plan.crop.x >= NATIVE // 8
    assert plan.crop.x + plan.crop.width - (edit.x + edit.width) >= NATIVE // 8



def test_a_larger_edit_gets_context_in_proportion_to_its_size():
    # A quarter of the edit's longer side (100 px here) around it, more than the 1/8-native minimum.
    edit = Region(1600, 800, 400, 300)
    c = plan_region(box_map((3840, 2160), edit), NATIVE).crop
    assert covers(c, edit)
    assert min(edit.x - c.x, edit.y - c.y) >= 100 - 8  # latent-cell alignment may take up to 7 px
    assert min(c.x + c.width - (edit.x + edit.width), c.y + c.height - (edit.y + edit.height)) >= 100 - 8
    assert c.width <= 400 + 2 * 100 + 8 and c.height <= max(300 + 2 * 100, NATIVE) + 8  # and not much more

def test_edit_at_the_canvas_corner_shifts_the_crop_inside_the_canvas():
    canvas = (2000, 1500)
    edit = Region(1990, 1490, 10, 10)
    plan = plan_region(box_map(canvas, edit), NATIVE)
    c = plan.crop
    assert covers(c, edit) and (c.width, c.height) == (NATIVE, NATIVE)
    assert c.x + c.width == 2000 and c.y + c.height == 1500


def test_large_edit_is_processed_downscaled_within_the_pixel_budget():
    canvas = (3000, 2000)
    plan = plan_region(box_map(canvas, Region(0, 0, *canvas)), NATIVE)
    assert plan.crop == Region(0, 0, *canvas)
    assert plan.scaled
    w, h = plan.size
    assert w * h <= int((1.5 * NATIVE) ** 2) and w % 8 == 0 and h % 8 == 0
    assert abs(w / h - 1.5) < 0.05  # aspect kept


def test_canvas_smaller_than_native_is_processed_whole():
    plan = plan_region(box_map((200, 120), Region(50, 50, 5, 5)), NATIVE)
    assert plan.crop == Region(0, 0, 200, 120) and not plan.scaled


def test_all_keep_map_plans_a_small_crop():
    plan = plan_region(CanvasMap.empty((4000, 3000)), NATIVE)
    assert plan.crop.width <= NATIVE and plan.crop.height <= NATIVE


def test_random_edits_always_get_a_covering_in_canvas_cell_aligned_crop():
    rng = random.Random(3)
    for _ in range(300):
        canvas = (rng.randint(8, 3000), rng.randint(8, 3000))
        w, h = rng.randint(1, canvas[0]), rng.randint(1, canvas[1])
        edit = Region(rng.randint(0, canvas[0] - w), rng.randint(0, canvas[1] - h), w, h)
        native = rng.choice([64, 512, 1024])
        change = CanvasMap(canvas, np.ones((h, w), np.float32), edit.x, edit.y)
        plan = plan_region(change, native)
        c = plan.crop
        assert covers(c, edit), (canvas, edit, c)
        assert c.x >= 0 and c.y >= 0 and c.x + c.width <= canvas[0] and c.y + c.height <= canvas[1]
        assert c.width >= min(native, canvas[0]) and c.height >= min(native, canvas[1])
        if plan.scaled:
            assert plan.size[0] * plan.size[1] <= int((1.5 * native) ** 2)
        else:
            assert plan.size == (c.width, c.height)


# --- maps over a canvas -----------------------------------------------------------------------


def test_gray8_map_is_stored_as_its_nonzero_box_and_cropped_exactly():
    canvas = (300, 200)
    gray = np.zeros((200, 300), np.uint8)
    gray[40:60, 100:130] = np.arange(30, dtype=np.uint8)[None] * 8 + 1
    change = regions.map_from_gray8(gray.tobytes(), canvas, None)
    assert change.values.shape == (20, 30) and (change.x, change.y) == (100, 40)
    assert change.bbox() == Region(100, 40, 30, 20)
    np.testing.assert_array_equal(change.full(), gray.astype(np.float32) / 255.0)
    area = Region(90, 30, 64, 64)
    np.testing.assert_array_equal(change.crop(area),
                                  gray[30:94, 90:154].astype(np.float32) / 255.0)


def test_region_confines_the_map():
    canvas = (100, 100)
    gray = np.full((100, 100), 255, np.uint8)
    change = regions.map_from_gray8(gray.tobytes(), canvas, Region(10, 20, 30, 40))
    assert change.bbox() == Region(10, 20, 30, 40)
    assert change.full().sum() == 30 * 40


def test_soft_inpaint_map_built_near_the_mask_equals_the_whole_canvas_build():
    canvas = (400, 300)
    mask = np.zeros((300, 400), np.uint8)
    mask[140:170, 200:260] = 255
    change = regions.map_from_mask(mask.tobytes(), canvas, softness_px=12.0, grow_px=3,
                                   region=None)
    whole = soft_inpaint_map(mask, 12.0, 3)
    np.testing.assert_array_equal(change.full(), whole)
    assert change.values.size < whole.size // 4  # only the mask's neighbourhood was built



def test_a_region_confines_the_soft_inpaint_map_too():
    canvas = (400, 300)
    mask = np.zeros((300, 400), np.uint8)
    mask[140:170, 200:260] = 255
    area = Region(210, 100, 100, 100)
    change = regions.map_from_mask(mask.tobytes(), canvas, 12.0, 0, area)
    inside = np.zeros((300, 400), bool)
    inside[100:200, 210:310] = True
    whole = soft_inpaint_map(mask, 12.0, 0)
    np.testing.assert_array_equal(change.full()[inside], whole[inside])
    assert not change.full()[~inside].any() and whole[~inside].any()  # the soft edge outside is cut

def test_soft_inpaint_map_touching_the_canvas_edge_equals_the_whole_canvas_build():
    canvas = (120, 90)
    mask = np.zeros((90, 120), np.uint8)
    mask[0:20, 100:120] = 255
    change = regions.map_from_mask(mask.tobytes(), canvas, 10.0, 0, None)
    np.testing.assert_array_equal(change.full(), soft_inpaint_map(mask, 10.0, 0))


def test_fan_and_uniform_maps_cover_the_region_only():
    canvas = (200, 100)
    area = Region(40, 10, 120, 60)
    fan = regions.map_fan(canvas, 4, 0.2, 0.8, area)
    expected = np.zeros((100, 200), np.float32)
    expected[10:70, 40:160] = fan_map(120, 60, fan_strengths(4, 0.2, 0.8))
    np.testing.assert_array_equal(fan.full(), expected)
    uniform = regions.map_uniform(canvas, 0.5, area)
    assert uniform.bbox() == area and float(uniform.full().max()) == 0.5
    assert regions.map_uniform(canvas, 0.0, None).bbox() is None


# --- crop, process, paste back ------------------------------------------------------------------


def test_crop_inputs_at_native_resolution_are_the_canvas_pixels():
    image = make_test_image(640, 480)
    change = box_map((640, 480), Region(300, 200, 20, 20), 0.6)
    plan = plan_region(change, 64)
    source, source_map, model_image, model_map = crop_inputs(image, change, plan)
    c = plan.crop
    assert source.size == (c.width, c.height) and model_image is source
    np.testing.assert_array_equal(np.asarray(source),
                                  np.asarray(image)[c.y:c.y + c.height, c.x:c.x + c.width])
    np.testing.assert_array_equal(source_map, change.full()[c.y:c.y + c.height,
                                                            c.x:c.x + c.width])
    assert model_map is source_map


def test_downscaled_run_is_scaled_back_and_kept_pixels_are_the_source_exactly():
    image = make_test_image(256, 128)
    gray = np.zeros((128, 256), np.uint8)
    gray[:, 128:] = 255  # right half changes, left half is kept
    change = regions.map_from_gray8(gray.tobytes(), (256, 128), None)
    plan = plan_region(change, 32, max_pixels=64 * 32)
    assert plan.scaled
    source, source_map, model_image, model_map = crop_inputs(image, change, plan)
    assert model_image.size == plan.size and model_map.shape == plan.size[::-1]
    fake_output = Image.new("RGB", plan.size, (255, 0, 255))
    final = paste_back(source, fake_output, source_map, steps=10)
    assert final.size == source.size
    out, src = np.asarray(final), np.asarray(source.convert("RGB"))
    kept = source_map == 0
    c = plan.crop
    assert kept.any() and (~kept).any()
    np.testing.assert_array_equal(out[kept], src[kept])
    full = np.asarray(paste(image, final, c))
    assert (np.abs(full[:, 200:].astype(int) - [255, 0, 255]) <= 2).all()


def test_paste_leaves_every_pixel_outside_the_region_untouched():
    canvas = make_test_image(300, 200, seed=1)
    patch = Image.new("RGB", (64, 48), (1, 2, 3))
    region = Region(100, 120, 64, 48)
    out = np.asarray(paste(canvas, patch, region))
    before = np.asarray(canvas)
    inside = np.zeros((200, 300), bool)
    inside[120:168, 100:164] = True
    np.testing.assert_array_equal(out[~inside], before[~inside])
    assert (out[inside] == [1, 2, 3]).all()


def test_small_edit_through_the_pipeline_changes_only_the_edit(tiny_sd):
    # tiny-sd's native resolution is 64: a 10x10 edit on a 320x240 canvas runs on 64x64.
    image = make_test_image(320, 240, seed=2)
    edit = Region(200, 100, 10, 10)
    change = box_map((320, 240), edit)
    plan = plan_region(change, int(tiny_sd.native_resolution))
    assert plan.size == (64, 64) and covers(plan.crop, edit)
    source, source_map, model_image, model_map = crop_inputs(image, change, plan)
    out = tiny_sd(prompt="moss", image=model_image, change_map=model_map, num_inference_steps=3,
                  generator=torch.Generator().manual_seed(5)).images[0]
    final = np.asarray(paste(image, paste_back(source, out, source_map, 3), plan.crop))
    before = np.asarray(image)
    edited = np.zeros((240, 320), bool)
    edited[edit.y:edit.y + edit.height, edit.x:edit.x + edit.width] = True
    np.testing.assert_array_equal(final[~edited], before[~edited])
    assert not np.array_equal(final[edited], before[edited])
