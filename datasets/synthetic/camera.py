"""The rig's pinhole RGB-D camera: depth ray-cast against the scene's geometry, RGB shaded from it.

The camera sits at the rig centre and looks along the heading (no pitch, no roll). Depth is
z-depth (distance along the optical axis), as stereo and structured-light cameras report it.
The complete depth (every pixel's ray cast, no hole) is what the sensor's map would be without
its holes. Holes (0 in the sensor's map) follow one of two models (``HOLE_MODELS``):

``blobs`` (the classic world's): beyond the camera's range, and random dropout blobs covering
3-8 % of the image.

``sensor`` (the default world's): where a stereo or time-of-flight depth camera fails, for these
physical reasons:

- far range: beyond the camera's range nothing is reported, and before it the valid returns thin
  out: stereo depth error grows with the square of the distance (disparity shrinks to sub-pixel)
  and a ToF return's power with its inverse square, so the camera's confidence filter drops more
  pixels the farther they are (half of them at ``RANGE_HALF_SHARE`` of the range);
- grazing incidence: a surface seen almost edge-on (the far floor, a corridor's walls) returns
  little light to a ToF sensor and is foreshortened differently in a stereo pair's two views, so
  matching fails; lost between ``GRAZING_COS`` (cosine of the angle between the ray and the
  surface normal);
- specular and dark surfaces: glass is seen through or mirrors, polished metal and glossy floors
  mirror the projector or show each stereo view a different highlight (each surface's
  ``specular`` share, from its material), and a dark surface returns too little light (albedo
  below ``DARK_ALBEDO``);
- occlusion edges: a band of ``EDGE_BAND_PX`` pixels per 64 of image width on the far side of a
  depth step: the background next to a foreground edge is seen by one stereo camera only (the
  left-right check rejects it), and ToF pixels straddling the step mix both depths and are
  filtered as flying pixels;
- textureless areas: inside a large plain surface (farther than ``TEXTURELESS_SPAN`` of the image
  width from any other surface's outline, where shading changes) a stereo matching window sees
  no texture and the match is ambiguous; the loss grows as the surface's ``texture`` falls;
- a little random dropout (``SENSOR_DROPOUT``): interference, sensor noise.

The probabilistic causes share one smooth random field per image, so holes come in patches, as a
real camera's do; beyond-range pixels and edge bands are always holes. The field is drawn from
the rng given to ``render``: the same rng state gives the same holes.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy.ndimage import distance_transform_edt, zoom

from .scene import Box, Scene

HOLE_MODELS = ("blobs", "sensor")
DROPOUT_FRACTION = (0.03, 0.08)  # share of pixels lost to dropout blobs, drawn per image
DROPOUT_BLOB_PX = 8  # rough blob size in pixels
AMBIENT = 0.25  # light that reaches every surface
LIGHT_FALLOFF_M = 6.0  # the camera-mounted lamp's intensity halves at this distance

# The sensor model's causes (see the module docstring).
RANGE_HALF_SHARE = 0.5  # half of the returns are lost at this share of the camera's range ...
RANGE_FALLOFF_POWER = 4.0  # ... and the loss rises this steeply with depth
GRAZING_COS = (0.15, 0.35)  # cos(incidence): all lost below the first, none above the second
DARK_ALBEDO = 0.1  # mean albedo below which returns weaken; all lost at 0
EDGE_JUMP_M = 0.3  # a depth step larger than this between neighbours is an occlusion edge
EDGE_BAND_PX = 1  # far-side band width per 64 pixels of image width (at least one pixel)
TEXTURELESS_SPAN = 0.12  # loss starts this share of the width inside a surface, is full at twice it
TEXTURELESS_LOSS = 0.4  # share lost deep inside a perfectly plain surface
SENSOR_DROPOUT = 0.01  # share lost anywhere
SENSOR_PATCH_SHARE = 0.08  # rough size of the hole patches, as a share of the image width


class DepthCamera:
    """A pinhole RGB-D camera on the rig.

    Args:
        height, width: image size in pixels.
        hfov_deg: horizontal field of view, degrees (square pixels).
        max_range_m: depth beyond this is a hole (0 in the depth map).
        holes: the hole model, one of ``HOLE_MODELS`` (see the module docstring).
    """

    def __init__(self, height: int, width: int, hfov_deg: float = 90.0, max_range_m: float = 12.0,
                 holes: str = "blobs") -> None:
        if holes not in HOLE_MODELS:
            raise ValueError(f"holes must be one of {HOLE_MODELS}, got {holes!r}")
        self.height, self.width, self.max_range_m, self.holes = height, width, max_range_m, holes
        focal = (width / 2) / np.tan(np.radians(hfov_deg) / 2)
        u = (np.arange(width) + 0.5 - width / 2) / focal
        v = (np.arange(height) + 0.5 - height / 2) / focal
        # Per-pixel (right, down) offsets of a ray whose forward component is 1: a hit at ray
        # parameter t then lies at z-depth t.
        self._right, self._down = (a.ravel() for a in np.meshgrid(u, v))

    def ray_directions(self, scene: Scene) -> np.ndarray:
        """(H*W, 3) world-frame ray directions, row-major, with unit forward component."""
        rig = scene.rig
        up = np.array([0.0, 0.0, 1.0])
        return (rig.forward[None] - self._right[:, None] * rig.left[None]
                - self._down[:, None] * up[None])

    def raycast(self, scene: Scene) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """First surface hit by every pixel's ray.

        Returns:
            depth: (H, W) float64 z-depth in metres (every ray hits: the room is closed).
            surface: (H, W) int index of the surface hit (the scene's surface numbering).
            normal: (H, W, 3) unit normal of that surface (sign arbitrary).
        """
        depth, surface, normal = first_hits(scene, self.ray_directions(scene))
        shape = (self.height, self.width)
        return depth.reshape(shape), surface.reshape(shape), normal.reshape(shape + (3,))

    def render(self, scene: Scene, rng: np.random.Generator
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Depth map with holes, the complete depth and the RGB image of the same view.

        Args:
            scene: room, obstacles and rig pose.
            rng: draws the holes' random part (the dropout blobs, or the sensor model's field).

        Returns:
            depth_mm: (H, W) float32 z-depth in millimetres, 0 = hole.
            complete_mm: (H, W) float32 z-depth in millimetres of every pixel (no hole).
            rgb: (H, W, 3) uint8 image.
        """
        depth, surface, normal = self.raycast(scene)
        rays = self.ray_directions(scene).reshape(self.height, self.width, 3)
        distance = depth * np.linalg.norm(rays, axis=-1)
        # Lambertian under a lamp on the camera: cos(angle of incidence), fading with distance.
        cos_incidence = np.abs(np.einsum("hwk,hwk->hw", normal, rays)) / np.linalg.norm(rays, axis=-1)
        light = AMBIENT + (1 - AMBIENT) * cos_incidence / (1 + (distance / LIGHT_FALLOFF_M) ** 2)
        rgb = np.clip(np.round(255 * scene.albedo[surface] * light[..., None]), 0, 255).astype(np.uint8)

        if self.holes == "blobs":
            holes = (depth > self.max_range_m) | self._dropout_mask(rng)
        else:
            holes = self._sensor_holes(depth, surface, cos_incidence, scene, rng)
        complete_mm = _millimetres(depth)
        return np.where(holes, np.float32(0.0), complete_mm), complete_mm, rgb

    def complete_depth_mm(self, scene: Scene) -> np.ndarray:
        """(H, W) float32 z-depth in millimetres of every pixel, as :meth:`render` returns it."""
        return _millimetres(self.raycast(scene)[0])

    def _dropout_mask(self, rng: np.random.Generator) -> np.ndarray:
        """(H, W) bool blobs covering a random share (``DROPOUT_FRACTION``) of the image."""
        coarse = rng.standard_normal((max(2, self.height // DROPOUT_BLOB_PX),
                                      max(2, self.width // DROPOUT_BLOB_PX)))
        field = zoom(coarse, (self.height / coarse.shape[0], self.width / coarse.shape[1]), order=1)
        fraction = rng.uniform(*DROPOUT_FRACTION)
        return field > np.quantile(field, 1 - fraction)


    def _sensor_holes(self, depth: np.ndarray, surface: np.ndarray, cos_incidence: np.ndarray,
                      scene: Scene, rng: np.random.Generator) -> np.ndarray:
        """(H, W) bool holes of the ``sensor`` model (causes in the module docstring).

        Args:
            depth: (H, W) z-depth in metres.
            surface: (H, W) surface index of every pixel.
            cos_incidence: (H, W) cosine of the angle between each ray and its surface's normal.
            scene: gives each surface's albedo, specular share and texture.
            rng: draws the smooth field that turns loss probabilities into hole patches.
        """
        far = (depth / (RANGE_HALF_SHARE * self.max_range_m)) ** RANGE_FALLOFF_POWER
        low, high = GRAZING_COS
        span_px = TEXTURELESS_SPAN * self.width
        inside = np.clip(_distance_to_other_surfaces(surface) / span_px - 1.0, 0.0, 1.0)
        losses = [
            far / (1.0 + far),
            np.clip((high - cos_incidence) / (high - low), 0.0, 1.0),
            scene.surface_specular()[surface],
            np.clip(1.0 - scene.albedo.mean(axis=1)[surface] / DARK_ALBEDO, 0.0, 1.0),
            TEXTURELESS_LOSS * (1.0 - scene.surface_texture()[surface]) * inside,
            np.full(depth.shape, SENSOR_DROPOUT),
        ]
        kept = np.prod([1.0 - loss for loss in losses], axis=0)
        band = EDGE_BAND_PX * max(1, round(self.width / 64))
        return ((self._patch_field(rng) < 1.0 - kept) | (depth > self.max_range_m)
                | _far_side_of_edges(depth, band))

    def _patch_field(self, rng: np.random.Generator) -> np.ndarray:
        """(H, W) smooth random field, uniform in (0, 1) over the image (ranks of smoothed noise)."""
        # Sized with the image, so that a world's holes look alike at every resolution.
        patch_px = SENSOR_PATCH_SHARE * self.width
        coarse = rng.standard_normal((max(2, round(self.height / patch_px)),
                                      max(2, round(self.width / patch_px))))
        field = zoom(coarse, (self.height / coarse.shape[0], self.width / coarse.shape[1]), order=1)
        ranks = np.argsort(np.argsort(field, axis=None)).reshape(field.shape)
        return (ranks + 0.5) / field.size


def _distance_to_other_surfaces(surface: np.ndarray) -> np.ndarray:
    """(H, W) distance in pixels from each pixel to the nearest pixel whose neighbour lies on
    another surface (inf when the whole image is one surface)."""
    outline = np.zeros(surface.shape, dtype=bool)
    for axis in (0, 1):
        change = np.diff(surface, axis=axis) != 0
        lower = [slice(None), slice(None)]
        upper = [slice(None), slice(None)]
        lower[axis], upper[axis] = slice(None, -1), slice(1, None)
        outline[tuple(lower)] |= change
        outline[tuple(upper)] |= change
    if not outline.any():
        return np.full(surface.shape, np.inf)
    return distance_transform_edt(~outline)


def _far_side_of_edges(depth: np.ndarray, band: int) -> np.ndarray:
    """(H, W) bool: pixels within ``band`` pixels (along a row or column) behind a neighbour that
    is more than ``EDGE_JUMP_M`` nearer: the far side of an occlusion edge."""
    behind = np.zeros(depth.shape, dtype=bool)
    padded = np.pad(depth, band, constant_values=np.inf)
    height, width = depth.shape
    for shift in range(1, band + 1):
        for dy, dx in ((shift, 0), (-shift, 0), (0, shift), (0, -shift)):
            neighbour = padded[band + dy:band + dy + height, band + dx:band + dx + width]
            behind |= depth - neighbour > EDGE_JUMP_M
    return behind


def first_hits(scene: Scene, dirs: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First surface hit by rays from the rig centre (the camera's pixels, the speaker's rays).

    Args:
        scene: room, obstacles and rig pose.
        dirs: (R, 3) ray directions (any length, never zero).

    Returns:
        hit: (R,) ray parameter of the hit (the distance for unit directions; every ray hits:
            the room is closed).
        surface: (R,) int index of the surface hit (the scene's surface numbering).
        normal: (R, 3) unit normal of that surface (sign arbitrary).
    """
    origin = scene.rig.origin
    n_rays, n_walls = len(dirs), scene.n_walls

    # Walls: the plan's edges in 2D. From inside the room, the nearest hit among walls, floor
    # and ceiling planes is the true one, so no inside-polygon test is needed for floor/ceiling.
    a = scene.floor
    edge = np.roll(a, -1, axis=0) - a
    rel = a - origin[:2]
    denom = dirs[:, 0:1] * edge[None, :, 1] - dirs[:, 1:2] * edge[None, :, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (rel[None, :, 0] * edge[None, :, 1] - rel[None, :, 1] * edge[None, :, 0]) / denom
        s = (rel[None, :, 0] * dirs[:, 1:2] - rel[None, :, 1] * dirs[:, 0:1]) / denom
    t = np.where((t > 1e-9) & (s >= 0) & (s <= 1), t, np.inf)
    wall = np.argmin(t, axis=1)
    hit = t[np.arange(n_rays), wall]
    surface = wall
    wall_normals = np.c_[edge[:, 1], -edge[:, 0], np.zeros(n_walls)]
    normal = wall_normals[wall] / np.linalg.norm(wall_normals[wall], axis=1, keepdims=True)

    with np.errstate(divide="ignore", invalid="ignore"):
        t_plane = np.where(dirs[:, 2] < 0, -origin[2] / dirs[:, 2],
                           np.where(dirs[:, 2] > 0, (scene.height - origin[2]) / dirs[:, 2], np.inf))
    closer = t_plane < hit
    hit = np.where(closer, t_plane, hit)
    surface = np.where(closer, np.where(dirs[:, 2] < 0, n_walls, n_walls + 1), surface)
    normal[closer] = (0.0, 0.0, 1.0)

    if scene.boxes:
        t_box, box, face, face_normal = _ray_boxes(origin, dirs, scene.boxes)
        closer = t_box < hit
        hit = np.where(closer, t_box, hit)
        surface = np.where(closer, n_walls + 2 + 6 * box + face, surface)
        normal[closer] = face_normal[closer]
    return hit, surface, normal


def _millimetres(depth_m: np.ndarray) -> np.ndarray:
    return (depth_m * 1000.0).astype(np.float32)


def _ray_boxes(origin: np.ndarray, dirs: np.ndarray, boxes: Tuple[Box, ...]
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nearest entry of rays (starting outside every box) into a set of oriented boxes (slab test).

    Returns:
        t: (R,) entry parameter along the rays, inf where every box is missed.
        box: (R,) index of the box entered first.
        face: (R,) entered face of that box, in ``box_polygons`` order (4 sides, top, bottom).
        normal: (R, 3) world normal of that face.
    """
    half = np.array([[b.size[0] / 2, b.size[1] / 2, b.size[2] / 2] for b in boxes])  # (B, 3)
    centre = np.array([[b.center[0], b.center[1], b.size[2] / 2] for b in boxes])
    cos, sin = np.cos([b.yaw for b in boxes])[:, None], np.sin([b.yaw for b in boxes])[:, None]
    rel = origin - centre
    # Ray origin and direction in each box's axes, one (B, R) array per axis.
    o = [cos * rel[:, 0:1] + sin * rel[:, 1:2], -sin * rel[:, 0:1] + cos * rel[:, 1:2], rel[:, 2:3]]
    d = [cos * dirs[:, 0] + sin * dirs[:, 1], -sin * dirs[:, 0] + cos * dirs[:, 1],
         np.broadcast_to(dirs[:, 2], (len(boxes), len(dirs)))]
    near, far = [], []
    # Division by a zero direction component gives the right +-inf slab bounds (IEEE).
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):
            t1, t2 = (-half[:, k:k + 1] - o[k]) / d[k], (half[:, k:k + 1] - o[k]) / d[k]
            near.append(np.minimum(t1, t2))
            far.append(np.maximum(t1, t2))
    entry = np.maximum(np.maximum(near[0], near[1]), near[2])
    exit_ = np.minimum(np.minimum(far[0], far[1]), far[2])
    t_all = np.where((entry <= exit_) & (entry > 1e-9), entry, np.inf)
    box = np.argmin(t_all, axis=0)
    rays = np.arange(len(dirs))
    t = t_all[box, rays]

    axis = np.argmax(np.stack([n[box, rays] for n in near]), axis=0)
    d_axis = np.choose(axis, [dk[box, rays] for dk in d])
    negative_side = d_axis > 0  # entering through the face on the -axis side
    # Footprint corners run (-,-), (+,-), (+,+), (-,+): side faces -y, +x, +y, -x are 0, 1, 2, 3.
    face = np.select([(axis == 0) & negative_side, axis == 0, (axis == 1) & negative_side, axis == 1,
                      negative_side], [3, 1, 0, 2, 5], default=4)
    sign = np.where(negative_side, -1.0, 1.0)
    c, s_ = cos[box, 0], sin[box, 0]
    # The box's x, y, z axes in world coordinates, picked per ray.
    normal = np.where((axis == 0)[:, None], np.c_[c, s_, np.zeros_like(c)],
                      np.where((axis == 1)[:, None], np.c_[-s_, c, np.zeros_like(c)], [0.0, 0.0, 1.0]))
    return t, box, face, sign[:, None] * normal
