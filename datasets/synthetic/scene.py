"""Rooms, obstacles and rig poses of the simulated world: the one geometry that both the echo
simulator (``acoustics``) and the camera (``camera``) see.

A scene is a floor polygon extruded to a ceiling height (box or non-box plan) with box obstacles
standing on the floor, plus the pose of the robot rig. Its surfaces are numbered once, and that
numbering is shared by pyroomacoustics walls, absorption, colours and the ray caster:

    0 .. N-1          vertical walls; wall i runs from floor corner i to corner i+1
    N, N+1            floor, ceiling
    N+2+6j .. +5      obstacle j: its four sides (footprint edge order), top, bottom

Every surface polygon is ordered so that its normal (right-hand rule, pyroomacoustics' convention)
points away from the air: out of the room for walls, floor and ceiling, into the solid for
obstacle faces. pyroomacoustics only mirrors a source across a wall it lies behind the normal of.

World frame: metres, z up, floor at z = 0; yaw is counter-clockwise from +x.

Room families (one per location folder, cycling through ``FAMILIES``):

    SmallRoom   box rooms 3-6 m, 0-2 furniture boxes, mid absorption
    Corridor    long narrow corridors (8-18 m), half of them turning an L corner, 0-1 box, hard walls
    Hall        large L- or U-shaped halls (8-14 m, 3-5 m high) with 2-5 box obstacles
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

FAMILIES = ("SmallRoom", "Corridor", "Hall")
SURFACE_KINDS = ("wall", "floor", "ceiling", "obstacle")

# Clearances (m) that keep the rig, its ears and the camera in free space.
RIG_CLEARANCE_M = 0.5
OBSTACLE_GAP_M = 0.3
RIG_HEIGHT_RANGE_M = (0.5, 1.0)


@dataclass(frozen=True)
class Box:
    """A box obstacle standing on the floor.

    Attributes:
        center: (x, y) of the footprint centre, metres.
        size: (sx, sy, sz) side lengths along the box's own axes, metres; sz is its height.
        yaw: rotation of the box's x axis from the world +x axis, radians.
    """

    center: Tuple[float, float]
    size: Tuple[float, float, float]
    yaw: float

    def footprint(self) -> np.ndarray:
        """(4, 2) footprint corners in metres, counter-clockwise seen from above."""
        hx, hy = self.size[0] / 2, self.size[1] / 2
        local = np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])
        return local @ rotation_2d(self.yaw).T + np.asarray(self.center)

    def to_local(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) world points → the box frame (origin at the footprint centre, axes along its sides)."""
        return (xy - np.asarray(self.center)) @ rotation_2d(self.yaw)


@dataclass(frozen=True)
class RigPose:
    """Pose of the robot rig: a speaker between two ears and a camera, all at one height.

    Attributes:
        position: (x, y) of the rig centre, metres.
        height: height of speaker, ears and camera above the floor, metres.
        yaw: heading, radians counter-clockwise from +x.
    """

    position: Tuple[float, float]
    height: float
    yaw: float

    @property
    def origin(self) -> np.ndarray:
        """(3,) rig centre in metres: speaker and camera position."""
        return np.array([self.position[0], self.position[1], self.height])

    @property
    def forward(self) -> np.ndarray:
        """(3,) unit heading."""
        return np.array([np.cos(self.yaw), np.sin(self.yaw), 0.0])

    @property
    def left(self) -> np.ndarray:
        """(3,) unit vector to the rig's left."""
        return np.array([-np.sin(self.yaw), np.cos(self.yaw), 0.0])

    def ear_positions(self, spacing_m: float) -> np.ndarray:
        """(2, 3) left and right ear positions in metres, ``spacing_m`` apart across the heading."""
        half = spacing_m / 2 * self.left
        return np.stack([self.origin + half, self.origin - half])


@dataclass(frozen=True)
class Scene:
    """One room with its obstacles and the rig pose inside it.

    Attributes:
        family: room family name (one of ``FAMILIES``).
        floor: (N, 2) floor polygon corners in metres, counter-clockwise.
        height: ceiling height in metres.
        boxes: obstacles.
        absorption: (n_surfaces,) energy absorption coefficient per surface, in [0, 1].
        albedo: (n_surfaces, 3) RGB reflectance per surface, in [0, 1].
        rig: the rig pose.
    """

    family: str
    floor: np.ndarray
    height: float
    boxes: Tuple[Box, ...]
    absorption: np.ndarray
    albedo: np.ndarray
    rig: RigPose

    @property
    def n_walls(self) -> int:
        return len(self.floor)

    @property
    def n_surfaces(self) -> int:
        return self.n_walls + 2 + 6 * len(self.boxes)

    def surface_polygons(self) -> List[np.ndarray]:
        """(3, K) corners of every surface in metres, in surface order, normals away from the air."""
        return room_shell_polygons(self.floor, self.height) + [
            face for box in self.boxes for face in box_polygons(box)]

    def obstructing_surfaces(self) -> List[int]:
        """Surfaces that can block a line of sight: walls off the plan's convex hull and all obstacles.

        This is pyroomacoustics' own rule (walls not on the convex hull), known here by
        construction instead of being searched for in every room.
        """
        n = self.n_walls
        reflex_walls = [i for i in range(n) if not _edge_on_convex_hull(self.floor, i)]
        return reflex_walls + list(range(n + 2, self.n_surfaces))


def rotation_2d(angle: float) -> np.ndarray:
    """(2, 2) counter-clockwise rotation by ``angle`` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def room_shell_polygons(floor: np.ndarray, height: float) -> List[np.ndarray]:
    """Walls, floor and ceiling of an extruded floor plan, as ``pra.Room.from_corners(...).extrude``
    builds them: walls ``[c_i, c_i+1, c_i+1 + h, c_i + h]``, floor clockwise, ceiling counter-clockwise
    seen from above, so every normal points out of the room."""
    n = len(floor)
    ground = np.c_[floor, np.zeros(n)]
    up = np.array([0.0, 0.0, height])
    walls = [np.stack([ground[i], ground[(i + 1) % n], ground[(i + 1) % n] + up, ground[i] + up]).T
             for i in range(n)]
    return walls + [ground[::-1].T.copy(), (ground + up).T.copy()]


def box_polygons(box: Box) -> List[np.ndarray]:
    """The six faces of an obstacle, normals pointing into the box (away from the air).

    All six are needed: pyroomacoustics decides "is the microphone inside the room" by counting wall
    crossings, and an open box flips that parity for some positions.
    """
    foot = box.footprint()
    low = np.c_[foot, np.zeros(4)]
    high = np.c_[foot, np.full(4, box.size[2])]
    # Corners ordered clockwise as seen from outside the box, so the right-hand normal points in.
    sides = [np.stack([low[(i + 1) % 4], low[i], high[i], high[(i + 1) % 4]]).T for i in range(4)]
    return sides + [high[::-1].T.copy(), low.T.copy()]


def _edge_on_convex_hull(polygon: np.ndarray, i: int) -> bool:
    a, b = polygon[i], polygon[(i + 1) % len(polygon)]
    edge, rel = b - a, polygon - a
    cross = edge[0] * rel[:, 1] - edge[1] * rel[:, 0]
    return bool(np.all(cross >= -1e-9))  # counter-clockwise: every corner on the inner (left) side


def point_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(P,) bool: which of the (P, 2) points lie strictly inside the (N, 2) polygon (even-odd rule)."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    x, y = points[:, 0:1], points[:, 1:2]
    straddles = (a[:, 1] > y) != (b[:, 1] > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = a[:, 0] + (y - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1])
    return np.count_nonzero(straddles & (x < x_cross), axis=1) % 2 == 1


def distance_to_segments(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(P,) distance in metres from each of the (P, 2) points to the closed polygon's outline."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    ab = b - a
    rel = points[:, None, :] - a[None]
    t = np.clip(np.einsum("pnk,nk->pn", rel, ab) / np.einsum("nk,nk->n", ab, ab), 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(points[:, None, :] - closest, axis=-1).min(axis=1)


def free_space_mask(points: np.ndarray, floor: np.ndarray, boxes: Tuple[Box, ...],
                    clearance: float) -> np.ndarray:
    """(P,) bool: points inside the plan and at least ``clearance`` metres from walls and obstacles."""
    ok = point_in_polygon(points, floor) & (distance_to_segments(points, floor) >= clearance)
    for box in boxes:
        local = box.to_local(points)
        outside = np.maximum(np.abs(local) - np.asarray(box.size[:2]) / 2, 0.0)
        ok &= np.linalg.norm(outside, axis=1) >= clearance
    return ok


# --- room families ---------------------------------------------------------------------------

@dataclass(frozen=True)
class FamilySpec:
    """Random ranges of one room family (metres; absorption as energy coefficients)."""

    height: Tuple[float, float]
    n_boxes: Tuple[int, int]
    box_side: Tuple[float, float]
    box_height: Tuple[float, float]
    absorption: Dict[str, Tuple[float, float]]


FAMILY_SPECS: Dict[str, FamilySpec] = {
    "SmallRoom": FamilySpec(height=(2.4, 3.0), n_boxes=(0, 2), box_side=(0.4, 1.2), box_height=(0.4, 1.4),
                            absorption={"wall": (0.05, 0.35), "floor": (0.05, 0.4),
                                        "ceiling": (0.1, 0.5), "obstacle": (0.1, 0.5)}),
    "Corridor": FamilySpec(height=(2.5, 3.5), n_boxes=(0, 1), box_side=(0.3, 0.6), box_height=(0.5, 1.2),
                           absorption={"wall": (0.02, 0.15), "floor": (0.02, 0.15),
                                       "ceiling": (0.05, 0.4), "obstacle": (0.05, 0.3)}),
    "Hall": FamilySpec(height=(3.0, 5.0), n_boxes=(2, 5), box_side=(0.5, 2.0), box_height=(0.8, 2.8),
                       absorption={"wall": (0.03, 0.25), "floor": (0.03, 0.2),
                                   "ceiling": (0.1, 0.6), "obstacle": (0.05, 0.4)}),
}


@dataclass(frozen=True)
class LocationStyle:
    """What stays fixed within one location folder: its family, palette and typical absorption.

    Attributes:
        family: room family name.
        colors: base RGB reflectance in [0, 1] per surface kind.
        absorption: typical energy absorption per surface kind.
    """

    family: str
    colors: Dict[str, Tuple[float, float, float]]
    absorption: Dict[str, float]


def location_name(index: int) -> str:
    """Folder name of location ``index``: its family and number, e.g. ``Corridor_01``."""
    return f"{FAMILIES[index % len(FAMILIES)]}_{index:02d}"


def sample_location_style(index: int, rng: np.random.Generator) -> LocationStyle:
    """Draw the palette and typical absorption of location ``index`` (family = ``location_name``)."""
    family = FAMILIES[index % len(FAMILIES)]
    spec = FAMILY_SPECS[family]
    colors = {kind: tuple(float(c) for c in rng.uniform(0.15, 0.9, 3)) for kind in SURFACE_KINDS}
    absorption = {kind: float(rng.uniform(*spec.absorption[kind])) for kind in SURFACE_KINDS}
    return LocationStyle(family=family, colors=colors, absorption=absorption)


def sample_scene(style: LocationStyle, rng: np.random.Generator) -> Scene:
    """Draw one room of the location's family, its obstacles, materials and a free rig pose.

    Args:
        style: the location's family and palette.
        rng: the sample's generator; the scene is a pure function of its state.

    Returns:
        A scene whose rig stands ``RIG_CLEARANCE_M`` or more from every wall and obstacle.
    """
    spec = FAMILY_SPECS[style.family]
    while True:
        floor = _sample_floor(style.family, rng)
        height = float(rng.uniform(*spec.height))
        boxes = _sample_boxes(spec, floor, height, rng)
        rig_xy = _sample_free_point(floor, boxes, RIG_CLEARANCE_M, rng)
        if rig_xy is not None:
            break
    rig = RigPose(position=(float(rig_xy[0]), float(rig_xy[1])),
                  height=float(rng.uniform(*RIG_HEIGHT_RANGE_M)), yaw=float(rng.uniform(0, 2 * np.pi)))
    kinds = ["wall"] * len(floor) + ["floor", "ceiling"] + ["obstacle"] * (6 * len(boxes))  # surface order
    # Each obstacle gets one material and colour for all its faces; other surfaces vary individually.
    owner = list(range(len(floor) + 2)) + [len(floor) + 2 + j for j in range(len(boxes)) for _ in range(6)]
    n_owners = len(floor) + 2 + len(boxes)
    jitter_a = rng.uniform(-0.05, 0.05, n_owners)[owner]
    jitter_c = rng.normal(0.0, 0.06, (n_owners, 3))[owner]
    absorption = np.clip([style.absorption[k] for k in kinds] + jitter_a, 0.01, 0.95)
    albedo = np.clip(np.array([style.colors[k] for k in kinds]) + jitter_c, 0.02, 1.0)
    return Scene(family=style.family, floor=floor, height=height, boxes=boxes,
                 absorption=absorption, albedo=albedo, rig=rig)


def _sample_floor(family: str, rng: np.random.Generator) -> np.ndarray:
    """(N, 2) counter-clockwise floor plan of the family, lower-left corner at the origin."""
    if family == "SmallRoom":
        w, l = rng.uniform(3.0, 6.0, 2)
        return np.array([[0, 0], [w, 0], [w, l], [0, l]], dtype=float)
    if family == "Corridor":
        width, length = rng.uniform(1.6, 3.0), rng.uniform(8.0, 18.0)
        if rng.random() < 0.5:
            return np.array([[0, 0], [length, 0], [length, width], [0, width]], dtype=float)
        arm = rng.uniform(4.0, 10.0)  # an L turn: a second arm going up from the far end
        return np.array([[0, 0], [length, 0], [length, arm], [length - width, arm],
                         [length - width, width], [0, width]], dtype=float)
    w, l = rng.uniform(8.0, 14.0, 2)
    notch_w, notch_l = rng.uniform(0.25, 0.5) * w, rng.uniform(0.25, 0.5) * l
    if rng.random() < 0.5:  # L: a corner cut away
        return np.array([[0, 0], [w, 0], [w, l - notch_l], [w - notch_w, l - notch_l],
                         [w - notch_w, l], [0, l]], dtype=float)
    x0 = rng.uniform(0.2 * w, 0.8 * w - notch_w)  # U: a notch cut into the far side
    return np.array([[0, 0], [w, 0], [w, l], [x0 + notch_w, l], [x0 + notch_w, l - notch_l],
                     [x0, l - notch_l], [x0, l], [0, l]], dtype=float)


def _sample_boxes(spec: FamilySpec, floor: np.ndarray, height: float,
                  rng: np.random.Generator) -> Tuple[Box, ...]:
    boxes: List[Box] = []
    lo, hi = floor.min(axis=0), floor.max(axis=0)
    for _ in range(int(rng.integers(spec.n_boxes[0], spec.n_boxes[1] + 1))):
        for _attempt in range(20):
            size = (*rng.uniform(*spec.box_side, 2), min(rng.uniform(*spec.box_height), height - 0.3))
            box = Box(center=tuple(rng.uniform(lo, hi)), size=tuple(float(s) for s in size),
                      yaw=float(rng.uniform(0, np.pi)))
            if _box_fits(box, floor, boxes):
                boxes.append(box)
                break
    return tuple(boxes)


def _box_fits(box: Box, floor: np.ndarray, others: List[Box]) -> bool:
    """Inside the plan, off the walls, no plan corner under it, and apart from the other boxes."""
    foot = box.footprint()
    if not point_in_polygon(foot, floor).all() or distance_to_segments(foot, floor).min() < 0.05:
        return False
    local = box.to_local(floor)
    if np.any(np.all(np.abs(local) <= np.asarray(box.size[:2]) / 2, axis=1)):
        return False
    radius = np.hypot(*box.size[:2]) / 2
    return all(np.hypot(*(np.subtract(box.center, o.center))) >= radius + np.hypot(*o.size[:2]) / 2
               + OBSTACLE_GAP_M for o in others)


def _sample_free_point(floor: np.ndarray, boxes: Tuple[Box, ...], clearance: float,
                       rng: np.random.Generator, tries: int = 8, batch: int = 64) -> "np.ndarray | None":
    lo, hi = floor.min(axis=0), floor.max(axis=0)
    for _ in range(tries):
        candidates = rng.uniform(lo, hi, (batch, 2))
        ok = np.flatnonzero(free_space_mask(candidates, floor, boxes, clearance))
        if ok.size:
            return candidates[ok[0]]
    return None
