"""A custom dataset from plain folders: what most users bring.

Two layouts are read (the first that matches wins)::

    <root>/classes.txt                      one class per line: "name" or "name R G B"
    <root>/images/{train,val}/<stem>.<jpg|png|...>
    <root>/masks/{train,val}/<stem>.png     index PNGs (palette or 8-bit greyscale), 255 = ignore

    <root>/classes.txt
    <root>/images/<stem>.<ext>, <root>/masks/<stem>.png
    <root>/{train,val}.txt                  the stems of each split, one per line

Line ``k`` of ``classes.txt`` (blank lines and ``#`` comments skipped) names class ``k``; the
class count comes from this file. Colours, when every line gives one, are used for pictures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dataloaders.files import IMAGE_SUFFIXES, FilePairSource, files_with_suffix, pair_by_stem
from dataloaders.registry import DatasetInfo, dataset_root, register_dataset, voc_palette
from utils.errors import UserError

CLASSES_FILE = "classes.txt"
LAYOUT = ("<root>/classes.txt with <root>/images/<split>/* and <root>/masks/<split>/*.png, or flat "
          "<root>/images/* and <root>/masks/*.png with <root>/<split>.txt listing the stems")


def read_classes(path: Path) -> tuple[tuple[str, ...], np.ndarray | None]:
    """Class names and, if every line gives "R G B" after the name, their colours [N, 3] uint8."""
    if not path.is_file():
        raise UserError(f"folder: {path} is missing; it names one class per line (line 1 is class 0)")
    names, colours = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) >= 4 and all(part.isdigit() for part in parts[-3:]):
            rgb = [int(part) for part in parts[-3:]]
            if max(rgb) > 255:
                raise UserError(f"{path}:{number}: colour {' '.join(parts[-3:])} is not three values in 0..255")
            names.append(" ".join(parts[:-3]))
            colours.append(rgb)
        else:
            names.append(line)
    if len(names) < 2:
        raise UserError(f"{path}: names {len(names)} class(es); a segmentation dataset needs at least 2")
    if len(names) > 255:
        raise UserError(f"{path}: names {len(names)} classes; index PNGs hold at most 255 (255 is ignore)")
    palette = np.array(colours, dtype=np.uint8) if len(colours) == len(names) else None
    return tuple(names), palette


def _split_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    images_dir, masks_dir = root / "images" / split, root / "masks" / split
    if images_dir.is_dir():
        if not masks_dir.is_dir():
            raise UserError(f"folder: {images_dir} has no mask folder {masks_dir}")
        images = files_with_suffix(images_dir, IMAGE_SUFFIXES)
        return pair_by_stem(images, files_with_suffix(masks_dir, (".png",)), f"folder {split} ({masks_dir})")
    list_file = root / f"{split}.txt"
    if not list_file.is_file():
        raise UserError(f"folder: found neither {images_dir}/ nor {list_file}; expected the layout {LAYOUT}")
    stems = [line.strip() for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    images_by_stem = {p.stem: p for p in files_with_suffix(root / "images", IMAGE_SUFFIXES)}
    unknown = [stem for stem in stems if stem not in images_by_stem]
    if unknown:
        raise UserError(f"{list_file}: {len(unknown)} stem(s) without an image in {root / 'images'}, e.g. "
                        f"{unknown[0]!r}")
    return pair_by_stem([images_by_stem[stem] for stem in stems],
                        files_with_suffix(root / "masks", (".png",)), f"folder {split} ({root / 'masks'})")


def make_folder_source(split: str, args: argparse.Namespace) -> FilePairSource:
    root = dataset_root(INFO, args, [CLASSES_FILE, "images", "masks"])
    names, palette = read_classes(root / CLASSES_FILE)
    return FilePairSource("folder", split, _split_pairs(root, split), names,
                          palette=palette if palette is not None else voc_palette(len(names)))


def count_folder_classes(args: argparse.Namespace) -> int:
    return len(read_classes(dataset_root(INFO, args, [CLASSES_FILE]) / CLASSES_FILE)[0])


INFO = register_dataset(DatasetInfo(
    name="folder",
    num_classes=None,
    default_num_classes=2,
    count_classes=count_folder_classes,
    make_source=make_folder_source,
    layout=LAYOUT,
    splits=("train", "val", "test"),
))
