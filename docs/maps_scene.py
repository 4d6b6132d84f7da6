"""A small synthetic 3D scene for the README's maps picture (docs/make_maps_picture.py): a few
shaded spheres and a box on a checkered ground under a sky, ray cast with numpy, together with
its exact depth from the same rays.

No depth checkpoint can be downloaded where the picture is made, so the depth map comes from the
renderer itself, in the depth map maker's convention: the z-buffer's view-space depth turned into
inverse depth (what Depth Anything predicts: larger = nearer; the sky is 0) and stretched to
gray8 by ``server.map_makers.normalise_depth``: near = white, far (and the sky) = black.
"""

from __future__ import annotations

import numpy as np

# (centre x, y, z, radius, RGB albedo); the camera sits at the origin looking down -z (tilted a
# little down), the ground is y = GROUND_Y. Near left, middle, far right.
SPHERES = (
    ((-1.25, -0.45, -3.4), 0.55, (0.85, 0.25, 0.20)),
    ((0.55, -0.25, -5.6), 0.75, (0.25, 0.55, 0.85)),
    ((2.6, 0.10, -10.0), 1.10, (0.90, 0.75, 0.25)),
)
# (min corner, max corner, RGB albedo): an axis-aligned box on the ground, far left.
BOXES = (((-3.6, -1.0, -9.5), (-2.1, 0.6, -8.0), (0.55, 0.80, 0.45)),)
GROUND_Y = -1.0
LIGHT = np.array([-0.5, 0.8, 0.35]) / np.linalg.norm([-0.5, 0.8, 0.35])
FOV_Y = np.radians(50.0)
TILT = np.radians(-8.0)  # the camera looks a little down: the ground fills the lower half
EPS = 1e-4


def _pitch() -> np.ndarray:
    c, s = np.cos(TILT), np.sin(TILT)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])


FORWARD = np.array([0.0, 0.0, -1.0]) @ _pitch()  # the view axis: view-space depth is along it


def camera_rays(width: int, height: int) -> np.ndarray:
    """Unit ray directions, H x W x 3, through each pixel's centre."""
    half_h = np.tan(FOV_Y / 2)
    half_w = half_h * width / height
    xs = ((np.arange(width) + 0.5) / width * 2 - 1) * half_w
    ys = (1 - (np.arange(height) + 0.5) / height * 2) * half_h
    x, y = np.meshgrid(xs, ys)
    d = np.stack([x, y, -np.ones_like(x)], axis=-1) @ _pitch()
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def _sphere(origin: np.ndarray, d: np.ndarray, centre, radius: float) -> np.ndarray:
    """Distance along each ray to the sphere (inf: missed)."""
    oc = origin - np.asarray(centre)
    b = (d * oc).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - radius * radius)
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    return np.where((disc > 0) & (t > EPS), t, np.inf)


def _box(origin: np.ndarray, d: np.ndarray, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """Distance along each ray to the box (inf: missed) and the normal of the face hit."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = (np.asarray(lo) - origin) / d, (np.asarray(hi) - origin) / d
    near, far = np.fmin(t0, t1), np.fmax(t0, t1)
    t_in, t_out = np.nanmax(near, axis=-1), np.nanmin(far, axis=-1)
    axis = np.nanargmax(near, axis=-1)[..., None]
    normal = np.zeros(d.shape)
    np.put_along_axis(normal, axis, -np.sign(np.take_along_axis(d, axis, -1)), -1)
    return np.where((t_in <= t_out) & (t_in > EPS), t_in, np.inf), normal


def trace(origin: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each ray's nearest hit: distance (inf: the sky), surface normal, albedo and what was hit
    (-1 the sky, 0 the ground, 1.. the spheres, then the boxes)."""
    d = np.broadcast_to(d, np.broadcast_shapes(np.shape(origin), d.shape))
    origin = np.broadcast_to(origin, d.shape)
    normal, albedo = np.zeros(d.shape), np.zeros(d.shape)
    ids = np.full(d.shape[:-1], -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(d[..., 1] < 0, (GROUND_Y - origin[..., 1]) / d[..., 1], np.inf)
    t = np.where(t > EPS, t, np.inf)
    ground = np.isfinite(t)
    ids[ground] = 0
    normal[ground] = (0.0, 1.0, 0.0)
    hit = origin[ground] + t[ground][:, None] * d[ground]
    checker = (np.floor(hit[:, 0]) + np.floor(hit[:, 2])) % 2 == 0
    albedo[ground] = np.where(checker[:, None], (0.78, 0.76, 0.70), (0.46, 0.44, 0.40))
    for index, (centre, radius, colour) in enumerate(SPHERES, start=1):
        ts = _sphere(origin, d, centre, radius)
        closer = ts < t
        t = np.where(closer, ts, t)
        normal[closer] = (origin[closer] + ts[closer][:, None] * d[closer] - centre) / radius
        albedo[closer] = colour
        ids[closer] = index
    for index, (lo, hi, colour) in enumerate(BOXES, start=len(SPHERES) + 1):
        tb, nb = _box(origin, d, lo, hi)
        closer = tb < t
        t = np.where(closer, tb, t)
        normal[closer] = nb[closer]
        albedo[closer] = colour
        ids[closer] = index
    return t, normal, albedo, ids


def render_scene(width: int = 768, height: int = 512) -> tuple[np.ndarray, ...]:
    """(RGB uint8 H x W x 3, view-space depth float H x W: inf for the sky, what each pixel shows:
    -1 the sky, 0 the ground, 1.. the spheres then the boxes)."""
    d = camera_rays(width, height)
    t, normal, albedo, ids = trace(np.zeros(3), d)
    hit = np.isfinite(t)
    points = np.where(hit[..., None], np.where(hit, t, 0.0)[..., None] * d, 0.0)
    # Lambert with an ambient term and hard shadows (a ray from each point towards the light).
    shadow = trace(points + normal * 1e-3, LIGHT)[0]
    lit = np.clip((normal * LIGHT).sum(-1), 0.0, 1.0) * ~np.isfinite(shadow)
    shade = (0.28 + 0.72 * lit)[..., None]
    up = np.clip(d[..., 1] * 2.5 + 0.35, 0.0, 1.0)[..., None]
    sky = (1 - up) * np.array([0.93, 0.86, 0.78]) + up * np.array([0.36, 0.56, 0.86])
    haze = np.where(hit, 1 - np.exp(-np.where(hit, t, 0.0) / 22.0), 1.0)[..., None]
    colour = np.where(hit[..., None], albedo * shade, sky) * (1 - haze) + sky * haze
    rgb = np.clip(colour * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return rgb, np.where(hit, points @ FORWARD, np.inf), ids


def depth_gray(view_z: np.ndarray) -> np.ndarray:
    """The depth map maker's gray8 of this depth: inverse depth (0 for the sky), stretched over
    its range, near = white (``server.map_makers.normalise_depth``)."""
    from server.map_makers import normalise_depth

    finite = np.isfinite(view_z)
    return normalise_depth(np.where(finite, 1.0 / np.where(finite, view_z, 1.0), 0.0))
