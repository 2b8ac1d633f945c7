"""A generated segmentation dataset whose labels need context, thin detail and several scales
("synthetic_context"), so that the architectures of a search space score apart on it.

Each image shows, on a textured background:

- ``frame``: with probability 0.75, one large ring, 0.5-0.85 of the side across and 0.06-0.10 of it thick,
  wholly in the image;
- ``inside`` / ``outside``: small disks, 0.05-0.20 of the side across (4x). A disk is ``inside`` when it lies in
  the hole of a frame and ``outside`` otherwise. Both kinds are drawn from the same size, colour and texture
  distributions and sit on the same background, so a disk and the pixels around it look the same either way:
  only the enclosing ring, which can be a third of the side away from the disk's edge, tells the class. That
  needs a receptive field (or an ASPP/context path) reaching far past the disk's own neighbourhood.
- ``line``: 0-3 strokes, straight or curved, 1-3 pixels wide, crossing the image from border to border: a
  network outlines them only with its fine (stride 4) path.

The ring is a class of its own, not background: it is the cue the ``inside`` label depends on, so asking for it
keeps the task honest (a network scored well must find the enclosure too), and it is a third scale of object,
besides the disks and the strokes; as background it would also make background a mixture of plain ground and
textured rings. Painting order: frames, then strokes (crossing the rings), then disks on top; disks never overlap
a ring or each other, and keep ``GAP`` of the side from any ring edge. Colour and texture are drawn per region
independently of the class, as in ``synthetic``.

Sample ``i`` of split ``s`` depends only on ``(seed, s, i)`` (``--synthetic_seed``), like ``synthetic``, whose
size and sample-count flags it shares.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from dataloaders.datasets.synthetic import (GeneratedSplit, ShapeSpec, SyntheticShapes, paint_regions, shape_mask,
                                            split_samples)
from dataloaders.registry import DatasetInfo, register_dataset

CLASS_NAMES = ("background", "frame", "inside", "outside", "line")
BACKGROUND, FRAME, INSIDE, OUTSIDE, LINE = range(len(CLASS_NAMES))
DISK_SHAPE = SyntheticShapes.CLASS_NAMES.index("disk")

FRAME_PROBABILITY = 0.75
FRAME_DIAMETER = (0.5, 0.85)  # outer diameter as a fraction of the side: the hole holds the largest disk
FRAME_THICKNESS = (0.06, 0.10)  # fraction of the side: thicker than any stroke from 50 pixels a side up
DISK_DIAMETER = (0.05, 0.20)
GAP = 0.03  # a disk keeps this fraction of the side from every ring edge and from other disks
INSIDE_DISKS, OUTSIDE_DISKS = (1, 3), (1, 4)  # per frame, per image: low inclusive, high exclusive
PLACEMENT_TRIES = 20  # random positions tried per disk before it is left out
LINES = (0, 4)  # strokes per image: low inclusive, high exclusive
LINE_WIDTH = (1.0, 3.0)  # pixels
CURVED_PROBABILITY, CURVE_BEND = 0.5, (0.1, 0.4)  # the control point's offset, as a fraction of the side
STROKE_STEP = 0.25  # pixels between the points a stroke is sampled at


@dataclass(frozen=True)
class Stroke:
    """A quadratic Bezier stroke: end points and control point as (y, x) pixels, width in pixels."""

    start: tuple[float, float]
    control: tuple[float, float]
    end: tuple[float, float]
    width: float


@dataclass(frozen=True)
class Frame:
    """A ring: centre and outer radius as ``ShapeSpec``'s (pixels), and its thickness (pixels). Thinner than
    ``synthetic``'s ring, so that its hole is large and a disk in it can lie far from the ring."""

    center_y: float
    center_x: float
    radius: float
    thickness: float

    @property
    def hole(self) -> float:
        """The hole's radius (pixels)."""
        return self.radius - self.thickness


@dataclass(frozen=True)
class ContextLayout:
    """What one image shows, in painting order: frames, strokes, disks (``synthetic``'s disk shapes)."""

    frames: tuple[Frame, ...]
    strokes: tuple[Stroke, ...]
    disks: tuple[ShapeSpec, ...]


def disk(center_y: float, center_x: float, radius: float) -> ShapeSpec:
    return ShapeSpec(class_id=DISK_SHAPE, center_y=center_y, center_x=center_x, radius=radius, angle=0.0)


def frame_mask(ring: Frame, height: int, width: int) -> np.ndarray:
    """Boolean [H, W] mask of the ring: its outer disk without its hole."""
    return (shape_mask(disk(ring.center_y, ring.center_x, ring.radius), height, width)
            & ~shape_mask(disk(ring.center_y, ring.center_x, ring.hole), height, width))


def _distance(shape: ShapeSpec, other: ShapeSpec | Frame) -> float:
    return float(np.hypot(shape.center_y - other.center_y, shape.center_x - other.center_x))


def enclosed(shape: ShapeSpec, frames: tuple[Frame, ...]) -> bool:
    """Whether the centre of ``shape`` lies in the hole of one of ``frames``: the rule of ``inside``."""
    return any(_distance(shape, ring) < ring.hole for ring in frames)


def stroke_mask(stroke: Stroke, height: int, width: int) -> np.ndarray:
    """Boolean [H, W] mask of the pixels whose centres lie closer than half the width to the stroke, so a straight
    stroke is at most ``ceil(width)`` pixels across."""
    nodes = np.array([stroke.start, stroke.control, stroke.end], dtype=np.float64)
    polygon_length = np.linalg.norm(np.diff(nodes, axis=0), axis=1).sum()  # bounds the curve's length
    t = np.linspace(0.0, 1.0, int(np.ceil(polygon_length / STROKE_STEP)) + 2)[:, None]
    points = (1 - t) ** 2 * nodes[0] + 2 * (1 - t) * t * nodes[1] + t**2 * nodes[2]  # [N, 2] (y, x)
    half = int(np.ceil(stroke.width / 2))
    reach = np.arange(-half, half + 1)  # the pixels around each point's own that can lie within width / 2 of it
    rows = np.floor(points[:, 0])[:, None, None] + reach[None, :, None]
    cols = np.floor(points[:, 1])[:, None, None] + reach[None, None, :]
    close = (rows + 0.5 - points[:, 0, None, None]) ** 2 + (cols + 0.5 - points[:, 1, None, None]) ** 2 \
        < (stroke.width / 2) ** 2
    rows, cols = np.broadcast_arrays(rows, cols)
    keep = close & (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    mask = np.zeros((height, width), dtype=bool)
    mask[rows[keep].astype(np.int64), cols[keep].astype(np.int64)] = True
    return mask


def labelled_regions(layout: ContextLayout, side: int) -> Iterator[tuple[np.ndarray, int]]:
    """(region, label) of every element of ``layout`` in painting order; a disk is labelled by ``enclosed``."""
    for ring in layout.frames:
        yield frame_mask(ring, side, side), FRAME
    for stroke in layout.strokes:
        yield stroke_mask(stroke, side, side), LINE
    for shape in layout.disks:
        yield shape_mask(shape, side, side), INSIDE if enclosed(shape, layout.frames) else OUTSIDE


def paint_context(layout: ContextLayout, image_size: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``layout`` with colours and textures from ``rng``: (image uint8 [H, W, 3], mask uint8 [H, W])."""
    return paint_regions(labelled_regions(layout, image_size), image_size, rng)


def _fits(candidate: ShapeSpec, frames: list[Frame], disks: list[ShapeSpec], gap: float) -> bool:
    """Whether a disk stays ``gap`` pixels clear of every ring edge (wholly in a hole or wholly outside a ring) and
    of every other disk."""
    for ring in frames:
        distance = _distance(candidate, ring)
        in_hole = distance + candidate.radius + gap <= ring.hole
        if not in_hole and distance - candidate.radius - gap < ring.radius:
            return False
    return all(_distance(candidate, other) >= candidate.radius + other.radius + gap for other in disks)


def _draw_stroke(rng: np.random.Generator, side: int) -> Stroke:
    """A stroke from one image border to the opposite one, straight or bent by a random control point."""
    start, end = np.array([0.0, rng.uniform(0, side)]), np.array([float(side), rng.uniform(0, side)])
    if rng.uniform() < 0.5:  # half the strokes run from left to right instead of top to bottom
        start, end = start[::-1], end[::-1]
    control = (start + end) / 2
    if rng.uniform() < CURVED_PROBABILITY:
        normal = np.array([end[1] - start[1], start[0] - end[0]]) / max(float(np.linalg.norm(end - start)), 1e-6)
        control = control + normal * rng.choice((-1, 1)) * rng.uniform(*CURVE_BEND) * side
    return Stroke(start=tuple(start.tolist()), control=tuple(control.tolist()), end=tuple(end.tolist()),
                  width=float(rng.uniform(*LINE_WIDTH)))


def _place_disks(rng: np.random.Generator, count: int, position: Callable[[float], tuple[float, float]],
                 frames: list[Frame], disks: list[ShapeSpec], side: int) -> None:
    """Append up to ``count`` disks of random sizes, centred by ``position(radius)``, where they fit."""
    for _ in range(count):
        for _ in range(PLACEMENT_TRIES):
            radius = float(rng.uniform(*DISK_DIAMETER) * side / 2)
            candidate = disk(*position(radius), radius)
            if _fits(candidate, frames, disks, GAP * side):
                disks.append(candidate)
                break


def _in_hole(rng: np.random.Generator, ring: Frame, radius: float, gap: float) -> tuple[float, float]:
    """A centre, uniform in area, for a disk of ``radius`` wholly in the hole of ``ring``, ``gap`` from its edge."""
    reach = max(ring.hole - radius - gap, 0.0) * np.sqrt(rng.uniform())
    angle = rng.uniform(0, 2 * np.pi)
    return float(ring.center_y + reach * np.sin(angle)), float(ring.center_x + reach * np.cos(angle))


def _in_image(rng: np.random.Generator, radius: float, side: int) -> tuple[float, float]:
    center = rng.uniform(radius, side - radius, size=2)
    return float(center[0]), float(center[1])


def draw_layout(rng: np.random.Generator, side: int) -> ContextLayout:
    """A random layout: a frame holding 1-2 disks (probability ``FRAME_PROBABILITY``), 1-3 more disks anywhere
    they fit (outside the frame, or now and then in its hole), and 0-3 strokes."""
    frames: list[Frame] = []
    if rng.uniform() < FRAME_PROBABILITY:
        radius = float(rng.uniform(*FRAME_DIAMETER) * side / 2)
        frames.append(Frame(*_in_image(rng, radius, side), radius, float(rng.uniform(*FRAME_THICKNESS) * side)))
    disks: list[ShapeSpec] = []
    for ring in frames:
        _place_disks(rng, int(rng.integers(*INSIDE_DISKS)), lambda radius: _in_hole(rng, ring, radius, GAP * side),
                     frames, disks, side)
    _place_disks(rng, int(rng.integers(*OUTSIDE_DISKS)), lambda radius: _in_image(rng, radius, side), frames, disks,
                 side)
    strokes = tuple(_draw_stroke(rng, side) for _ in range(rng.integers(*LINES)))
    return ContextLayout(frames=tuple(frames), strokes=strokes, disks=tuple(disks))


class SyntheticContext(GeneratedSplit):
    """A split of ``synthetic_context``; ``load(i)`` gives (image uint8 [H, W, 3], mask uint8 [H, W])."""

    name = "synthetic_context"
    class_names = CLASS_NAMES

    def layout(self, index: int) -> ContextLayout:
        rng, _ = self.rngs(index)
        return draw_layout(rng, self.image_size)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        _, appearance_rng = self.rngs(index)
        return paint_context(self.layout(index), self.image_size, appearance_rng)


def make_synthetic_context_source(split: str, args: argparse.Namespace) -> SyntheticContext:
    """Sized by ``synthetic``'s flags (--synthetic_size, --synthetic_{train,val}_samples, --synthetic_seed)."""
    return SyntheticContext(split, split_samples(split, args), args.synthetic_size, args.synthetic_seed)


register_dataset(DatasetInfo(
    name="synthetic_context",
    num_classes=len(CLASS_NAMES),
    default_num_classes=len(CLASS_NAMES),
    make_source=make_synthetic_context_source,
    splits=("train", "val", "test"),
))
