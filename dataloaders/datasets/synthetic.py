"""A procedurally generated segmentation dataset that needs no download ("synthetic").

Each image shows 1-4 textured shapes on a textured background. The label of an object is its
SHAPE alone: colour and texture are drawn per object independently of the class, so a network
has to look at spatial context rather than at single pixels, which is what the architecture
search is meant to exploit. Objects are painted in order, so later objects occlude earlier ones
and the mask shows the top-most object at every pixel.

Sample ``i`` of split ``s`` depends only on ``(seed, s, i)``: any sample can be regenerated on
its own, in any worker, in any order, and the splits are disjoint random streams.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from utils.flags import add_flag, non_negative_int, positive_int
from dataloaders.registry import DatasetInfo, register_dataset, resolve_num_classes
from utils.errors import UserError

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

MIN_OBJECTS, MAX_OBJECTS = 1, 4
MIN_DIAMETER, MAX_DIAMETER = 0.15, 0.60  # object size as a fraction of the image side
CENTER_MARGIN = 0.1  # object centres keep this fraction of the side away from the border
# How far (in 0..255 levels) a texture strays from its base colour, and which patterns it uses.
# Backgrounds get no checks: a checkerboard is made of squares, a shape class.
BACKGROUND_AMPLITUDE, BACKGROUND_PATTERNS = 40.0, ("stripes", "gradient", "blobs")
OBJECT_AMPLITUDE, OBJECT_PATTERNS = 40.0, ("flat", "stripes", "gradient", "checks", "blobs")
MIN_COLOUR_DISTANCE = 90.0  # base colour distance from the background and earlier objects
COLOUR_CANDIDATES = 16
PIXEL_NOISE_STD = 4.0


@dataclass(frozen=True)
class ShapeSpec:
    """Where one object is painted: class, centre (pixels), radius (pixels), rotation (radians)."""

    class_id: int
    center_y: float
    center_x: float
    radius: float
    angle: float


def _disk(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.8


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    inside = np.ones(u.shape, dtype=bool)
    for edge_angle in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6):  # outward normals of the edges
        inside &= u * np.cos(edge_angle) + v * np.sin(edge_angle) <= 0.55
    return inside


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    squared = u * u + v * v
    return (squared <= 1.0) & (squared >= 0.55**2)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    abs_u, abs_v = np.abs(u), np.abs(v)
    return ((abs_u <= 0.3) & (abs_v <= 1.0)) | ((abs_v <= 0.3) & (abs_u <= 1.0))


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    turns = (np.arctan2(v, u) * 5 / (2 * np.pi)) % 1.0
    tip_closeness = np.abs(2 * turns - 1)  # 1 on a point of the star, 0 between two points
    return np.hypot(u, v) <= 0.4 + 0.6 * tip_closeness


def _ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + (v / 0.5) ** 2 <= 1.0


# Shapes in class-id order (class 0 is the background); ``num_classes=k`` uses the first k-1, so
# the most distinct shapes come first (a small CNN tells disk/ring/cross apart in ~200 steps).
_SHAPES = (
    ("disk", _disk),
    ("ring", _ring),
    ("cross", _cross),
    ("triangle", _triangle),
    ("square", _square),
    ("star", _star),
    ("ellipse", _ellipse),
)


def shape_mask(shape: ShapeSpec, height: int, width: int) -> np.ndarray:
    """Boolean [H, W] mask of the pixels (sampled at their centres) that ``shape`` covers."""
    ys = np.arange(height, dtype=np.float32)[:, None] + 0.5 - shape.center_y
    xs = np.arange(width, dtype=np.float32)[None, :] + 0.5 - shape.center_x
    cos, sin = np.cos(shape.angle), np.sin(shape.angle)
    u = (xs * cos + ys * sin) / shape.radius  # the shape's own frame, radius 1
    v = (ys * cos - xs * sin) / shape.radius
    _, inside = _SHAPES[shape.class_id - 1]
    return inside(u, v)


def _upsample_bilinear(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Stretch a small [h, w] grid over [height, width] (corners aligned) for smooth blobs."""
    def axis(size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
        position = np.linspace(0.0, cells - 1.0, size, dtype=np.float32)
        low = np.minimum(position.astype(np.int64), cells - 2)
        return low, position - low

    row, row_weight = axis(height, grid.shape[0])
    col, col_weight = axis(width, grid.shape[1])
    top = grid[row][:, col] * (1 - col_weight) + grid[row][:, col + 1] * col_weight
    bottom = grid[row + 1][:, col] * (1 - col_weight) + grid[row + 1][:, col + 1] * col_weight
    return top * (1 - row_weight[:, None]) + bottom * row_weight[:, None]


def _pattern(rng: np.random.Generator, kinds: tuple[str, ...], height: int,
             width: int) -> np.ndarray:
    """A random [H, W] pattern in [-1, 1]: flat, stripes, gradient, checks or blobs."""
    kind = kinds[rng.integers(len(kinds))]
    if kind == "flat":
        return np.zeros((height, width), dtype=np.float32)
    if kind == "blobs":
        cells = rng.integers(3, 7, size=2)
        return _upsample_bilinear(rng.uniform(-1, 1, size=cells).astype(np.float32), height, width)
    side = max(height, width)
    ys = np.arange(height, dtype=np.float32)[:, None] / side
    xs = np.arange(width, dtype=np.float32)[None, :] / side
    angle = rng.uniform(0, np.pi)
    along = xs * np.cos(angle) + ys * np.sin(angle)
    if kind == "stripes":
        return np.sin(2 * np.pi * rng.uniform(2, 8) * along + rng.uniform(0, 2 * np.pi))
    if kind == "gradient":
        return 2 * (along - along.min()) / max(float(np.ptp(along)), 1e-6) - 1
    across = ys * np.cos(angle) - xs * np.sin(angle)
    frequency = rng.uniform(2, 6)
    return np.sign(np.sin(2 * np.pi * frequency * along) * np.sin(2 * np.pi * frequency * across))


def pick_colour(rng: np.random.Generator, used: list[np.ndarray]) -> np.ndarray:
    """A random base colour, kept away from the colours already on the canvas for contrast."""
    candidates = rng.uniform(0, 255, size=(COLOUR_CANDIDATES, 3)).astype(np.float32)
    distances = np.linalg.norm(candidates[:, None, :] - np.stack(used)[None], axis=-1).min(axis=1)
    far_enough = distances >= MIN_COLOUR_DISTANCE
    return candidates[np.argmax(far_enough) if far_enough.any() else np.argmax(distances)]


def textured(rng: np.random.Generator, base: np.ndarray, kinds: tuple[str, ...],
             amplitude: float, height: int, width: int) -> np.ndarray:
    """A float [H, W, 3] texture: a random pattern modulating ``base`` along a random tint."""
    tint = rng.uniform(-amplitude, amplitude, size=3).astype(np.float32)
    return base + _pattern(rng, kinds, height, width)[:, :, None] * tint


def paint_regions(regions: Iterable[tuple[np.ndarray, int]], image_size: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint each (boolean [H, W] region, label) in order on a textured background, every region with its own
    colour and texture from ``rng`` whatever its label, so that appearance never tells the class.

    Returns (image uint8 [H, W, 3], mask uint8 [H, W]); a later region overwrites both the pixels
    and the labels of the ones below it.
    """
    side = image_size
    background = rng.uniform(0, 255, size=3).astype(np.float32)
    image = textured(rng, background, BACKGROUND_PATTERNS, BACKGROUND_AMPLITUDE, side, side)
    mask = np.zeros((side, side), dtype=np.uint8)
    used_colours = [background]
    for covered, label in regions:
        base = pick_colour(rng, used_colours)
        used_colours.append(base)
        texture = textured(rng, base, OBJECT_PATTERNS, OBJECT_AMPLITUDE, side, side)
        image[covered] = texture[covered]
        mask[covered] = label
    image += rng.normal(0, PIXEL_NOISE_STD, size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def paint(layout: list[ShapeSpec], image_size: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``layout`` in order (the last shape on top), each shape labelled with its class."""
    return paint_regions(((shape_mask(shape, image_size, image_size), shape.class_id) for shape in layout),
                         image_size, rng)


class GeneratedSplit:
    """One split of a generated dataset: sample ``i`` depends only on ``(seed, split, i)``, so any sample can be
    regenerated on its own, in any worker, in any order, and the splits are disjoint random streams."""

    name: str  # the dataset's registered name, for messages

    def __init__(self, split: str, num_samples: int, image_size: int, seed: int) -> None:
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
        if image_size < 1 or num_samples < 1:
            raise ValueError(f"image_size and num_samples must be positive, got {image_size} "
                             f"and {num_samples}")
        self.split = split
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def seed_sequence(self, index: int) -> np.random.SeedSequence:
        """The entropy of sample ``index``: (seed, split, index) and nothing else."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} out of range for {self.num_samples} samples")
        return np.random.SeedSequence([self.seed, SPLIT_IDS[self.split], index])

    def rngs(self, index: int) -> tuple[np.random.Generator, np.random.Generator]:
        """Independent (layout, appearance) streams of one sample."""
        layout, appearance = (np.random.default_rng(child) for child in self.seed_sequence(index).spawn(2))
        return layout, appearance

    def describe(self, index: int) -> str:
        return f"{self.name} {self.split} sample {index}"

    def check(self, num_classes: int | None = None) -> None:
        """Nothing to check: generated samples are valid by construction."""


class SyntheticShapes(GeneratedSplit):
    """Procedural shapes dataset; ``load(i)`` gives (image uint8 [H, W, 3], mask uint8 [H, W])."""

    name = "synthetic"
    CLASS_NAMES: tuple[str, ...] = ("background",) + tuple(name for name, _ in _SHAPES)
    MAX_CLASSES = len(CLASS_NAMES)

    def __init__(self, split: str, num_samples: int, image_size: int, num_classes: int,
                 seed: int) -> None:
        if not 2 <= num_classes <= self.MAX_CLASSES:
            raise UserError(f"--num_classes: the synthetic dataset has 2..{self.MAX_CLASSES} "
                            f"classes, got {num_classes}")
        super().__init__(split, num_samples, image_size, seed)
        self.num_classes = num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.CLASS_NAMES[: self.num_classes]

    def layout(self, index: int) -> list[ShapeSpec]:
        """The objects of sample ``index`` in painting order (the last one is on top)."""
        rng, _ = self.rngs(index)
        side = self.image_size
        shapes = []
        for _ in range(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1)):
            shapes.append(ShapeSpec(
                class_id=int(rng.integers(1, self.num_classes)),
                center_y=float(rng.uniform(CENTER_MARGIN, 1 - CENTER_MARGIN) * side),
                center_x=float(rng.uniform(CENTER_MARGIN, 1 - CENTER_MARGIN) * side),
                radius=float(rng.uniform(MIN_DIAMETER, MAX_DIAMETER) * side / 2),
                angle=float(rng.uniform(0, 2 * np.pi)),
            ))
        return shapes

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        _, appearance_rng = self.rngs(index)
        return paint(self.layout(index), self.image_size, appearance_rng)


def add_synthetic_arguments(group: argparse._ArgumentGroup) -> None:
    add_flag(group, "synthetic_size", type=positive_int, default=96,
             help="image side in pixels (default: %(default)s)")
    add_flag(group, "synthetic_train_samples", type=positive_int, default=400, locked=True,
             help="training images (default: %(default)s)")
    add_flag(group, "synthetic_val_samples", type=positive_int, default=100,
             help="validation images (default: %(default)s)")
    add_flag(group, "synthetic_seed", type=non_negative_int, default=0, locked=True,
             help="seed of the generated images (default: %(default)s)")


def split_samples(split: str, args: argparse.Namespace) -> int:
    """How many samples ``split`` has under the synthetic flags, which every generated dataset shares (the test
    split is as long as the validation one)."""
    return args.synthetic_train_samples if split == "train" else args.synthetic_val_samples


def make_synthetic_source(split: str, args: argparse.Namespace) -> SyntheticShapes:
    return SyntheticShapes(split, split_samples(split, args), args.synthetic_size, resolve_num_classes(args),
                           args.synthetic_seed)


register_dataset(DatasetInfo(
    name="synthetic",
    num_classes=None,
    default_num_classes=4,  # background, disk, ring, cross: learnable in minutes on CPU
    make_source=make_synthetic_source,
    splits=("train", "val", "test"),
    add_arguments=add_synthetic_arguments,
))
