"""Label maps: the ignore label, class colours, and class maps as pictures (inference outputs, TensorBoard)."""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255  # pixels without a label: skipped by the losses and the metrics
IGNORE_COLOUR = (255, 255, 255)


def voc_palette(num_classes: int) -> np.ndarray:
    """The PASCAL VOC colour map: [N, 3] uint8, class 0 black, neighbours clearly distinct."""
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for class_id in range(num_classes):
        bits, colour = class_id, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((bits >> channel) & 1) << shift
            bits >>= 3
        palette[class_id] = colour
    return palette


def colour_table(palette: np.ndarray) -> np.ndarray:
    """[256, 3] uint8: the class colours first, the ignore label white, other values black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = palette
    table[IGNORE_INDEX] = IGNORE_COLOUR
    return table


def colorize(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """A class map [H, W] as uint8 RGB [H, W, 3]; the ignore label is white."""
    return colour_table(palette)[np.asarray(mask, dtype=np.int64).clip(0, 255)]


def overlay(image: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The class colours blended over a uint8 RGB image with weight ``alpha``."""
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colorize(mask, palette).astype(np.float32)
    return blended.round().clip(0, 255).astype(np.uint8)


def palette_bytes(palette: np.ndarray) -> list[int]:
    """A PIL palette: 768 values, the flattened ``colour_table``."""
    return colour_table(palette).reshape(-1).tolist()


def panoptic_colours(ids: np.ndarray, segments: list[dict], category_ids: list[int],
                     things: set[int]) -> np.ndarray:
    """A panoptic map as uint8 RGB [H, W, 3]: each category its palette colour (in ``category_ids`` order),
    every thing instance shifted by its own amount so that touching instances stay apart; void black."""
    palette = voc_palette(len(category_ids) + 1)[1:].astype(np.int16)
    picture = np.zeros((*ids.shape, 3), dtype=np.uint8)
    for instance, segment in enumerate(segments):
        colour = palette[category_ids.index(segment["category_id"])]
        if segment["category_id"] in things:
            colour = colour + (np.array([37, -23, 51]) * (instance % 5 - 2)) // 2
        picture[ids == segment["id"]] = colour.clip(0, 255).astype(np.uint8)
    return picture
