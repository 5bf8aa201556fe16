"""The rig's pinhole RGB-D camera: depth ray-cast against the scene's geometry, RGB shaded from it.

The camera sits at the rig centre and looks along the heading (no pitch, no roll). Depth is
z-depth (distance along the optical axis), as stereo and structured-light cameras report it.
Holes are pixels a real depth camera loses: beyond its range, and random dropout blobs. The
complete depth (every pixel's ray cast, no hole) is what the sensor's map would be without them.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy.ndimage import zoom

from .scene import Box, Scene

DROPOUT_FRACTION = (0.03, 0.08)  # share of pixels lost to dropout blobs, drawn per image
DROPOUT_BLOB_PX = 8  # rough blob size in pixels
AMBIENT = 0.25  # light that reaches every surface
LIGHT_FALLOFF_M = 6.0  # the camera-mounted lamp's intensity halves at this distance


class DepthCamera:
    """A pinhole RGB-D camera on the rig.

    Args:
        height, width: image size in pixels.
        hfov_deg: horizontal field of view, degrees (square pixels).
        max_range_m: depth beyond this is a hole (0 in the depth map).
    """

    def __init__(self, height: int, width: int, hfov_deg: float = 90.0, max_range_m: float = 12.0) -> None:
        self.height, self.width, self.max_range_m = height, width, max_range_m
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
        origin = scene.rig.origin
        dirs = self.ray_directions(scene)
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
        depth = t[np.arange(n_rays), wall]
        surface = wall
        wall_normals = np.c_[edge[:, 1], -edge[:, 0], np.zeros(n_walls)]
        normal = wall_normals[wall] / np.linalg.norm(wall_normals[wall], axis=1, keepdims=True)

        with np.errstate(divide="ignore", invalid="ignore"):
            t_plane = np.where(dirs[:, 2] < 0, -origin[2] / dirs[:, 2],
                               np.where(dirs[:, 2] > 0, (scene.height - origin[2]) / dirs[:, 2], np.inf))
        closer = t_plane < depth
        depth = np.where(closer, t_plane, depth)
        surface = np.where(closer, np.where(dirs[:, 2] < 0, n_walls, n_walls + 1), surface)
        normal[closer] = (0.0, 0.0, 1.0)

        if scene.boxes:
            t_box, box, face, face_normal = _ray_boxes(origin, dirs, scene.boxes)
            closer = t_box < depth
            depth = np.where(closer, t_box, depth)
            surface = np.where(closer, n_walls + 2 + 6 * box + face, surface)
            normal[closer] = face_normal[closer]

        shape = (self.height, self.width)
        return depth.reshape(shape), surface.reshape(shape), normal.reshape(shape + (3,))

    def render(self, scene: Scene, rng: np.random.Generator
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Depth map with holes, the complete depth and the RGB image of the same view.

        Args:
            scene: room, obstacles and rig pose.
            rng: draws the dropout blobs.

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

        holes = (depth > self.max_range_m) | self._dropout_mask(rng)
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
