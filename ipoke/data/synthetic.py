"""The built-in synthetic poking dataset: articulated plants on textured backgrounds, moved by a 2D physics engine.

Every scene is a set of plants, each a tree of rigid bodies (stem and branch segments, leaves) joined by pivots with
damped rotary springs (pymunk). A *poke* is an impulse at a pixel of the first frame, in a direction and with a
magnitude; the springs carry the motion along the kinematic chain, so parts far from the poke move too. The same
first frame and poke admit several futures: each *physics sample* perturbs joint stiffness and damping, the
impulse, and adds small secondary impulses. Poking the background moves nothing.

Because every object pixel belongs to a known rigid body, the ground truth is exact: dense flow from frame 0 to
every later frame (``R(θ_t − θ_0)(x − c_0) + c_t − x`` per body), part masks, joint keypoints and the poke.

Coordinates: physics runs in "world" units = pixels of a 256 x 256 canvas; frames are rendered at any size S
(supersampled and area-downsampled, so edges are anti-aliased) and flow is returned in pixels at size S.

The held-out ``test`` split uses plant species (leaf shapes, palettes, branching) and backgrounds that never appear
in ``train``/``val``, to measure generalisation to novel objects.

Main entry points: :func:`sample_scene`, :func:`sample_poke`, :func:`simulate` and :func:`generate_dataset`.
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pymunk

from ipoke.data.pokes import poke_from_flow_at
from ipoke.utils import ignore_interrupts_in_worker, stop_process_pool, writes_exclusively

logger = logging.getLogger(__name__)

WORLD = 256.0
# Smallest frame side: at 16 px stems are already under a pixel wide; below it plants are a few pixels.
MIN_SIZE = 16
GENERATOR_VERSION = 6  # 6: frames and part masks from the same exact shapes, see render_frame() and render_ids();
#                        5 (only while session 16 developed it): exact masks over OpenCV-drawn frames, 0.87x what
#                        the frames showed; 4: keypoints with pixel centres at integers (were half a pixel off);
#                        3: pokes twice as strong (impulse_scale 760, was 380), see simulate()

# ----------------------------------------------------------------------------------------------------------------
# Species: what a plant looks like. Train and novel (test) species share nothing visible.


@dataclass(frozen=True)
class Species:
    """Appearance and structure ranges of one family of plants."""

    name: str
    leaf_shape: str  # "ellipse" | "teardrop" | "lobed" | "star" | "heart"
    leaf_hue: tuple[float, float]  # OpenCV hue range, 0..180
    stem_hue: tuple[float, float]
    n_segments: tuple[int, int]  # stem segments, inclusive range
    branch_probability: float
    leaf_length: tuple[float, float]  # world units
    height: tuple[float, float]  # total stem length, world units


TRAIN_SPECIES = (
    Species("fern", "ellipse", (40, 75), (20, 40), (3, 5), 0.55, (34, 54), (150, 215)),
    Species("sprout", "teardrop", (30, 55), (15, 35), (2, 4), 0.35, (42, 64), (120, 180)),
    Species("reed", "ellipse", (55, 85), (25, 45), (4, 6), 0.25, (26, 40), (170, 225)),
    Species("shrub", "teardrop", (35, 70), (10, 25), (3, 4), 0.8, (30, 46), (130, 190)),
)
NOVEL_SPECIES = (
    Species("maple", "lobed", (0, 15), (5, 15), (3, 5), 0.6, (38, 56), (150, 210)),
    Species("starflower", "star", (120, 150), (90, 110), (2, 4), 0.5, (40, 60), (130, 190)),
    Species("heartvine", "heart", (160, 178), (150, 170), (3, 5), 0.45, (34, 50), (160, 215)),
)

TRAIN_IMAGES = ("grass", "gravel", "brick", "coffee", "chelsea", "astronaut", "rocket", "immunohistochemistry")
NOVEL_IMAGES = ("moon", "hubble_deep_field", "retina", "coins", "camera", "clock")
TRAIN_TEXTURES = ("noise", "stripes")
NOVEL_TEXTURES = ("checker", "cells")


# ----------------------------------------------------------------------------------------------------------------
# Backgrounds


@cache
def _sample_image(name: str) -> np.ndarray:
    """RGB uint8 sample image shipped inside scikit-image (no download)."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def _procedural_texture(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    if kind == "noise":
        texture = np.zeros((size, size, 3), np.float32)
        for octave in (4, 8, 16, 32):
            grid = rng.random((octave, octave, 3)).astype(np.float32)
            texture += cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC) / octave ** 0.5
    elif kind == "stripes":
        angle, period = rng.uniform(0, math.pi), rng.uniform(8, 40) * size / WORLD
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        wave = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
        texture = wave[..., None] * rng.uniform(0.2, 1, 3).astype(np.float32)
    elif kind == "checker":
        cell = max(2, int(rng.uniform(10, 36) * size / WORLD))
        yy, xx = np.mgrid[0:size, 0:size]
        board = (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
        texture = board[..., None] * rng.uniform(0.3, 1, 3).astype(np.float32)
    elif kind == "cells":
        n_points = int(rng.integers(12, 40))
        points = rng.uniform(0, size, (n_points, 2)).astype(np.float32)
        colors = rng.random((n_points, 3)).astype(np.float32)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        distances = (xx[..., None] - points[:, 0]) ** 2 + (yy[..., None] - points[:, 1]) ** 2
        texture = colors[np.argmin(distances, axis=-1)]
    else:
        raise ValueError(f"unknown texture {kind!r}")
    texture -= texture.min()
    texture /= max(float(texture.max()), 1e-6)
    return texture


def render_background(spec: dict[str, Any], size: int) -> np.ndarray:
    """Render a background from its spec (see :func:`sample_background`) as uint8 ``(size, size, 3)``."""
    rng = np.random.default_rng(spec["seed"])
    if spec["kind"] == "image":
        image = _sample_image(spec["name"]).astype(np.float32) / 255.0
        height, width = image.shape[:2]
        crop = int(min(height, width) * spec["crop_fraction"])
        top = int(spec["crop_y"] * (height - crop))
        left = int(spec["crop_x"] * (width - crop))
        texture = cv2.resize(image[top:top + crop, left:left + crop], (size, size), interpolation=cv2.INTER_AREA)
    else:
        texture = _procedural_texture(spec["kind"], rng, size)
    blur = spec["blur"] * size / WORLD
    if blur > 0.3:
        texture = cv2.GaussianBlur(texture, (0, 0), blur)
    # Recolour and flatten contrast so the plants stay the most salient thing in the frame.
    tint = np.asarray(spec["tint"], np.float32)
    gray = texture.mean(axis=2, keepdims=True)
    texture = gray + spec["saturation"] * (texture - gray)
    texture = spec["brightness"] + spec["contrast"] * (texture - 0.5)
    texture = texture * tint
    return np.clip(texture * 255.0 + 0.5, 0, 255).astype(np.uint8)


def sample_background(rng: np.random.Generator, novel: bool) -> dict[str, Any]:
    """Draw a background spec: a cropped, blurred, recoloured sample image or a procedural texture."""
    images, textures = (NOVEL_IMAGES, NOVEL_TEXTURES) if novel else (TRAIN_IMAGES, TRAIN_TEXTURES)
    use_image = rng.random() < 0.6
    spec: dict[str, Any] = {
        "kind": "image" if use_image else str(rng.choice(textures)),
        "seed": int(rng.integers(2**31)),
        "blur": float(rng.uniform(0.5, 3.0)),
        "tint": [float(v) for v in rng.uniform(0.6, 1.0, 3)],
        "saturation": float(rng.uniform(0.2, 0.7)),
        "brightness": float(rng.uniform(0.35, 0.65)),
        "contrast": float(rng.uniform(0.25, 0.55)),
    }
    if use_image:
        spec.update(name=str(rng.choice(images)), crop_fraction=float(rng.uniform(0.35, 0.9)),
                    crop_x=float(rng.random()), crop_y=float(rng.random()))
    return spec


# ----------------------------------------------------------------------------------------------------------------
# Plants: a scene is plain data (JSON-able), so it can be stored and re-simulated exactly.


def _leaf_outline(shape: str, length: float, width: float) -> list[list[float]]:
    """Leaf polygon in body coordinates: base at x = -length/2, tip at +length/2, symmetric about y = 0."""
    t = np.linspace(0.0, 1.0, 13)
    if shape == "ellipse":
        half = 0.5 * width * np.sqrt(np.clip(1 - (2 * t - 1) ** 2, 0, 1))
    elif shape == "teardrop":
        half = 0.5 * width * np.sin(math.pi * t) * (1.2 - 0.6 * t)
    elif shape == "lobed":
        half = 0.5 * width * np.sin(math.pi * t) * (0.75 + 0.35 * np.cos(6 * math.pi * t))
    elif shape == "star":
        half = 0.5 * width * np.sin(math.pi * t) * (0.55 + 0.45 * np.abs(np.sin(5 * math.pi * t)))
    elif shape == "heart":
        half = 0.5 * width * np.sin(math.pi * t) * (1.3 - t) ** 1.5
    else:
        raise ValueError(f"unknown leaf shape {shape!r}")
    x = (t - 0.5) * length
    upper = [[float(a), float(b)] for a, b in zip(x, half)]
    lower = [[float(a), float(-b)] for a, b in zip(x[::-1], half[::-1])]
    return upper + lower[1:-1]


def _hsv_color(rng: np.random.Generator, hue: tuple[float, float], saturation=(140, 230),
               value=(110, 230)) -> list[int]:
    hsv = np.uint8([[[rng.uniform(*hue), rng.uniform(*saturation), rng.uniform(*value)]]])
    return [int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]]


def _add_chain(bodies: list[dict[str, Any]], rng: np.random.Generator, species: Species, *, parent: int,
               start: np.ndarray, angle: float, n_segments: int, length: float, thickness: float,
               stiffness: float, color: list[int], leaf_color: list[int], depth: int) -> None:
    """Append a chain of segments (with side branches and leaves) growing from ``start`` at ``angle``."""
    lengths = length * np.array([0.85 ** i for i in range(n_segments)])
    lengths *= length / lengths.sum()
    point = start.astype(float)
    for index, segment_length in enumerate(lengths):
        angle += rng.normal(0, 0.22)
        direction = np.array([math.cos(angle), math.sin(angle)])
        end = point + direction * segment_length
        body_thickness = max(2.0, thickness * (1 - 0.5 * index / n_segments))
        bodies.append({
            "kind": "segment", "parent": parent, "center": ((point + end) / 2).tolist(), "angle": angle,
            "length": float(segment_length), "thickness": float(body_thickness), "color": color,
            "joint": point.tolist(), "stiffness": float(stiffness * (1 - 0.55 * index / n_segments)),
            "damping": float(rng.uniform(0.8, 1.2)),
        })
        parent = len(bodies) - 1
        if depth == 0 and index >= 1 and rng.random() < species.branch_probability:
            side = rng.choice([-1.0, 1.0])
            _add_chain(bodies, rng, species, parent=parent, start=point, angle=angle + side * rng.uniform(0.5, 1.2),
                       n_segments=int(rng.integers(1, 3)), length=length * rng.uniform(0.3, 0.5),
                       thickness=body_thickness * 0.7, stiffness=stiffness * 0.5, color=color,
                       leaf_color=leaf_color, depth=depth + 1)
        if index < n_segments - 1 and rng.random() < 0.5:
            _add_leaf(bodies, rng, species, parent=parent, base=end, angle=angle + rng.choice([-1, 1]) * 0.9,
                      stiffness=stiffness * 0.25, color=leaf_color, scale=0.7)
        point = end
    _add_leaf(bodies, rng, species, parent=parent, base=point, angle=angle, stiffness=stiffness * 0.3, color=leaf_color,
              scale=1.0)


def _add_leaf(bodies: list[dict[str, Any]], rng: np.random.Generator, species: Species, *, parent: int,
              base: np.ndarray, angle: float, stiffness: float, color: list[int], scale: float) -> None:
    length = rng.uniform(*species.leaf_length) * scale
    width = length * rng.uniform(0.35, 0.6)
    direction = np.array([math.cos(angle), math.sin(angle)])
    bodies.append({
        "kind": "leaf", "parent": parent, "center": (base + direction * length / 2).tolist(), "angle": angle,
        "length": float(length), "outline": _leaf_outline(species.leaf_shape, length, width),
        "color": [int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in color], "joint": base.tolist(),
        "stiffness": float(stiffness), "damping": float(rng.uniform(0.8, 1.2)),
    })


def sample_scene(rng: np.random.Generator, *, novel: bool = False) -> dict[str, Any]:
    """Draw a scene: 1-3 plants (rigid-body trees) and a background, as JSON-able data.

    Args:
        rng: Source of randomness.
        novel: Draw from the held-out species and backgrounds (the ``test`` split) instead of the training ones.

    Returns:
        ``{"bodies": [...], "background": {...}, "species": [...]}``; bodies are listed parent before child, each
        with its world-space centre, angle, geometry, colour, parent index (-1 = ground) and joint point.
    """
    species_pool = NOVEL_SPECIES if novel else TRAIN_SPECIES
    n_plants = int(rng.choice([1, 1, 2, 2, 3]))
    bases = np.sort(rng.uniform(45, WORLD - 45, n_plants))
    bodies: list[dict[str, Any]] = []
    names = []
    for base_x in bases:
        species = species_pool[int(rng.integers(len(species_pool)))]
        names.append(species.name)
        stem_color = _hsv_color(rng, species.stem_hue, value=(70, 160))
        leaf_color = _hsv_color(rng, species.leaf_hue)
        base = np.array([base_x + rng.normal(0, 8), rng.uniform(WORLD - 30, WORLD - 8)])
        height = rng.uniform(*species.height) * (0.8 if n_plants == 3 else 1.0)
        _add_chain(bodies, rng, species, parent=-1, start=base, angle=-math.pi / 2 + rng.normal(0, 0.25),
                   n_segments=int(rng.integers(species.n_segments[0], species.n_segments[1] + 1)), length=height,
                   thickness=rng.uniform(8, 13), stiffness=rng.uniform(0.8, 1.25), color=stem_color,
                   leaf_color=leaf_color, depth=0)
    return {"version": GENERATOR_VERSION, "bodies": bodies, "background": sample_background(rng, novel),
            "species": names, "novel": novel}


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def _body_polygon(body: dict[str, Any], center: np.ndarray, angle: float) -> np.ndarray | None:
    """World-space outline of a leaf; None for segments (drawn as thick lines)."""
    if body["kind"] != "leaf":
        return None
    outline = np.asarray(body["outline"], np.float64)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return outline @ rotation.T + center


def _segment_ends(body: dict[str, Any], center: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    half = 0.5 * body["length"] * np.array([math.cos(angle), math.sin(angle)])
    return center - half, center + half


def _supersample(size: int) -> int:
    """Supersampling factor of :func:`render_frame` at output size ``size``."""
    return 4 if size <= 128 else 2


def _inside_polygon(x: np.ndarray, y: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd test of the points ``(x, y)`` (broadcast together) against a closed polygon ``(P, 2)``."""
    x1, y1 = polygon[:, 0, None, None], polygon[:, 1, None, None]
    x2, y2 = np.roll(x1, -1, axis=0), np.roll(y1, -1, axis=0)
    crosses = (y1 > y) != (y2 > y)  # never true for a horizontal edge, whose slope below is then unused
    slope = (x2 - x1) / np.where(y2 == y1, 1.0, y2 - y1)
    return (crosses & (x < x1 + (y - y1) * slope)).sum(axis=0) % 2 == 1


def _inside_capsule(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
    """Points ``(x, y)`` within ``radius`` of the segment ``a``-``b``: a thick line with round ends."""
    d = b - a
    t = np.clip(((x - a[0]) * d[0] + (y - a[1]) * d[1]) / max(float(d @ d), 1e-12), 0.0, 1.0)
    return (x - a[0] - t * d[0]) ** 2 + (y - a[1] - t * d[1]) ** 2 <= radius * radius


def _label_map(bodies: list[dict[str, Any]], poses: np.ndarray, side: int, *, thinnest: float,
               midribs: bool) -> np.ndarray:
    """Exact labels of a ``side x side`` grid over the world, sampled at the cells' centres, ``(side, side)`` int32.

    0 is the background and k body k-1 (the topmost: stems first, then leaves, later bodies over earlier ones); with
    ``midribs``, ``n + 1 + j`` is the darker midrib of leaf j, drawn over it. Stems are lines with round ends of the
    body's thickness, and stems and midribs are at least ``thinnest`` world units wide (one cell of the frame's
    supersampled canvas: thinner ones would fall between its samples).
    """
    labels = np.zeros((side, side), np.int32)
    scale = side / WORLD  # cell i covers world [i, i + 1) / scale; its centre is at (i + 0.5) / scale
    centres = (np.arange(side) + 0.5) / scale

    def fill(low: np.ndarray, high: np.ndarray, inside: Any, label: int) -> None:
        # Only the cells whose centres fall in the bounding box are tested.
        c0, r0 = np.maximum(np.ceil(low * scale - 0.5), 0).astype(int)
        c1, r1 = np.minimum(np.floor(high * scale - 0.5), side - 1).astype(int)
        if c1 >= c0 and r1 >= r0:
            labels[r0:r1 + 1, c0:c1 + 1][inside(centres[None, c0:c1 + 1], centres[r0:r1 + 1, None])] = label

    def capsule(a: np.ndarray, b: np.ndarray, width: float, label: int) -> None:
        radius = 0.5 * max(width, thinnest)
        fill(np.minimum(a, b) - radius, np.maximum(a, b) + radius,
             lambda x, y: _inside_capsule(x, y, a, b, radius), label)

    for order in ("segment", "leaf"):
        for index, body in enumerate(bodies):
            if body["kind"] != order:
                continue
            center, angle = poses[index, :2], poses[index, 2]
            if order == "segment":
                capsule(*_segment_ends(body, center, angle), body["thickness"], index + 1)
                continue
            polygon = _body_polygon(body, center, angle)
            fill(polygon.min(axis=0), polygon.max(axis=0), lambda x, y: _inside_polygon(x, y, polygon), index + 1)
            if midribs:
                capsule(*_segment_ends({"length": body["length"] * 0.8}, center, angle), 1.2, len(bodies) + 1 + index)
    return labels


def render_frame(bodies: list[dict[str, Any]], poses: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Anti-aliased RGB frame ``(S, S, 3)`` uint8: the bodies' exact shapes sampled 4x4 per pixel (2x2 above 128 px)
    over ``background`` and averaged, so a pixel shows each body in proportion to the area it covers.

    Frames and part masks (:func:`render_ids`) come from the same shapes. Generator versions before 6 drew the frames
    with OpenCV's anti-aliased lines and polygons, which paint wider than the shape they are given (a line about 1.4
    to 2.4 canvas pixels wider, a polygon about 0.7 px per edge): at 64 px the plants showed about 15 % more area than
    their bodies have, and that fringe had no mask or flow.
    """
    size = background.shape[0]
    supersample = _supersample(size)
    side = size * supersample
    labels = _label_map(bodies, poses, side, thinnest=WORLD / side, midribs=True)
    palette = np.zeros((2 * len(bodies) + 1, 3), np.uint8)
    for index, body in enumerate(bodies):
        palette[1 + index] = body["color"]
        palette[1 + len(bodies) + index] = [int(c * 0.6) for c in body["color"]]
    big = cv2.resize(background, (side, side), interpolation=cv2.INTER_NEAREST)
    covered = labels > 0
    big[covered] = palette[labels[covered]]
    return cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)


def render_ids(bodies: list[dict[str, Any]], poses: np.ndarray, size: int) -> np.ndarray:
    """Part mask ``(S, S)`` uint8: 0 = background, k = body k-1, the topmost body whose shape holds the pixel's centre.

    The shapes are those :func:`render_frame` draws, sampled at pixel centres, so a pixel is marked when a body
    covers about half of it or more in the frame and the mask's area is the bodies' visible area. Generator versions
    before 5 rasterised the ids with OpenCV's ``LINE_8`` at size S, which marks every pixel an edge touches: masks
    were about 1.4x the bodies' area at 64 px (and, since the frames were drawn wider than the bodies too, 1.2x what
    the frame showed), and a fifth of their pixels were mostly background, with the body's flow as their truth.
    """
    if len(bodies) > 254:
        raise ValueError("at most 254 bodies per scene fit a uint8 part mask")
    thinnest = WORLD / (size * _supersample(size))  # as in render_frame
    return _label_map(bodies, poses, size, thinnest=thinnest, midribs=False).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Physics


@dataclass
class Poke:
    """An impulse at a world point; ``(x, y)`` in world units, ``(dx, dy)`` the impulse direction times magnitude."""

    x: float
    y: float
    dx: float
    dy: float
    body: int  # index of the poked body, -1 for the background

    def as_dict(self) -> dict[str, float | int]:
        return {"x": self.x, "y": self.y, "dx": self.dx, "dy": self.dy, "body": self.body}


def sample_poke(rng: np.random.Generator, scene: dict[str, Any], *, background: bool = False,
                size: int = 128) -> Poke:
    """Draw a poke on a random body (weighted by visible area) or, with ``background=True``, on the background.

    Direction is uniform; the magnitude is drawn so that the poked point moves a few percent of the image.
    """
    bodies = scene["bodies"]
    poses = np.array([[*b["center"], b["angle"]] for b in bodies])
    ids = render_ids(bodies, poses, size)
    if background:
        free = ids == 0
        # Keep background pokes clear of the plants so they are unambiguous.
        free = cv2.erode(free.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        candidates = np.argwhere(free)
    else:
        # Every pixel of the mask has its centre on a body (versions before 5 eroded a dilated mask instead).
        candidates = np.argwhere(ids > 0)
    if len(candidates) == 0:
        raise ValueError("no pixel available for the requested poke")
    row, col = candidates[int(rng.integers(len(candidates)))]
    x, y = (col + 0.5) * WORLD / size, (row + 0.5) * WORLD / size
    angle = rng.uniform(0, 2 * math.pi)
    magnitude = rng.uniform(0.5, 1.0)
    return Poke(x=float(x), y=float(y), dx=float(magnitude * math.cos(angle)), dy=float(magnitude * math.sin(angle)),
                body=-1 if background else int(ids[row, col]) - 1)


def _build_space(scene: dict[str, Any], rng: np.random.Generator, *, perturb: bool) -> tuple[pymunk.Space, list]:
    space = pymunk.Space()
    space.gravity = (0.0, 0.0)
    space.damping = 0.5
    bodies = []
    for spec in scene["bodies"]:
        density = 0.02 if spec["kind"] == "segment" else 0.008
        area = spec["length"] * (spec.get("thickness") or spec["length"] * 0.45)
        mass = density * area
        moment = mass * spec["length"] ** 2 / 12.0
        body = pymunk.Body(mass, moment)
        body.position = tuple(spec["center"])
        body.angle = spec["angle"]
        space.add(body)
        parent = space.static_body if spec["parent"] < 0 else bodies[spec["parent"]]
        pivot = pymunk.PivotJoint(parent, body, tuple(spec["joint"]))
        stiffness = 9000.0 * spec["stiffness"] * (rng.uniform(0.9, 1.1) if perturb else 1.0)
        damping = 60.0 * spec["damping"] * (rng.uniform(0.85, 1.2) if perturb else 1.0)
        parent_angle = 0.0 if spec["parent"] < 0 else scene["bodies"][spec["parent"]]["angle"]
        spring = pymunk.DampedRotarySpring(parent, body, spec["angle"] - parent_angle, stiffness, damping)
        space.add(pivot, spring)
        bodies.append(body)
    return space, bodies


def simulate(scene: dict[str, Any], poke: Poke, *, n_frames: int, size: int, physics_seed: int,
             stochastic: bool = True, impulse_scale: float = 760.0, frame_dt: float = 1 / 24,
             substeps: int = 8, frames_only: bool = False) -> dict[str, np.ndarray]:
    """Simulate ``n_frames`` future frames after a poke and render them with exact ground truth.

    Args:
        scene: From :func:`sample_scene` (or a stored ``scene.json``).
        poke: Where and how hard to push; a background poke (``body == -1``) moves nothing.
        n_frames: Future frames T; the video has T + 1 frames (frame 0 = before any motion).
        size: Output side length S.
        physics_seed: Seed of this physics sample (stiffness/damping jitter, impulse jitter, secondary impulses).
        stochastic: If False, nominal physics without any perturbation.
        impulse_scale: World impulse per unit of poke magnitude. At 760 a poked part travels 2.9 px on average by
            frame 10 at 64 px (median largest motion 5 px, 90th percentile 10 px) and its poked point still moves
            along the impulse (mean cosine 0.78). Version 2 of the generator used 380: 1.7 px on average, too little
            for flow-based control metrics on 2-4 px wide stems and for short training runs to pick up. Longer
            frame spacing instead (1/12 s) was rejected: the parts swing back within the clip and the poked point
            ends up moving against the impulse in a quarter of the clips.
        frame_dt: Simulated seconds between frames.
        substeps: Physics steps per frame.
        frames_only: Render the frames alone (no masks, flow or keypoints: about a third of the time), e.g. for the
            re-simulated baseline of an evaluation. The frames are the same.

    Returns:
        ``frames`` uint8 ``(T+1, S, S, 3)``, ``flow`` float32 ``(T, 2, S, S)`` from frame 0 to frames 1..T in pixels at
        size S, ``masks`` uint8 ``(T+1, S, S)`` part ids, ``keypoints`` float32 ``(T+1, K, 2)`` joint positions in
        pixels at size S with pixel centres at integers (as prepared real keypoints), ``poses`` float64
        ``(T+1, n_bodies, 3)`` world (x, y, angle); ``frames`` and ``poses`` alone with ``frames_only``.
    """
    rng = np.random.default_rng(physics_seed)
    bodies_spec = scene["bodies"]
    space, bodies = _build_space(scene, rng, perturb=stochastic)
    n_bodies = len(bodies_spec)
    poses = np.zeros((n_frames + 1, n_bodies, 3))
    poses[0] = [[*b["center"], b["angle"]] for b in bodies_spec]
    if poke.body >= 0:
        jitter = rng.uniform(0.95, 1.05) if stochastic else 1.0
        impulse = (poke.dx * impulse_scale * jitter, poke.dy * impulse_scale * jitter)
        bodies[poke.body].apply_impulse_at_world_point(impulse, (poke.x, poke.y))
        if stochastic:
            for other in rng.choice(n_bodies, size=min(n_bodies, int(rng.integers(1, 4))), replace=False):
                angle = rng.uniform(0, 2 * math.pi)
                mass_ratio = bodies[other].mass / max(bodies[poke.body].mass, 1e-6)
                strength = impulse_scale * rng.uniform(0.01, 0.04) * mass_ratio
                strength = min(strength, impulse_scale * 0.04)
                bodies[other].apply_impulse_at_local_point((strength * math.cos(angle), strength * math.sin(angle)))
        step = frame_dt / substeps
        for frame in range(1, n_frames + 1):
            for _ in range(substeps):
                space.step(step)
            poses[frame] = [[b.position.x, b.position.y, b.angle] for b in bodies]
    else:
        poses[1:] = poses[0]

    background = render_background(scene["background"], size)
    frames = np.stack([render_frame(bodies_spec, poses[t], background) for t in range(n_frames + 1)])
    if frames_only:
        return {"frames": frames, "poses": poses}
    masks = np.stack([render_ids(bodies_spec, poses[t], size) for t in range(n_frames + 1)])
    flow = _exact_flow(masks[0], poses, size)
    keypoints = _keypoints(bodies_spec, poses, size)
    return {"frames": frames, "flow": flow, "masks": masks, "keypoints": keypoints, "poses": poses}


def _exact_flow(ids0: np.ndarray, poses: np.ndarray, size: int) -> np.ndarray:
    """Flow ``(T, 2, S, S)`` from frame 0: every object pixel follows the rigid motion of its body."""
    n_future = poses.shape[0] - 1
    flow = np.zeros((n_future, 2, size, size), np.float32)
    scale = WORLD / size
    for body in np.unique(ids0):
        if body == 0:
            continue
        rows, cols = np.nonzero(ids0 == body)
        points = np.stack([(cols + 0.5) * scale, (rows + 0.5) * scale], axis=1)
        x0, y0, a0 = poses[0, body - 1]
        relative = points - (x0, y0)
        for t in range(1, n_future + 1):
            xt, yt, at = poses[t, body - 1]
            cos, sin = math.cos(at - a0), math.sin(at - a0)
            moved = np.stack([cos * relative[:, 0] - sin * relative[:, 1] + xt,
                              sin * relative[:, 0] + cos * relative[:, 1] + yt], axis=1)
            displacement = (moved - points) / scale
            flow[t - 1, 0, rows, cols] = displacement[:, 0]
            flow[t - 1, 1, rows, cols] = displacement[:, 1]
    return flow


def _keypoints(bodies: list[dict[str, Any]], poses: np.ndarray, size: int) -> np.ndarray:
    """Joint positions (the pivot of every body) over time, pixels at size S, pixel centres at integers.

    Pixel ``(i, j)`` covers world ``[i, i + 1) * WORLD / S`` (see :func:`_exact_flow`), so its centre is world
    ``(i + 0.5) * WORLD / S``: a world point ``w`` is at ``w * S / WORLD - 0.5``, the convention of prepared real
    keypoints and of OpenCV. Generator versions before 4 left out the ``- 0.5``; :class:`ipoke.data.PokeDataset`
    corrects keypoints read from such datasets.
    """
    keypoints = np.zeros((poses.shape[0], len(bodies), 2), np.float32)
    for index, body in enumerate(bodies):
        x0, y0, a0 = poses[0, index]
        local = np.asarray(body["joint"]) - (x0, y0)
        for t in range(poses.shape[0]):
            xt, yt, at = poses[t, index]
            cos, sin = math.cos(at - a0), math.sin(at - a0)
            keypoints[t, index] = ((cos * local[0] - sin * local[1] + xt) * size / WORLD - 0.5,
                                   (sin * local[0] + cos * local[1] + yt) * size / WORLD - 0.5)
    return keypoints


# ----------------------------------------------------------------------------------------------------------------
# Whole datasets


@dataclass(frozen=True)
class SyntheticSettings:
    """Options of :func:`generate_dataset` (also stored in the dataset index)."""

    videos: int = 4000
    frames: int = 10
    size: int = 64
    seed: int = 0
    val_fraction: float = 0.05
    test_fraction: float = 0.1
    background_poke_fraction: float = 1 / 12
    min_motion: float = 0.5

    def __post_init__(self) -> None:
        """Reject settings that cannot make a dataset; the message names the option (``--videos`` etc.)."""
        checks = [
            (self.videos >= 1, f"videos (--videos) must be >= 1, got {self.videos}"),
            (self.frames >= 1, f"frames (--frames) must be >= 1, got {self.frames}"),
            (self.size >= MIN_SIZE, f"size (--size) must be >= {MIN_SIZE} px (smaller frames draw the plants as a "
                                    f"few pixels), got {self.size}"),
            (self.seed >= 0, f"seed (--seed) must be >= 0, got {self.seed}"),
            (0 <= self.val_fraction < 1, f"val_fraction (--val-fraction) must be in [0, 1), got {self.val_fraction}"),
            (0 <= self.test_fraction < 1,
             f"test_fraction (--test-fraction) must be in [0, 1), got {self.test_fraction}"),
            (self.val_fraction + self.test_fraction < 1,
             f"val_fraction + test_fraction must be below 1 so that train keeps videos, got {self.val_fraction} + "
             f"{self.test_fraction}"),
            (0 <= self.background_poke_fraction <= 1, "background_poke_fraction (--background-poke-fraction) must "
             f"be in [0, 1], got {self.background_poke_fraction}"),
            (self.min_motion >= 0, f"min_motion must be >= 0, got {self.min_motion}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        counts = self.split_counts()
        if counts["train"] < 1:
            raise ValueError(f"{self.videos} videos leave none for train ({counts['val']} val at val_fraction "
                             f"{self.val_fraction}, {counts['test']} test at test_fraction {self.test_fraction}); "
                             "use more --videos or smaller fractions")

    def split_counts(self) -> dict[str, int]:
        """Videos per split: val and test get their fraction of ``videos`` (rounded), train the rest."""
        n_test = int(round(self.videos * self.test_fraction))
        n_val = int(round(self.videos * self.val_fraction))
        return {"train": self.videos - n_test - n_val, "val": n_val, "test": n_test}

    def empty_split_warnings(self) -> list[str]:
        """One message per split that was asked for (fraction > 0) but gets no video because ``videos`` is small."""
        messages = []
        for split, fraction in (("val", self.val_fraction), ("test", self.test_fraction)):
            if fraction > 0 and self.split_counts()[split] == 0:
                needed = max(self.videos, math.ceil(0.5 / fraction))
                while int(round(needed * fraction)) < 1:
                    needed += 1
                messages.append(f"the {split} split will be empty: {self.videos} videos x {split}_fraction "
                                f"{fraction:g} rounds to 0 videos (it needs at least {needed} videos)")
        return messages


def _video_plan(settings: SyntheticSettings) -> list[tuple[str, str, int]]:
    """(video_id, split, index) of every video, with a fixed split assignment."""
    counts = settings.split_counts()
    n_train, n_val, n_test = counts["train"], counts["val"], counts["test"]
    plan = [(f"train_{i:06d}", "train", i) for i in range(n_train)]
    plan += [(f"val_{i:06d}", "val", i) for i in range(n_val)]
    plan += [(f"test_{i:06d}", "test", i) for i in range(n_test)]
    return plan


def make_video(settings: SyntheticSettings, split: str, index: int) -> dict[str, Any]:
    """Generate one video of the dataset, deterministically from ``(seed, split, index)``.

    Retries with fresh draws (at most 20) when a non-background poke barely moves anything, so that every object
    poke in the dataset produces visible motion.
    """
    split_key = {"train": 0, "val": 1, "test": 2}[split]
    rng = np.random.default_rng(np.random.SeedSequence([settings.seed, split_key, index]))
    background_poke = rng.random() < settings.background_poke_fraction
    for _attempt in range(20):
        scene = sample_scene(rng, novel=split == "test")
        poke = sample_poke(rng, scene, background=background_poke, size=max(settings.size, 64))
        physics_seed = int(rng.integers(2**31))
        result = simulate(scene, poke, n_frames=settings.frames, size=settings.size, physics_seed=physics_seed)
        moved = np.linalg.norm(result["flow"][-1], axis=0).max()
        if background_poke or moved * 64 / settings.size >= settings.min_motion:
            break
    scale = settings.size / WORLD
    px, py = poke.x * scale, poke.y * scale
    if background_poke:
        # A background poke records the drag the user made; nothing moved.
        vector = (poke.dx * 0.1 * settings.size, poke.dy * 0.1 * settings.size)
    else:
        # An object poke is recorded like a flow-simulated one: the endpoint displacement at the poked pixel. Below
        # 64 px the poke, placed on a 64 px raster, can fall beside a thin stem (until session 12 it was recorded
        # there with a zero vector, in about 1 video in 5 at 32 px): it moves onto the nearest object pixel.
        px, py, *vector = (float(v) for v in poke_from_flow_at(px, py, result["flow"][-1], result["masks"][0] > 0))
    scene_record = {**scene, "poke": poke.as_dict(), "physics_seed": physics_seed, "frames": settings.frames}
    return {
        "frames": result["frames"],
        "flow": result["flow"][None],  # (F=1, L=T, 2, S, S)
        "masks": result["masks"],
        "keypoints": result["keypoints"],
        "pokes": np.array([[px, py, *vector]], np.float32),
        "scene": scene_record,
        "meta": {"object_id": "+".join(scene["species"]), "background_poke": bool(background_poke),
                 "poked_body": poke.body},
    }


def resimulate(scene_record: dict[str, Any], *, size: int, physics_seed: int, stochastic: bool = True,
               frames_only: bool = False) -> dict[str, np.ndarray]:
    """Another physics sample of a stored video (same first frame and poke, different future); arguments as
    :func:`simulate`."""
    poke = Poke(**scene_record["poke"])
    return simulate(scene_record, poke, n_frames=scene_record["frames"], size=size, physics_seed=physics_seed,
                    stochastic=stochastic, frames_only=frames_only)


def _worker(args: tuple[SyntheticSettings, str, str, int, Any]) -> str:
    # The writer is created once by the parent (its constructor cleans stale tmp folders, which must not race).
    settings, video_id, split, index, writer = args
    video = make_video(settings, split, index)
    writer.write_video(video_id, split=split, frames=video["frames"], flow=video["flow"], flow_starts=[0],
                       masks=video["masks"], keypoints=video["keypoints"], pokes=video["pokes"], scene=video["scene"],
                       **video["meta"])
    return video_id


def _check_videos_without_index(root: Path, settings: SyntheticSettings) -> None:
    """Refuse to resume videos whose index (and with it their settings) is gone unless they are this run's: the first
    video is made again and its scene and frames compared. Without this, a rerun with other
    options after a deleted index mixed two datasets (other sizes and seeds) under the new settings."""
    import json

    from ipoke.data.format import VIDEOS_DIR, DatasetFormatError

    # (Hidden folders are a killed writer's temporaries, which the writer deletes.)
    existing = sorted(folder.name for folder in (root / VIDEOS_DIR).iterdir()
                      if not folder.name.startswith(".") and (folder / "meta.json").is_file())
    if not existing:
        return
    plan = {video_id: (split, index) for video_id, split, index in _video_plan(settings)}
    video_id, folder = existing[0], root / VIDEOS_DIR / existing[0]
    # Every video must be one this run would make (other --videos or split fractions made others), and the first
    # one is made again and compared (size, frames, seed, ...).
    same = set(existing) <= set(plan) and (folder / "scene.json").is_file() and (folder / "frames.npy").is_file()
    if same:
        frames = np.load(folder / "frames.npy", mmap_mode="r")
        expected = make_video(settings, *plan[video_id])
        # The frames too: another generator version draws the same scene differently.
        same = (json.loads((folder / "scene.json").read_text()) == json.loads(json.dumps(expected["scene"]))
                and np.array_equal(frames, expected["frames"]))  # False for another shape (size, frames)
    if not same:
        raise DatasetFormatError(f"{root} holds videos but no index (ipoke_dataset.json), and its video {video_id} "
                                 "was not made with these options (size, frames, seed, split fractions, ...) or was "
                                 f"made by another version of the generator (this ipoke writes version "
                                 f"{GENERATOR_VERSION}): rerun with the options that made it, or use another --out "
                                 "folder")


@writes_exclusively("out", "ipoke data synth")
def generate_dataset(out: str | os.PathLike, settings: SyntheticSettings, *, workers: int = 1,
                     progress: bool = True) -> Path:
    """Write a synthetic dataset in the prepared format; resumable and deterministic for a seed.

    Args:
        out: Output folder (new, empty, or an unfinished/finished synthetic dataset with the same settings).
        settings: Dataset size, clip length, resolution, seed and split fractions.
        workers: Processes generating videos in parallel (the result does not depend on it).
        progress: Show a progress bar.

    Returns:
        The dataset folder.
    """
    from tqdm.auto import tqdm

    from ipoke.data.format import (
        PREPARE_SETTINGS_FILE,
        VIDEOS_DIR,
        DatasetFormatError,
        DatasetWriter,
        is_dataset,
        read_index,
        remove_if_nothing_finished,
    )

    root = Path(out)
    recorded = {**settings.__dict__, "generator_version": GENERATOR_VERSION}
    # Checked before the writer touches the folder (it would first complain about size/flow_lags only).
    if (root / PREPARE_SETTINGS_FILE).exists():  # finished or not: synthetic videos would join real ones
        raise DatasetFormatError(f"{root} is a run of `ipoke data prepare` (it has {PREPARE_SETTINGS_FILE}); use "
                                 "another --out folder")
    if is_dataset(root):
        index = read_index(root)
        if index.get("source") != "synthetic":
            raise DatasetFormatError(f"{root} is a dataset made by {index.get('source')!r}, not by `ipoke data "
                                     "synth`; use another --out folder")
        stored = index.get("settings") or {}
        different = [key for key in sorted(set(stored) | set(recorded)) if stored.get(key) != recorded.get(key)]
        if stored and different == ["generator_version"]:
            raise DatasetFormatError(f"{root} was written by version {stored.get('generator_version', 1)} of the "
                                     f"synthetic generator and this ipoke writes version {GENERATOR_VERSION}: it "
                                     "cannot be resumed; delete it or use another --out folder")
        if stored and different:
            details = ", ".join(f"{key} {stored.get(key)!r} (this run: {recorded.get(key)!r})" for key in different)
            raise DatasetFormatError(f"{root} was generated with other settings: {details}; use the same options to "
                                     "resume, or another --out folder")
    elif (root / VIDEOS_DIR).is_dir():
        _check_videos_without_index(root, settings)
    for message in settings.empty_split_warnings():
        logger.warning("%s", message)
    fresh = not root.exists() or (root.is_dir() and not any(root.iterdir()))
    created_root = not root.exists()
    writer = DatasetWriter(root, size=settings.size, flow_lags=list(range(1, settings.frames + 1)), source="synthetic",
                           settings=recorded)
    todo = [(settings, vid, split, index, writer) for vid, split, index in _video_plan(settings)
            if not writer.has_video(vid)]
    bar = tqdm(total=settings.videos, initial=settings.videos - len(todo), desc="synthesising videos", unit="video",
               disable=not progress)
    # The index is written first, marked incomplete, so that an interrupted run is recognised (readers refuse it)
    # and resumed by running the same command again.
    writer.write_index(complete=False)
    try:
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(max_workers=workers, initializer=ignore_interrupts_in_worker) as pool:
                try:
                    for _ in pool.map(_worker, todo, chunksize=8):
                        bar.update()
                except KeyboardInterrupt:
                    stop_process_pool(pool)  # at once: the queued chunks would otherwise still run
                    raise
        else:
            for job in todo:
                _worker(job)
                bar.update()
    except BaseException:
        # Stopped before a video was finished (Ctrl-C right after a start with the wrong options): a new folder is
        # removed again, so the corrected command is not refused for "other settings".
        if fresh:
            remove_if_nothing_finished(root, created_root=created_root)
        raise
    finally:
        bar.close()
    writer.write_index()
    return root
