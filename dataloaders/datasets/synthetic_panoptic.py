"""A generated panoptic dataset ("synthetic_panoptic"): the data of the Auto-Panoptic scale-down
(shared/reference/autopanoptic.md §9), needing no download.

Each image is 2-3 horizontal stuff bands with wavy borders (sky, grass, water: each its own colour family and
texture, so stuff is told apart by appearance) under 1-5 thing instances whose class is their SHAPE (disk,
square, triangle; colour and texture drawn per instance, as in ``synthetic``), painted in order so that later
instances occlude earlier ones. Some images hold a crowd region (a cluster of small shapes of one class: one
segment with ``iscrowd`` 1), and some a void border of a few pixels (id 0: the pixels keep their content but
carry no label, like unlabelled pixels in COCO).

Sample ``i`` of split ``s`` depends only on ``(seed, s, i)`` (``--synthetic_seed``), like ``synthetic``, whose
size and sample-count flags it shares.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from dataloaders.datasets.synthetic import (OBJECT_AMPLITUDE, OBJECT_PATTERNS, PIXEL_NOISE_STD, SPLIT_IDS, ShapeSpec,
                                            SyntheticShapes, pick_colour, textured, shape_mask)
from dataloaders.panoptic import semantic_class_names, segments_info, stuff_category_ids
from dataloaders.registry import DatasetInfo, register_dataset
from utils.errors import UserError

THING_SHAPES = ("disk", "square", "triangle")  # thing category ids 1..3, shapes of ``synthetic``
# Stuff category ids 4..6: (name, mean colour, texture pattern); the colour varies by COLOUR_JITTER per image.
STUFF_LOOKS = (("sky", (125.0, 175.0, 235.0), "gradient"),
               ("grass", (70.0, 145.0, 45.0), "blobs"),
               ("water", (25.0, 95.0, 125.0), "stripes"))
CATEGORIES = tuple([{"id": index, "name": name, "isthing": 1} for index, name in enumerate(THING_SHAPES, start=1)]
                   + [{"id": index, "name": name, "isthing": 0}
                      for index, (name, _, _) in enumerate(STUFF_LOOKS, start=len(THING_SHAPES) + 1)])
STUFF_IDS = tuple(stuff_category_ids(CATEGORIES))
COLOUR_JITTER, STUFF_AMPLITUDE = 20.0, 30.0
MIN_BANDS, MAX_BANDS = 2, 3
BORDER_WAVE = 0.04  # amplitude of a band border's wave, as a fraction of the side
MIN_THINGS, MAX_THINGS = 1, 5
MIN_DIAMETER, MAX_DIAMETER = 0.15, 0.40  # thing size as a fraction of the side
CENTER_MARGIN = 0.1
CROWD_PROBABILITY, CROWD_MEMBERS = 0.25, (4, 8)  # members: low inclusive, high exclusive
CROWD_SPREAD, CROWD_DIAMETER = 0.12, (0.06, 0.10)  # members lie within this fraction of the side of the centre
VOID_BORDER_PROBABILITY, VOID_BORDER_WIDTH = 0.5, (2, 5)  # pixels: low inclusive, high exclusive


def _stuff_bands(rng: np.random.Generator, side: int) -> list[tuple[int, np.ndarray]]:
    """(stuff category id, region) of 2-3 bands from top to bottom, each a different category."""
    count = int(rng.integers(MIN_BANDS, MAX_BANDS + 1))
    stuff_ids = [STUFF_IDS[k] for k in rng.permutation(len(STUFF_IDS))[:count]]
    shares = 0.5 + rng.uniform(size=count)  # every band keeps at least a ninth of the image height
    borders = np.cumsum(shares / shares.sum())[:-1] * side
    xs = np.arange(side, dtype=np.float32)
    ys = np.arange(side, dtype=np.float32)[:, None] + 0.5
    band = np.zeros((side, side), dtype=np.int64)
    for border in borders:
        wave = BORDER_WAVE * side * np.sin(2 * np.pi * (rng.uniform(0.5, 2.0) * xs / side + rng.uniform()))
        band += ys >= border + wave[None, :]
    return [(stuff_id, band == position) for position, stuff_id in enumerate(stuff_ids)]


def _random_shape(rng: np.random.Generator, thing: int, center: tuple[float, float],
                  diameter: tuple[float, float], side: int) -> ShapeSpec:
    """A ``synthetic`` shape of thing category ``thing`` (1..3) at ``center`` (pixels)."""
    return ShapeSpec(class_id=SyntheticShapes.CLASS_NAMES.index(THING_SHAPES[thing - 1]),
                     center_y=center[0], center_x=center[1],
                     radius=float(rng.uniform(*diameter) * side / 2), angle=float(rng.uniform(0, 2 * np.pi)))


def _random_center(rng: np.random.Generator, side: int) -> tuple[float, float]:
    return (float(rng.uniform(CENTER_MARGIN, 1 - CENTER_MARGIN) * side),
            float(rng.uniform(CENTER_MARGIN, 1 - CENTER_MARGIN) * side))


def generate(rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """One image: (uint8 [side, side, 3], segment ids int32 [side, side], segments_info records).

    Ids count up in painting order (bands, the crowd, the instances); a segment painted over entirely, or
    hidden by the void border, is not listed.
    """
    image = np.zeros((side, side, 3), dtype=np.float32)
    ids = np.zeros((side, side), dtype=np.int32)
    labels: dict[int, tuple[int, int]] = {}
    used_colours = []

    def paint(region: np.ndarray, category_id: int, iscrowd: int, texture: np.ndarray) -> None:
        segment_id = len(labels) + 1
        labels[segment_id] = (category_id, iscrowd)
        image[region] = texture[region]
        ids[region] = segment_id

    for stuff_id, region in _stuff_bands(rng, side):
        _, colour, pattern = STUFF_LOOKS[STUFF_IDS.index(stuff_id)]
        base = np.asarray(colour, dtype=np.float32) + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3).astype(np.float32)
        used_colours.append(base)
        paint(region, stuff_id, 0, textured(rng, base, (pattern,), STUFF_AMPLITUDE, side, side))

    def thing_texture() -> np.ndarray:
        base = pick_colour(rng, used_colours)
        used_colours.append(base)
        return textured(rng, base, OBJECT_PATTERNS, OBJECT_AMPLITUDE, side, side)

    if rng.uniform() < CROWD_PROBABILITY:
        thing = int(rng.integers(1, len(THING_SHAPES) + 1))
        center_y, center_x = _random_center(rng, side)
        crowd = np.zeros((side, side), dtype=bool)
        crowd_texture = np.zeros((side, side, 3), dtype=np.float32)
        for _ in range(rng.integers(*CROWD_MEMBERS)):
            offset = rng.uniform(-CROWD_SPREAD, CROWD_SPREAD, size=2) * side
            member = shape_mask(_random_shape(rng, thing, (center_y + offset[0], center_x + offset[1]),
                                              CROWD_DIAMETER, side), side, side)
            crowd_texture[member] = thing_texture()[member]
            crowd |= member
        paint(crowd, thing, 1, crowd_texture)

    for _ in range(rng.integers(MIN_THINGS, MAX_THINGS + 1)):
        thing = int(rng.integers(1, len(THING_SHAPES) + 1))
        shape = _random_shape(rng, thing, _random_center(rng, side), (MIN_DIAMETER, MAX_DIAMETER), side)
        paint(shape_mask(shape, side, side), thing, 0, thing_texture())

    if rng.uniform() < VOID_BORDER_PROBABILITY:
        width = int(rng.integers(*VOID_BORDER_WIDTH))
        inside = np.zeros((side, side), dtype=bool)
        inside[width:-width, width:-width] = True
        ids[~inside] = 0
    image += rng.normal(0, PIXEL_NOISE_STD, size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), ids, segments_info(ids, labels)


class SyntheticPanoptic:
    """The generated panoptic dataset's split; samples are regenerated on every ``load``."""

    class_names = semantic_class_names(CATEGORIES)

    def __init__(self, split: str, num_samples: int, image_size: int, seed: int) -> None:
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
        if image_size < 1 or num_samples < 1:
            raise ValueError(f"image_size and num_samples must be positive, got {image_size} and {num_samples}")
        self.categories = [dict(category) for category in CATEGORIES]
        self.split = split
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} out of range for {self.num_samples} samples")
        sequence = np.random.SeedSequence([self.seed, SPLIT_IDS[self.split], index])
        return generate(np.random.default_rng(sequence), self.image_size)

    def segments(self, index: int) -> list[dict[str, Any]]:
        """The records need the painted map (occlusion decides areas and boxes), so the sample is generated."""
        return self.load(index)[2]

    def describe(self, index: int) -> str:
        return f"synthetic_panoptic {self.split} sample {index}"

    def image_id(self, index: int) -> int:
        return index

    def check(self, num_classes: int | None = None) -> None:
        """Generated samples are valid by construction; only the class count can be wrong."""
        if num_classes not in (None, len(self.class_names)):
            raise UserError(f"--num_classes {num_classes}: synthetic_panoptic has {len(self.class_names)} semantic "
                            f"classes (things and {len(self.class_names) - 1} stuff categories)")


def make_synthetic_panoptic_source(split: str, args: argparse.Namespace) -> SyntheticPanoptic:
    """Sized by ``synthetic``'s flags (--synthetic_size, --synthetic_{train,val}_samples, --synthetic_seed)."""
    num_samples = args.synthetic_train_samples if split == "train" else args.synthetic_val_samples
    return SyntheticPanoptic(split, num_samples, args.synthetic_size, args.synthetic_seed)


register_dataset(DatasetInfo(
    name="synthetic_panoptic",
    num_classes=len(SyntheticPanoptic.class_names),  # semantic classes: things merged + 3 stuff
    default_num_classes=len(SyntheticPanoptic.class_names),
    make_source=make_synthetic_panoptic_source,
    splits=("train", "val", "test"),
    tasks=("panoptic",),
))
