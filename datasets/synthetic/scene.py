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

Room families (one per location folder, cycling through ``ROOM_SETS[rooms]``). The classic set,
``FAMILIES``, is the default world's:

    SmallRoom   box rooms 3-6 m, 0-2 furniture boxes, mid absorption
    Corridor    long narrow corridors (8-18 m), half of them turning an L corner, 0-1 box, hard walls
    Hall        large L- or U-shaped halls (8-14 m, 3-5 m high) with 2-5 box obstacles

The realistic set, ``REALISTIC_FAMILIES`` (the default, ``rooms="realistic"``), adds furnished rooms
next to those three:

    Office            4-8 m rooms: shelves and cabinets against the walls, desks with a chair each
    Classroom         7-10 m rooms: a teacher's desk and rows of tables with aisles between them
    StairwellLanding  2.6-4 m, 3-4.5 m high, hard surfaces: a stair flight (one block), a cabinet
    ClutteredLab      5-9 m rooms: benches along the walls and crates of varied size, height and yaw

and in every realistic room each surface draws its material class (``MATERIALS``: plaster,
concrete, glass, carpet, wood, ...), whose ranges give its absorption, albedo and the two
properties the depth camera's sensor holes read: how specular it is and how much texture it
shows. The rig stands where a robot would: most often 0.5-2 m from a wall or a piece of
furniture, often facing it (the real BatVision V2 recording's median depth is about 1 m).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

FAMILIES = ("SmallRoom", "Corridor", "Hall")
# The furnished families come first so that a world of a few locations holds some of each kind.
REALISTIC_FAMILIES = ("Office", "Corridor", "Classroom", "ClutteredLab", "StairwellLanding",
                      "SmallRoom", "Hall")
ROOM_SETS: Dict[str, Tuple[str, ...]] = {"classic": FAMILIES, "realistic": REALISTIC_FAMILIES}
SURFACE_KINDS = ("wall", "floor", "ceiling", "obstacle")
# Classic scenes carry no material: the camera takes their surfaces as half textured.
UNSPECIFIED_TEXTURE = 0.5

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
        family: room family name (one of ``ROOM_SETS``' families).
        floor: (N, 2) floor polygon corners in metres, counter-clockwise.
        height: ceiling height in metres.
        boxes: obstacles.
        absorption: (n_surfaces,) energy absorption coefficient per surface, in [0, 1].
        albedo: (n_surfaces, 3) RGB reflectance per surface, in [0, 1].
        rig: the rig pose.
        specular: (n_surfaces,) share of each surface's pixels a depth camera loses to specular
            reflection (glass, polished metal), in [0, 1]; None: no material drawn (classic rooms).
        texture: (n_surfaces,) visible texture of each surface, 0 (plain paint) .. 1, which stereo
            matching needs; None: no material drawn (classic rooms).
    """

    family: str
    floor: np.ndarray
    height: float
    boxes: Tuple[Box, ...]
    absorption: np.ndarray
    albedo: np.ndarray
    rig: RigPose
    specular: Optional[np.ndarray] = None
    texture: Optional[np.ndarray] = None

    @property
    def n_walls(self) -> int:
        return len(self.floor)

    @property
    def n_surfaces(self) -> int:
        return self.n_walls + 2 + 6 * len(self.boxes)

    def surface_specular(self) -> np.ndarray:
        """(n_surfaces,) ``specular``, or zeros for a scene without materials."""
        return np.zeros(self.n_surfaces) if self.specular is None else self.specular

    def surface_texture(self) -> np.ndarray:
        """(n_surfaces,) ``texture``, or ``UNSPECIFIED_TEXTURE`` for a scene without materials."""
        return np.full(self.n_surfaces, UNSPECIFIED_TEXTURE) if self.texture is None else self.texture

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


def closest_on_segments(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(P, N, 2) closest point to each of the (P, 2) points on each edge of the (N, 2) closed polygon."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    ab = b - a
    rel = points[:, None, :] - a[None]
    t = np.clip(np.einsum("pnk,nk->pn", rel, ab) / np.einsum("nk,nk->n", ab, ab), 0.0, 1.0)
    return a[None] + t[..., None] * ab[None]


def distance_to_segments(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(P,) distance in metres from each of the (P, 2) points to the closed polygon's outline."""
    closest = closest_on_segments(points, polygon)
    return np.linalg.norm(points[:, None, :] - closest, axis=-1).min(axis=1)


def clearance_m(points: np.ndarray, floor: np.ndarray, boxes: Tuple[Box, ...]) -> np.ndarray:
    """(P,) distance in metres from each of the (P, 2) points to the nearest wall or obstacle
    footprint (0 inside a footprint); -inf outside the plan."""
    clear = np.where(point_in_polygon(points, floor), distance_to_segments(points, floor), -np.inf)
    for box in boxes:
        local = box.to_local(points)
        outside = np.maximum(np.abs(local) - np.asarray(box.size[:2]) / 2, 0.0)
        clear = np.minimum(clear, np.linalg.norm(outside, axis=1))
    return clear


def free_space_mask(points: np.ndarray, floor: np.ndarray, boxes: Tuple[Box, ...],
                    clearance: float) -> np.ndarray:
    """(P,) bool: points inside the plan and at least ``clearance`` metres from walls and obstacles."""
    return clearance_m(points, floor, boxes) >= clearance


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
    """What stays fixed within one location folder: its family, palette and typical materials.

    Attributes:
        family: room family name.
        colors: per surface kind, RGB in [0, 1]: the base reflectance (classic rooms), or a muted
            tint that multiplies the material's grey level (realistic rooms).
        absorption: typical energy absorption per surface kind (classic rooms; realistic rooms
            draw it per surface from its material, and leave this empty).
        rooms: the room set (a ``ROOM_SETS`` key) that decides how scenes are drawn.
        materials: realistic rooms: the location's main material class per surface kind
            (wall, floor, ceiling); empty for classic rooms.
    """

    family: str
    colors: Dict[str, Tuple[float, float, float]]
    absorption: Dict[str, float]
    rooms: str = "classic"
    materials: Dict[str, str] = field(default_factory=dict)


def location_name(index: int, rooms: str = "classic") -> str:
    """Folder name of location ``index``: its family and number, e.g. ``Corridor_01``.

    Args:
        index: location number.
        rooms: the room set (a ``ROOM_SETS`` key) whose families the locations cycle through.
    """
    families = ROOM_SETS[rooms]
    return f"{families[index % len(families)]}_{index:02d}"


def sample_location_style(index: int, rng: np.random.Generator, rooms: str = "classic") -> LocationStyle:
    """Draw the palette and typical materials of location ``index`` (family = ``location_name``).

    Args:
        index: location number.
        rng: the location's style generator.
        rooms: the room set (a ``ROOM_SETS`` key).
    """
    families = ROOM_SETS[rooms]
    family = families[index % len(families)]
    if rooms == "realistic":
        spec = REALISTIC_SPECS[family]
        # Real interiors are mostly near-grey: a tint of 0.7-1 per channel, not a saturated paint.
        tints = {kind: tuple(float(c) for c in rng.uniform(0.7, 1.0, 3)) for kind in SURFACE_KINDS}
        materials = {kind: spec.materials[kind][int(rng.integers(len(spec.materials[kind])))]
                     for kind in SHELL_KINDS}
        return LocationStyle(family=family, colors=tints, absorption={}, rooms=rooms,
                             materials=materials)
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
    if style.rooms == "realistic":
        return _sample_realistic_scene(style, rng)
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


def _circles_apart(a: Box, b: Box) -> bool:
    """Whether the footprints' circumscribed circles are ``OBSTACLE_GAP_M`` or more apart (a cheap,
    conservative test: enough for a few scattered boxes)."""
    return bool(np.hypot(*(np.subtract(a.center, b.center)))
                >= np.hypot(*a.size[:2]) / 2 + np.hypot(*b.size[:2]) / 2 + OBSTACLE_GAP_M)


def _footprints_apart(a: Box, b: Box) -> bool:
    """Whether a side direction of either footprint separates them by ``OBSTACLE_GAP_M`` or more
    (separating axes: exact enough to put a chair at a desk or tables in rows)."""
    foot_a, foot_b = a.footprint(), b.footprint()
    for foot in (foot_a, foot_b):
        for edge in (foot[1] - foot[0], foot[2] - foot[1]):
            axis = np.array([-edge[1], edge[0]]) / np.hypot(*edge)
            pa, pb = foot_a @ axis, foot_b @ axis
            if pa.min() - pb.max() >= OBSTACLE_GAP_M or pb.min() - pa.max() >= OBSTACLE_GAP_M:
                return True
    return False


def _box_fits(box: Box, floor: np.ndarray, others: List[Box],
              apart: Callable[[Box, Box], bool] = _circles_apart) -> bool:
    """Inside the plan, off the walls, no plan corner under it, and ``apart`` from the other boxes."""
    foot = box.footprint()
    if not point_in_polygon(foot, floor).all() or distance_to_segments(foot, floor).min() < 0.05:
        return False
    local = box.to_local(floor)
    if np.any(np.all(np.abs(local) <= np.asarray(box.size[:2]) / 2, axis=1)):
        return False
    return all(apart(box, o) for o in others)


def _sample_free_point(floor: np.ndarray, boxes: Tuple[Box, ...], clearance: float,
                       rng: np.random.Generator, tries: int = 8, batch: int = 64) -> "np.ndarray | None":
    lo, hi = floor.min(axis=0), floor.max(axis=0)
    for _ in range(tries):
        candidates = rng.uniform(lo, hi, (batch, 2))
        ok = np.flatnonzero(free_space_mask(candidates, floor, boxes, clearance))
        if ok.size:
            return candidates[ok[0]]
    return None


# --- realistic rooms (rooms="realistic") -------------------------------------------------------

SHELL_KINDS = ("wall", "floor", "ceiling")
# A surface takes its location's main material this often, else any of its family's options or
# accents (a carpeted office beside a wooden one, a glass partition among plaster walls).
MAIN_MATERIAL_SHARE = 0.7
# A robot explores by driving along walls and furniture: most of its poses stand within
# NEAR_SURFACE_M of one, and often face the nearest one (jittered), as when it turns away from it.
NEAR_SURFACE_M = 2.0
NEAR_SHARE = 0.8
FACING_SHARE = 0.6
FACING_JITTER_RAD = float(np.radians(35.0))
PLACEMENT_TRIES = 20
# Furniture against a wall stands this far off it: a face on a wall's plane would confuse
# pyroomacoustics' inside test and image sources.
WALL_GAP_M = (0.08, 0.15)


@dataclass(frozen=True)
class Material:
    """A material class: the ranges its surfaces draw their properties from.

    Attributes:
        absorption: energy absorption coefficient range (one broadband value, as the acoustics
            use one band).
        albedo: grey-level reflectance range (the location's tint colours it).
        specular: range of the share of its pixels a depth camera loses: glass is seen through or
            mirrors, polished metal and glossy floors mirror the projector or the other view.
        texture: visible texture, 0 (plain paint) .. 1 (wood grain, carpet), which stereo needs.
    """

    absorption: Tuple[float, float]
    albedo: Tuple[float, float]
    specular: Tuple[float, float]
    texture: float


MATERIALS: Dict[str, Material] = {
    "plaster": Material(absorption=(0.02, 0.08), albedo=(0.6, 0.9), specular=(0.0, 0.0), texture=0.1),
    "concrete": Material(absorption=(0.01, 0.04), albedo=(0.3, 0.55), specular=(0.0, 0.0), texture=0.6),
    "glass": Material(absorption=(0.03, 0.1), albedo=(0.1, 0.3), specular=(0.7, 0.95), texture=0.1),
    "carpet": Material(absorption=(0.2, 0.5), albedo=(0.1, 0.4), specular=(0.0, 0.0), texture=0.7),
    "wood": Material(absorption=(0.05, 0.15), albedo=(0.25, 0.55), specular=(0.0, 0.1), texture=0.8),
    "fabric": Material(absorption=(0.3, 0.6), albedo=(0.08, 0.5), specular=(0.0, 0.0), texture=0.5),
    "metal": Material(absorption=(0.01, 0.05), albedo=(0.4, 0.7), specular=(0.2, 0.6), texture=0.2),
    "linoleum": Material(absorption=(0.02, 0.06), albedo=(0.3, 0.6), specular=(0.05, 0.25), texture=0.3),
    "ceiling_tile": Material(absorption=(0.5, 0.8), albedo=(0.7, 0.9), specular=(0.0, 0.0), texture=0.3),
}


@dataclass(frozen=True)
class RealisticSpec:
    """How a family's rooms are drawn with ``rooms="realistic"``.

    Attributes:
        materials: material classes (``MATERIALS`` keys) a wall, the floor and the ceiling draw from;
            a location's main material of each kind is one of them.
        accents: material classes a surface of a kind may take but never the location's main one
            (windows and glass partitions: a room is not walled in glass).
        plan: (width, length) ranges of a rectangular plan in metres; None: the classic family's plan.
        height: ceiling height range in metres; None: the classic family's.
    """

    materials: Dict[str, Tuple[str, ...]]
    accents: Dict[str, Tuple[str, ...]] = field(default_factory=lambda: {"wall": ("glass",)})
    plan: Optional[Tuple[Tuple[float, float], Tuple[float, float]]] = None
    height: Optional[Tuple[float, float]] = None


REALISTIC_SPECS: Dict[str, RealisticSpec] = {
    "Office": RealisticSpec(
        materials={"wall": ("plaster",), "floor": ("carpet", "linoleum", "wood"),
                   "ceiling": ("ceiling_tile", "plaster")},
        plan=((4.0, 8.0), (3.5, 6.5)), height=(2.6, 3.0)),
    "Classroom": RealisticSpec(
        materials={"wall": ("plaster", "concrete"), "floor": ("linoleum", "wood"),
                   "ceiling": ("ceiling_tile", "plaster")},
        plan=((7.0, 10.0), (6.0, 9.0)), height=(2.8, 3.4)),
    "StairwellLanding": RealisticSpec(
        materials={"wall": ("concrete", "plaster"), "floor": ("concrete", "linoleum"),
                   "ceiling": ("concrete", "plaster")},
        plan=((2.6, 4.0), (2.6, 4.0)), height=(3.0, 4.5)),
    "ClutteredLab": RealisticSpec(
        materials={"wall": ("plaster", "concrete"), "floor": ("linoleum", "concrete"),
                   "ceiling": ("ceiling_tile", "plaster", "concrete")},
        plan=((5.0, 9.0), (4.0, 7.0)), height=(2.7, 3.3)),
    "SmallRoom": RealisticSpec(
        materials={"wall": ("plaster",), "floor": ("carpet", "wood", "linoleum"),
                   "ceiling": ("plaster", "ceiling_tile")}),
    "Corridor": RealisticSpec(
        materials={"wall": ("plaster", "concrete"), "floor": ("linoleum", "concrete"),
                   "ceiling": ("ceiling_tile", "plaster")}),
    "Hall": RealisticSpec(
        materials={"wall": ("concrete", "plaster"), "floor": ("concrete", "linoleum", "wood"),
                   "ceiling": ("concrete", "ceiling_tile")}),
}


@dataclass(frozen=True)
class FurnitureKind:
    """Size ranges (metres) and material classes of one kind of furniture, a box standing on the floor.

    Attributes:
        width: along its front (the box's x side).
        depth: front to back (the box's y side; its front faces the box's +y).
        height: its height.
        materials: ``MATERIALS`` keys it is made of.
    """

    width: Tuple[float, float]
    depth: Tuple[float, float]
    height: Tuple[float, float]
    materials: Tuple[str, ...]


FURNITURE: Dict[str, FurnitureKind] = {
    "desk": FurnitureKind((1.2, 1.8), (0.6, 0.8), (0.72, 0.76), ("wood", "metal")),
    "chair": FurnitureKind((0.45, 0.6), (0.45, 0.6), (0.8, 1.1), ("fabric", "wood")),
    "shelf": FurnitureKind((0.8, 2.0), (0.3, 0.45), (1.2, 2.2), ("wood", "metal")),
    "cabinet": FurnitureKind((0.4, 1.0), (0.4, 0.6), (0.7, 1.4), ("metal", "wood")),
    "table": FurnitureKind((1.2, 1.5), (0.5, 0.7), (0.72, 0.78), ("wood",)),
    "bench": FurnitureKind((1.5, 3.0), (0.6, 0.8), (0.85, 0.95), ("wood", "metal")),
    "stairs": FurnitureKind((2.0, 3.0), (1.0, 1.3), (1.2, 1.8), ("concrete",)),  # a flight, one block
    "crate": FurnitureKind((0.3, 1.2), (0.3, 1.2), (0.3, 2.0), ("wood", "metal", "fabric")),
}
# The classic families' scattered boxes, when furnished with materials.
BLOCK_MATERIALS = ("wood", "metal", "fabric", "concrete")


@dataclass(frozen=True)
class Piece:
    """A placed obstacle and the material classes it may be made of."""

    box: Box
    materials: Tuple[str, ...]


def _sample_realistic_scene(style: LocationStyle, rng: np.random.Generator) -> Scene:
    """A furnished room of the style's family, every surface of a drawn material, a robot's pose.

    Args:
        style: a realistic location style.
        rng: the sample's generator.
    """
    spec = REALISTIC_SPECS[style.family]
    while True:
        if spec.plan is None:
            floor = _sample_floor(style.family, rng)
            height = float(rng.uniform(*FAMILY_SPECS[style.family].height))
        else:
            w, l = rng.uniform(*spec.plan[0]), rng.uniform(*spec.plan[1])
            floor = np.array([[0, 0], [w, 0], [w, l], [0, l]], dtype=float)
            height = float(rng.uniform(*spec.height))
        pieces = _furnish(style.family, floor, height, rng)
        boxes = tuple(p.box for p in pieces)
        rig = _sample_robot_pose(floor, boxes, rng)
        if rig is not None:
            break
    # One material per owner: each wall, the floor, the ceiling and each piece (all its faces).
    owners = ([(kind, spec.materials[kind] + spec.accents.get(kind, ()))
               for kind in ["wall"] * len(floor) + ["floor", "ceiling"]]
              + [("obstacle", p.materials) for p in pieces])
    absorption, albedo, specular, texture = [], [], [], []
    for kind, options in owners:
        main = style.materials.get(kind)
        name = (main if main is not None and rng.random() < MAIN_MATERIAL_SHARE
                else options[int(rng.integers(len(options)))])
        material = MATERIALS[name]
        faces = 6 if kind == "obstacle" else 1
        absorption += [rng.uniform(*material.absorption)] * faces
        albedo += [rng.uniform(*material.albedo) * np.asarray(style.colors[kind])] * faces
        specular += [rng.uniform(*material.specular)] * faces
        texture += [material.texture] * faces
    return Scene(family=style.family, floor=floor, height=height, boxes=boxes,
                 absorption=np.array(absorption), albedo=np.array(albedo), rig=rig,
                 specular=np.array(specular), texture=np.array(texture))


def _furnish(family: str, floor: np.ndarray, height: float, rng: np.random.Generator) -> List[Piece]:
    """The obstacles of a realistic room: the family's furniture, or (classic families) its
    scattered boxes, each made of one of ``BLOCK_MATERIALS``."""
    furnish = FURNISHERS.get(family)
    if furnish is not None:
        return furnish(floor, height, rng)
    return [Piece(box, BLOCK_MATERIALS)
            for box in _sample_boxes(FAMILY_SPECS[family], floor, height, rng)]


def _place(pieces: List[Piece], kind: str, floor: np.ndarray, height: float,
           rng: np.random.Generator, position: Callable[[Tuple[float, float, float]], Optional[Box]]
           ) -> Optional[Box]:
    """Draw a piece of furniture up to ``PLACEMENT_TRIES`` times; keep the first that fits.

    Args:
        pieces: the room's pieces so far; the new one is appended.
        kind: a ``FURNITURE`` key.
        floor: the plan.
        height: the ceiling height (a piece stays 0.3 m below it).
        rng: draws sizes (and, through ``position``, places).
        position: the box of a piece of the given (width, depth, height), or None where it cannot go.

    Returns:
        The placed box, or None when no try fitted.
    """
    spec = FURNITURE[kind]
    for _ in range(PLACEMENT_TRIES):
        size = (float(rng.uniform(*spec.width)), float(rng.uniform(*spec.depth)),
                float(min(rng.uniform(*spec.height), height - 0.3)))
        box = position(size)
        if box is not None and _keep(pieces, box, spec.materials, floor):
            return box
    return None


def _keep(pieces: List[Piece], box: Box, materials: Tuple[str, ...], floor: np.ndarray) -> bool:
    """Append ``box`` to ``pieces`` if it fits the plan and stands apart from them."""
    if not _box_fits(box, floor, [p.box for p in pieces], apart=_footprints_apart):
        return False
    pieces.append(Piece(box, materials))
    return True


def _against_wall(size: Tuple[float, float, float], floor: np.ndarray,
                  rng: np.random.Generator) -> Optional[Box]:
    """A box with its back to a random wall, ``WALL_GAP_M`` off it, front facing the room
    (None when the wall is too short for it)."""
    i = int(rng.integers(len(floor)))
    edge = floor[(i + 1) % len(floor)] - floor[i]
    length = float(np.hypot(*edge))
    if length < size[0] + 0.2:
        return None
    along = edge / length
    inward = np.array([-along[1], along[0]])  # left of a counter-clockwise plan's edge
    offset = rng.uniform(*WALL_GAP_M) + size[1] / 2
    position = rng.uniform(size[0] / 2 + 0.1, length - size[0] / 2 - 0.1)
    centre = floor[i] + along * position + inward * offset
    return Box(center=(float(centre[0]), float(centre[1])), size=size,
               yaw=float(np.arctan2(along[1], along[0])))


def _free_standing(size: Tuple[float, float, float], floor: np.ndarray, rng: np.random.Generator,
                   aligned: bool) -> Box:
    """A box anywhere in the plan's bounds, square to the walls (``aligned``) or at any yaw."""
    centre = rng.uniform(floor.min(axis=0), floor.max(axis=0))
    yaw = np.pi / 2 * int(rng.integers(4)) if aligned else rng.uniform(0, np.pi)
    return Box(center=(float(centre[0]), float(centre[1])), size=size, yaw=float(yaw))


def _in_front_of(box: Box, size: Tuple[float, float, float], gap: float) -> Box:
    """A box of ``size`` facing ``box``'s front, ``gap`` metres from it (a chair at a desk)."""
    ahead = box.size[1] / 2 + gap + size[1] / 2
    centre = np.asarray(box.center) + rotation_2d(box.yaw) @ np.array([0.0, ahead])
    return Box(center=(float(centre[0]), float(centre[1])), size=size, yaw=box.yaw + np.pi)


def _furnish_office(floor: np.ndarray, height: float, rng: np.random.Generator) -> List[Piece]:
    """1-3 shelves or cabinets against the walls; 1-3 desks (most against a wall), most with a chair."""
    pieces: List[Piece] = []
    for _ in range(int(rng.integers(1, 4))):
        kind = "shelf" if rng.random() < 0.5 else "cabinet"
        _place(pieces, kind, floor, height, rng, lambda size: _against_wall(size, floor, rng))
    for _ in range(int(rng.integers(1, 4))):
        by_wall = rng.random() < 0.6
        desk = _place(pieces, "desk", floor, height, rng,
                      lambda size: _against_wall(size, floor, rng) if by_wall
                      else _free_standing(size, floor, rng, aligned=True))
        if desk is not None and rng.random() < 0.8:
            _place(pieces, "chair", floor, height, rng,
                   lambda size: _in_front_of(desk, size, float(rng.uniform(0.3, 0.6))))
    return pieces


def _furnish_classroom(floor: np.ndarray, height: float, rng: np.random.Generator) -> List[Piece]:
    """A teacher's desk at the front (the y = 0 wall), 2-3 rows of 2-3 tables facing it with aisles
    a robot fits through, a few missing, and 0-2 cabinets against the walls."""
    pieces: List[Piece] = []
    width, length = floor.max(axis=0)
    _place(pieces, "desk", floor, height, rng, lambda size: Box(
        center=(float(rng.uniform(0.3, 0.7) * width), float(rng.uniform(0.7, 1.0))), size=size, yaw=0.0))
    spec = FURNITURE["table"]
    size = (float(rng.uniform(*spec.width)), float(rng.uniform(*spec.depth)),
            float(rng.uniform(*spec.height)))
    rows, columns = int(rng.integers(2, 4)), int(rng.integers(2, 4))
    aisle, side_gap = rng.uniform(1.1, 1.5), rng.uniform(0.4, 0.8)  # aisle: > 2 x RIG_CLEARANCE_M
    pitch_x, pitch_y = size[0] + side_gap, size[1] + aisle
    x0 = (width - columns * pitch_x + side_gap + size[0]) / 2
    y0 = rng.uniform(2.0, 2.6)
    for row in range(rows):
        for column in range(columns):
            if rng.random() < 0.9:
                _keep(pieces, Box(center=(float(x0 + column * pitch_x), float(y0 + row * pitch_y)),
                                  size=size, yaw=0.0), spec.materials, floor)
    for _ in range(int(rng.integers(0, 3))):
        _place(pieces, "cabinet", floor, height, rng, lambda size: _against_wall(size, floor, rng))
    return pieces


def _furnish_stairwell(floor: np.ndarray, height: float, rng: np.random.Generator) -> List[Piece]:
    """A stair flight (one block) along a wall and, half the time, a cabinet."""
    pieces: List[Piece] = []
    _place(pieces, "stairs", floor, height, rng, lambda size: _against_wall(size, floor, rng))
    if rng.random() < 0.5:
        _place(pieces, "cabinet", floor, height, rng, lambda size: _against_wall(size, floor, rng))
    return pieces


def _furnish_lab(floor: np.ndarray, height: float, rng: np.random.Generator) -> List[Piece]:
    """1-3 benches along the walls and 4-8 crates of varied size and height at any yaw."""
    pieces: List[Piece] = []
    for _ in range(int(rng.integers(1, 4))):
        _place(pieces, "bench", floor, height, rng, lambda size: _against_wall(size, floor, rng))
    for _ in range(int(rng.integers(4, 9))):
        _place(pieces, "crate", floor, height, rng,
               lambda size: _free_standing(size, floor, rng, aligned=False))
    return pieces


FURNISHERS: Dict[str, Callable[[np.ndarray, float, np.random.Generator], List[Piece]]] = {
    "Office": _furnish_office, "Classroom": _furnish_classroom,
    "StairwellLanding": _furnish_stairwell, "ClutteredLab": _furnish_lab,
}


def _sample_robot_pose(floor: np.ndarray, boxes: Tuple[Box, ...], rng: np.random.Generator,
                       tries: int = 8, batch: int = 64) -> Optional[RigPose]:
    """A pose ``RIG_CLEARANCE_M`` or more from walls and obstacles, where a robot would be.

    With probability ``NEAR_SHARE`` the pose stands within ``NEAR_SURFACE_M`` of a wall or piece;
    with probability ``FACING_SHARE`` it faces the nearest one (jittered), else any heading.

    Returns:
        The pose, or None when no free point was found (the caller draws a new room).
    """
    lo, hi = floor.min(axis=0), floor.max(axis=0)
    near = rng.random() < NEAR_SHARE
    for _ in range(tries):
        candidates = rng.uniform(lo, hi, (batch, 2))
        clear = clearance_m(candidates, floor, boxes)
        ok = np.flatnonzero((clear >= RIG_CLEARANCE_M) & ((clear <= NEAR_SURFACE_M) | (not near)))
        if ok.size:
            point = candidates[ok[0]]
            break
    else:
        return None
    rig_height = float(rng.uniform(*RIG_HEIGHT_RANGE_M))
    if rng.random() < FACING_SHARE:
        target = _nearest_surface_point(point, floor, boxes)
        yaw = np.arctan2(*(target - point)[::-1]) + rng.normal(0.0, FACING_JITTER_RAD)
    else:
        yaw = rng.uniform(0, 2 * np.pi)
    return RigPose(position=(float(point[0]), float(point[1])), height=rig_height,
                   yaw=float(np.mod(yaw, 2 * np.pi)))


def _nearest_surface_point(point: np.ndarray, floor: np.ndarray, boxes: Tuple[Box, ...]) -> np.ndarray:
    """(2,) the point of the walls' or the obstacles' outlines nearest to the (2,) ``point``."""
    closest = np.concatenate([closest_on_segments(point[None], outline)[0]
                              for outline in [floor] + [box.footprint() for box in boxes]])
    return closest[np.argmin(np.linalg.norm(closest - point, axis=1))]
