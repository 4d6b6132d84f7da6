"""The pure parts of the README's maps picture (docs/make_maps_picture.py): the rendered scene's
depth is its real view-space depth, turned into the depth map maker's gray8 (near = white), and
the canvas grabs are located and assembled as they should be. Krita itself runs only in
`make maps-picture`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


maps_scene = _load("maps_scene", ROOT / "docs/maps_scene.py")


@pytest.fixture(scope="module")
def scene():
    rgb, view_z, ids = maps_scene.render_scene(144, 96)
    return rgb, view_z, ids, maps_scene.depth_gray(view_z)


def test_the_depth_is_the_view_space_depth_of_what_each_pixel_shows(scene):
    rgb, view_z, ids, _ = scene
    assert rgb.shape == (96, 144, 3) and rgb.dtype == np.uint8
    rays = maps_scene.camera_rays(144, 96)
    hit = np.isfinite(view_z)
    assert (hit == (ids >= 0)).all() and (~hit).any() and hit.any()
    points = view_z[hit][:, None] / (rays[hit] @ maps_scene.FORWARD)[:, None] * rays[hit]
    on = ids[hit]
    # Ground pixels lie on the ground plane; sphere pixels on their sphere's surface.
    np.testing.assert_allclose(points[on == 0][:, 1], maps_scene.GROUND_Y, atol=1e-9)
    for index, (centre, radius, _) in enumerate(maps_scene.SPHERES, start=1):
        assert (on == index).sum() > 10, index  # each sphere is in the picture
        distance = np.linalg.norm(points[on == index] - centre, axis=1)
        np.testing.assert_allclose(distance, radius, atol=1e-9)


def test_the_gray_map_is_the_makers_convention_near_white_sky_black(scene):
    _, view_z, ids, gray = scene
    assert gray.dtype == np.uint8 and gray.shape == view_z.shape
    assert (gray[ids == -1] == 0).all()  # the sky: infinitely far
    nearest = np.unravel_index(np.argmin(np.where(np.isfinite(view_z), view_z, np.inf)), gray.shape)
    assert gray[nearest] == 255
    # Nearer is whiter: the spheres, near to far, and the depth order everywhere.
    medians = [np.median(gray[ids == i]) for i in range(1, len(maps_scene.SPHERES) + 1)]
    assert medians == sorted(medians, reverse=True) and medians[0] > medians[-1] + 20
    finite = np.isfinite(view_z)
    order = np.argsort(view_z[finite])
    assert (np.diff(gray[finite][order].astype(int)) <= 0).all()


def test_the_document_is_found_in_a_canvas_grab_and_the_panels_assembled(scene):
    script = _load("make_maps_picture", ROOT / "docs/make_maps_picture.py")
    rgb, _, ids, gray = scene
    grab = np.full((160, 220, 3), 128, np.uint8)
    grab[30:126, 41:185] = gray[..., None]
    assert script.find_document(grab, (144, 96)) == (30, 41)
    with pytest.raises(SystemExit, match="not at 100 %"):
        script.find_document(grab, (100, 96))
    steps = script.transforms(gray, ids)
    assert [name for name, _, _ in steps] == ["band", "posterise"]
    assert steps[0][2]["band"] == int(np.median(gray[ids == 2]))  # the blue ball's depth
    picture = script.assemble([(rgb, "a"), (grab[30:126, 41:185], "b")])
    assert picture.width == 2 * script.PANEL_WIDTH + 3 * 10 and picture.height > script.PANEL_WIDTH * 96 // 144
