"""Reading images and label files, and the source most datasets are: (image file, label file) pairs.

Every failure names the file: an unreadable image, a label file that is not a single-channel
index image, a mask whose size differs from its image, a value the dataset's label map does not
know. ``FilePairSource.check`` runs these over a whole split before training starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from dataloaders.registry import check_mask_values
from utils.errors import UserError
from utils.labels import IGNORE_INDEX

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABEL_MODES = ("P", "L")  # palette PNGs hold class indices; greyscale PNGs hold them as grey levels
UNKNOWN_LABEL = -1  # marks label values a lookup table does not map
UNRANGED_MODES = {"I": "32-bit integer", "F": "32-bit floating-point"}  # Pillow modes with no fixed value range

LabelReader = Callable[[Path], np.ndarray]


def read_image(path: Path) -> np.ndarray:
    """An image file as uint8 [H, W, 3] RGB, whatever its mode, for training and inference alike.

    16-bit samples keep their high byte (value >> 8, as Pillow reads 16-bit colour PNGs), greyscale fills the three
    channels, alpha is dropped, and palette, CMYK and YCbCr images become their colours. Pillow's
    ``convert("RGB")`` alone would clip 16-bit greyscale at 255, a white picture; pixels with no fixed range
    (32-bit integers, floats) are refused rather than guessed at.
    """
    try:
        with Image.open(path) as image:
            if image.mode.startswith("I;16"):
                grey = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=2)
            if image.mode in UNRANGED_MODES:
                raise UserError(f"{path}: cannot read this image: its {UNRANGED_MODES[image.mode]} pixels (mode "
                                f"{image.mode}) have no fixed range; save it with 8 or 16 bits per channel")
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f"{path}: cannot read this image ({error})") from None


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header alone."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f"{path}: cannot read this image ({error})") from None
    return height, width


def read_label_png(path: Path) -> np.ndarray:
    """A label image of class indices as uint8 [H, W]: a palette PNG's indices or a greyscale's levels.

    Colour (RGB) masks are refused: their colours would have to be mapped back to classes, and a
    JPEG-compressed mask has colours no class owns.
    """
    try:
        with Image.open(path) as image:
            if image.mode not in LABEL_MODES:
                raise UserError(f"{path}: a label image must hold one class index per pixel (palette or "
                                f"8-bit greyscale PNG), this one has mode {image.mode}")
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f"{path}: cannot read this label image ({error})") from None


def label_lookup_table(mapping: dict[int, int], ignored: Sequence[int] = ()) -> np.ndarray:
    """A 256-entry table: raw value → class index, ``ignored`` values → 255, anything else unknown."""
    table = np.full(256, UNKNOWN_LABEL, dtype=np.int16)
    for raw, label in mapping.items():
        table[raw] = label
    table[list(ignored)] = IGNORE_INDEX
    return table


def apply_lookup_table(raw: np.ndarray, table: np.ndarray, where: str, dataset: str) -> np.ndarray:
    """Map raw label values through ``table``; a value the table does not know is an error."""
    mapped = table[raw]
    if (mapped == UNKNOWN_LABEL).any():
        values = ", ".join(str(int(v)) for v in np.unique(raw[mapped == UNKNOWN_LABEL])[:10])
        raise UserError(f"{where}: label values {values} are not {dataset} label ids")
    return mapped.astype(np.uint8)


def files_with_suffix(folder: Path, suffixes: Sequence[str], recursive: bool = False) -> list[Path]:
    """Files in ``folder`` whose suffix (case-insensitive) is in ``suffixes``, sorted."""
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in suffixes)


def pair_by_stem(images: Sequence[Path], labels: Sequence[Path], what: str,
                 image_key: Callable[[Path], str] = lambda p: p.stem,
                 label_key: Callable[[Path], str] = lambda p: p.stem) -> list[tuple[Path, Path]]:
    """Match each image with the label file of the same key; an image without one is an error.

    Labels without an image are ignored (label folders often hold extra files, e.g. colour masks).
    """
    by_key: dict[str, Path] = {}
    for label in labels:
        by_key.setdefault(label_key(label), label)
    missing = [image for image in images if image_key(image) not in by_key]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UserError(f"{what}: {len(missing)} image(s) without a mask: {shown}")
    return [(image, by_key[image_key(image)]) for image in images]


class FilePairSource:
    """A split listed as (image file, label file) pairs; labels optionally mapped by a lookup table."""

    def __init__(self, dataset: str, split: str, pairs: Sequence[tuple[Path, Path]], class_names: Sequence[str],
                 read_label: LabelReader = read_label_png, lookup_table: np.ndarray | None = None,
                 palette: np.ndarray | None = None) -> None:
        self.dataset = dataset
        self.split = split
        self.pairs = list(pairs)
        self.class_names = tuple(class_names)
        self.read_label = read_label
        self.lookup_table = lookup_table
        self.palette = palette

    def __len__(self) -> int:
        return len(self.pairs)

    def image_path(self, index: int) -> Path:
        return self.pairs[index][0]

    def describe(self, index: int) -> str:
        image, label = self.pairs[index]
        return f"{label} (mask of {image.name})"

    def load_label(self, index: int, image_hw: tuple[int, int]) -> np.ndarray:
        """The mask of sample ``index``, mapped to class indices, checked against the image size."""
        image_path, label_path = self.pairs[index]
        raw = self.read_label(label_path)
        if raw.shape != image_hw:
            raise UserError(f"{label_path}: mask is {raw.shape[0]}x{raw.shape[1]} but its image {image_path} is "
                            f"{image_hw[0]}x{image_hw[1]}")
        if self.lookup_table is None:
            return raw
        return apply_lookup_table(raw, self.lookup_table, str(label_path), self.dataset)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(self.pairs[index][0])
        return image, self.load_label(index, image.shape[:2])

    def check(self, num_classes: int) -> None:
        """Read every mask (and every image header): sizes, label values, readability, and at least one labelled
        pixel in the split (masks that are all 255 give nothing to learn or score)."""
        labelled = 0
        for index in tqdm(range(len(self)), desc=f"checking {self.dataset} {self.split}", leave=False,
                          disable=None):
            mask = self.load_label(index, image_size(self.pairs[index][0]))
            check_mask_values(mask, num_classes, self.describe(index))
            labelled += int(np.count_nonzero(mask != IGNORE_INDEX))
        if not labelled:
            raise UserError(f"the {self.split} split of {self.dataset} has no labelled pixel: all {len(self)} masks "
                            f"hold only {IGNORE_INDEX} (ignore), e.g. {self.pairs[0][1]}")
