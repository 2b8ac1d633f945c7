"""Generated panoptic datasets ("synthetic_panoptic", "synthetic_panoptic_context"): the data of the
Auto-Panoptic scale-down (the synthetic_panoptic recipes of config_utils/recipes.py), needing no download.

Each image is 2-3 horizontal stuff bands with wavy borders under 1-5 thing instances whose class is their SHAPE
(disk, square, triangle; colour and texture drawn per instance, as in ``synthetic``), painted in order so that
later instances occlude earlier ones. Some images hold a crowd region (a cluster of small shapes of one class:
one segment with ``iscrowd`` 1), and some a void border of a few pixels (id 0: the pixels keep their content but
carry no label, like unlabelled pixels in COCO).

The two datasets differ by their ``PanopticLook``:

- ``synthetic_panoptic``: the bands are sky, grass and water in a random order, each with its own colour family
  and texture, so stuff is told apart by appearance; things are 0.15-0.40 of the side across.
- ``synthetic_panoptic_context``: every band's colour and texture come from one distribution, and its category
  from its place in the top-to-bottom order alone (top ``sky``, bottom ``ground``, a middle one ``water``), so
  stuff is told apart by layout, which needs context across the image; things are 0.06-0.40 of the side across
  (more than 6x), so small instances need the fine levels of the feature pyramid and large ones the coarse.
  Bands are muted (near-grey) and things saturated, so what is a thing is plain and the work is in the layout,
  the scales and the shapes: with colours from one distribution for both, a small detector found no instance
  above the 0.5 confidence of the panoptic merge within 480 iterations (things PQ 0), and PQ measured stuff alone.

Sample ``i`` of split ``s`` depends only on ``(seed, s, i)`` (``--synthetic_seed``), like ``synthetic``, whose
size and sample-count flags they share.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dataloaders.datasets.synthetic import (BACKGROUND_PATTERNS, COLOUR_CANDIDATES, MIN_COLOUR_DISTANCE,
                                            OBJECT_AMPLITUDE, OBJECT_PATTERNS, PIXEL_NOISE_STD, GeneratedSplit,
                                            ShapeSpec, SyntheticShapes, pick_colour, shape_mask, split_samples,
                                            textured)
from dataloaders.panoptic import segments_info, semantic_class_names
from dataloaders.registry import DatasetInfo, register_dataset
from utils.errors import UserError

THING_SHAPES = ("disk", "square", "triangle")  # thing category ids 1..3, shapes of ``synthetic``
# synthetic_panoptic's stuff: (name, mean colour, texture pattern); the colour varies by COLOUR_JITTER per image.
STUFF_LOOKS = (("sky", (125.0, 175.0, 235.0), "gradient"),
               ("grass", (70.0, 145.0, 45.0), "blobs"),
               ("water", (25.0, 95.0, 125.0), "stripes"))
# synthetic_panoptic_context's stuff, named by where a band lies: the band categories of an image of 2 or 3 bands,
# top to bottom.
LAYOUT_STUFF = ("sky", "water", "ground")
BANDS_BY_COUNT = {2: ("sky", "ground"), 3: ("sky", "water", "ground")}
COLOUR_JITTER, STUFF_AMPLITUDE = 20.0, 30.0
# synthetic_panoptic_context's colours: stuff near-grey (a grey level, each channel within the jitter of it, bands
# at least MIN_GREY_DISTANCE apart), things vivid (one channel in VIVID_HIGH, one in VIVID_LOW).
MUTED_GREY, MUTED_JITTER, MIN_GREY_DISTANCE = (30.0, 225.0), 12.0, 40.0
VIVID_HIGH, VIVID_LOW = (190.0, 255.0), (0.0, 50.0)
MIN_BANDS, MAX_BANDS = 2, 3
BORDER_WAVE = 0.04  # amplitude of a band border's wave, as a fraction of the side
MIN_THINGS, MAX_THINGS = 1, 5
CENTER_MARGIN = 0.1
CROWD_PROBABILITY, CROWD_MEMBERS = 0.25, (4, 8)  # members: low inclusive, high exclusive
CROWD_SPREAD, CROWD_DIAMETER = 0.12, (0.06, 0.10)  # members lie within this fraction of the side of the centre
VOID_BORDER_PROBABILITY, VOID_BORDER_WIDTH = 0.5, (2, 5)  # pixels: low inclusive, high exclusive


BandCategories = Callable[[np.random.Generator, int], list[int]]
ThingColour = Callable[[np.random.Generator, list[np.ndarray]], np.ndarray]
BandTexture = Callable[[np.random.Generator, int, list[np.ndarray], int], np.ndarray]


@dataclass(frozen=True)
class PanopticLook:
    """What sets one generated panoptic dataset apart from another: its stuff categories, how a band gets its
    category and its texture, and how large its things are.

    ``band_categories(rng, count)`` gives the stuff positions (in ``stuff_names``) of ``count`` bands from top to
    bottom; ``band_texture(rng, position, used_colours, side)`` a float [side, side, 3] texture for a band of stuff
    ``position``, appending its base colour to ``used_colours`` (which things keep away from);
    ``thing_colour(rng, used_colours)`` a thing's base colour.
    """

    name: str
    stuff_names: tuple[str, ...]
    band_categories: BandCategories
    band_texture: BandTexture
    thing_diameter: tuple[float, float]  # low, high: thing size as a fraction of the side
    thing_colour: ThingColour = pick_colour  # (rng, colours on the canvas) -> a thing's base colour

    @property
    def categories(self) -> tuple[dict[str, Any], ...]:
        """Things 1..3 (``THING_SHAPES``), then the stuff in ``stuff_names``' order."""
        names = [(name, 1) for name in THING_SHAPES] + [(name, 0) for name in self.stuff_names]
        return tuple({"id": index, "name": name, "isthing": isthing}
                     for index, (name, isthing) in enumerate(names, start=1))

    @property
    def class_names(self) -> tuple[str, ...]:
        return semantic_class_names(self.categories)

    def stuff_id(self, position: int) -> int:
        """The category id of stuff ``position``."""
        return len(THING_SHAPES) + 1 + position


def _categories_at_random(rng: np.random.Generator, count: int) -> list[int]:
    return [int(position) for position in rng.permutation(len(STUFF_LOOKS))[:count]]


def _texture_of_its_family(rng: np.random.Generator, position: int, used_colours: list[np.ndarray],
                           side: int) -> np.ndarray:
    _, colour, pattern = STUFF_LOOKS[position]
    base = np.asarray(colour, dtype=np.float32) + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3).astype(np.float32)
    used_colours.append(base)
    return textured(rng, base, (pattern,), STUFF_AMPLITUDE, side, side)


def _categories_by_position(rng: np.random.Generator, count: int) -> list[int]:
    return [LAYOUT_STUFF.index(name) for name in BANDS_BY_COUNT[count]]


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    """A near-grey colour: one grey level, each channel off it by at most MUTED_JITTER."""
    return (rng.uniform(*MUTED_GREY) + rng.uniform(-MUTED_JITTER, MUTED_JITTER, size=3)).astype(np.float32)


def _texture_of_any_band(rng: np.random.Generator, position: int, used_colours: list[np.ndarray],
                         side: int) -> np.ndarray:
    """The same muted distribution for every stuff category, kept apart in grey level from the bands above it."""
    candidates = [_muted_colour(rng) for _ in range(COLOUR_CANDIDATES)]
    base = next((colour for colour in candidates
                 if all(abs(colour.mean() - used.mean()) >= MIN_GREY_DISTANCE for used in used_colours)),
                candidates[0])
    used_colours.append(base)
    return textured(rng, base, BACKGROUND_PATTERNS, STUFF_AMPLITUDE, side, side)


def _saturated_colour(rng: np.random.Generator, used_colours: list[np.ndarray]) -> np.ndarray:
    """A vivid colour (one channel high, one low, the third anywhere), kept away from the colours on the canvas."""
    candidates = []
    for _ in range(COLOUR_CANDIDATES):
        high, low, free = rng.permutation(3)
        colour = np.empty(3, dtype=np.float32)
        colour[high], colour[low], colour[free] = rng.uniform(*VIVID_HIGH), rng.uniform(*VIVID_LOW), rng.uniform(0, 255)
        candidates.append(colour)
    distances = [min(float(np.linalg.norm(colour - used)) for used in used_colours) for colour in candidates]
    return candidates[int(np.argmax(np.asarray(distances) >= MIN_COLOUR_DISTANCE))
                      if max(distances) >= MIN_COLOUR_DISTANCE else int(np.argmax(distances))]


STUFF_BY_APPEARANCE = PanopticLook("synthetic_panoptic", tuple(name for name, _, _ in STUFF_LOOKS),
                                   _categories_at_random, _texture_of_its_family, thing_diameter=(0.15, 0.40))
STUFF_BY_LAYOUT = PanopticLook("synthetic_panoptic_context", LAYOUT_STUFF, _categories_by_position,
                               _texture_of_any_band, thing_diameter=(0.06, 0.40), thing_colour=_saturated_colour)


def _stuff_bands(rng: np.random.Generator, side: int, look: PanopticLook) -> list[tuple[int, np.ndarray]]:
    """(stuff position, region) of 2-3 bands from top to bottom, each a different category."""
    count = int(rng.integers(MIN_BANDS, MAX_BANDS + 1))
    positions = look.band_categories(rng, count)
    shares = 0.5 + rng.uniform(size=count)  # every band keeps at least a ninth of the image height
    borders = np.cumsum(shares / shares.sum())[:-1] * side
    xs = np.arange(side, dtype=np.float32)
    ys = np.arange(side, dtype=np.float32)[:, None] + 0.5
    band = np.zeros((side, side), dtype=np.int64)
    for border in borders:
        wave = BORDER_WAVE * side * np.sin(2 * np.pi * (rng.uniform(0.5, 2.0) * xs / side + rng.uniform()))
        band += ys >= border + wave[None, :]
    return [(stuff, band == order) for order, stuff in enumerate(positions)]


def _random_shape(rng: np.random.Generator, thing: int, center: tuple[float, float],
                  diameter: tuple[float, float], side: int) -> ShapeSpec:
    """A ``synthetic`` shape of thing category ``thing`` (1..3) at ``center`` (pixels)."""
    return ShapeSpec(class_id=SyntheticShapes.CLASS_NAMES.index(THING_SHAPES[thing - 1]),
                     center_y=center[0], center_x=center[1],
                     radius=float(rng.uniform(*diameter) * side / 2), angle=float(rng.uniform(0, 2 * np.pi)))


def _random_center(rng: np.random.Generator, side: int) -> tuple[float, float]:
    return (float(rng.uniform(CENTER_MARGIN, 1 - CENTER_MARGIN) * side),
            float(rng.uniform(CENTER_MARGIN, 1 - CENTER_MARGIN) * side))


def generate(rng: np.random.Generator, side: int,
             look: PanopticLook = STUFF_BY_APPEARANCE) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """One image of ``look``: (uint8 [side, side, 3], segment ids int32 [side, side], segments_info records).

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

    for stuff, region in _stuff_bands(rng, side, look):
        paint(region, look.stuff_id(stuff), 0, look.band_texture(rng, stuff, used_colours, side))

    def thing_texture() -> np.ndarray:
        base = look.thing_colour(rng, used_colours)
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
        shape = _random_shape(rng, thing, _random_center(rng, side), look.thing_diameter, side)
        paint(shape_mask(shape, side, side), thing, 0, thing_texture())

    if rng.uniform() < VOID_BORDER_PROBABILITY:
        width = int(rng.integers(*VOID_BORDER_WIDTH))
        inside = np.zeros((side, side), dtype=bool)
        inside[width:-width, width:-width] = True
        ids[~inside] = 0
    image += rng.normal(0, PIXEL_NOISE_STD, size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), ids, segments_info(ids, labels)


class SyntheticPanoptic(GeneratedSplit):
    """A split of the generated panoptic dataset ``look`` names; samples are regenerated on every ``load``."""

    def __init__(self, split: str, num_samples: int, image_size: int, seed: int,
                 look: PanopticLook = STUFF_BY_APPEARANCE) -> None:
        super().__init__(split, num_samples, image_size, seed)
        self.look = look
        self.name = look.name
        self.categories = [dict(category) for category in look.categories]
        self.class_names = look.class_names

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
        return generate(np.random.default_rng(self.seed_sequence(index)), self.image_size, self.look)

    def ground_truth(self, index: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The sample's ids and records (the image is generated with them)."""
        return self.load(index)[1:]

    def segments(self, index: int) -> list[dict[str, Any]]:
        """The records need the painted map (occlusion decides areas and boxes), so the sample is generated."""
        return self.load(index)[2]

    def image_id(self, index: int) -> int:
        return index

    def png_name(self, index: int) -> str:
        return f"{index:012d}.png"  # COCO's naming of a panoptic PNG by image id

    def check(self, num_classes: int | None = None) -> None:
        """Generated samples are valid by construction; only the class count can be wrong."""
        if num_classes not in (None, len(self.class_names)):
            raise UserError(f"--num_classes {num_classes}: {self.name} has {len(self.class_names)} semantic "
                            f"classes (things and {len(self.class_names) - 1} stuff categories)")


def panoptic_source_maker(look: PanopticLook) -> Callable[[str, argparse.Namespace], SyntheticPanoptic]:
    """The source factory of ``look``'s dataset, sized by ``synthetic``'s flags (--synthetic_size,
    --synthetic_{train,val}_samples, --synthetic_seed)."""
    def make_source(split: str, args: argparse.Namespace) -> SyntheticPanoptic:
        return SyntheticPanoptic(split, split_samples(split, args), args.synthetic_size, args.synthetic_seed, look)
    return make_source


for _look in (STUFF_BY_APPEARANCE, STUFF_BY_LAYOUT):
    register_dataset(DatasetInfo(
        name=_look.name,
        num_classes=len(_look.class_names),  # semantic classes: things merged + 3 stuff
        default_num_classes=len(_look.class_names),
        make_source=panoptic_source_maker(_look),
        splits=("train", "val", "test"),
        tasks=("panoptic",),
    ))
