"""A custom dataset from plain folders: what most users bring.

Three layouts are read (the first that matches wins)::

    <root>/classes.txt                      one class per line: "name" or "name R G B"
    <root>/images/{train,val}/<stem>.<jpg|png|...>
    <root>/masks/{train,val}/<stem>.png     index PNGs (palette or 8-bit greyscale), 255 = ignore

    <root>/classes.txt
    <root>/images/<stem>.<ext>, <root>/masks/<stem>.png
    <root>/{train,val}.txt                  the stems of each split, one per line

    <root>/classes.txt
    <root>/images/<stem>.<ext>, <root>/masks/<stem>.png   and no split lists: split for you, seeded
                                            (--split_seed, --val_fraction; ``flat_split``)

Line ``k`` of ``classes.txt`` (blank lines and ``#`` comments skipped) names class ``k``; the
class count comes from this file. Colours, when every line gives one, are used for pictures.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dataloaders.files import IMAGE_SUFFIXES, FilePairSource, files_with_suffix, pair_by_stem
from dataloaders.registry import DatasetInfo, dataset_root, register_dataset, voc_palette
from utils.errors import UserError
from utils.flags import add_flag, non_negative_int

CLASSES_FILE = "classes.txt"
LAYOUT = ("<root>/classes.txt with <root>/images/<split>/* and <root>/masks/<split>/*.png, or flat "
          "<root>/images/* and <root>/masks/*.png (with <root>/<split>.txt listing the stems, or split for you)")
FLAT_SPLITS = ("train", "val")


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


def flat_split(stems: Sequence[str], seed: int, val_fraction: float, where: str) -> dict[str, list[str]]:
    """A seeded train/val split of a flat folder's stems, each sorted: the same stems, seed and fraction always
    give the same split, whatever order the files are listed in. Val gets ``val_fraction`` of the images,
    rounded, and each split at least one."""
    ordered = sorted(stems)
    if len(ordered) < 2:
        raise UserError(f"{where}: holds {len(ordered)} image(s); splitting into train and val needs at least 2 "
                        "(or give the splits as images/train, images/val or train.txt, val.txt)")
    count = min(max(1, round(len(ordered) * val_fraction)), len(ordered) - 1)
    chosen = set(np.random.default_rng(seed).permutation(len(ordered))[:count].tolist())
    return {"train": [stem for i, stem in enumerate(ordered) if i not in chosen],
            "val": [stem for i, stem in enumerate(ordered) if i in chosen]}


def _split_stems(root: Path, split: str, args: argparse.Namespace) -> tuple[list[str], dict[str, list[str]] | None]:
    """The stems of ``split`` from its list file, or from the seeded split of a flat folder (also returned)."""
    list_file = root / f"{split}.txt"
    if list_file.is_file():
        return [line.strip() for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()], None
    if any((root / f"{name}.txt").is_file() for name in FLAT_SPLITS) or (root / "images" / "train").is_dir():
        raise UserError(f"folder: found neither {root / 'images' / split}/ nor {list_file}; expected the layout "
                        f"{LAYOUT}")
    if split not in FLAT_SPLITS:
        raise UserError(f"folder: {root} is one flat folder, split for you into {' and '.join(FLAT_SPLITS)} only; "
                        f"there is no {split} split")
    stems = [p.stem for p in files_with_suffix(root / "images", IMAGE_SUFFIXES)]
    split_stems = flat_split(stems, args.split_seed, args.val_fraction, f"folder: {root / 'images'}")
    return split_stems[split], split_stems


def _split_pairs(root: Path, split: str, args: argparse.Namespace) -> tuple[list[tuple[Path, Path]],
                                                                           dict[str, list[str]] | None]:
    images_dir, masks_dir = root / "images" / split, root / "masks" / split
    if images_dir.is_dir():
        if not masks_dir.is_dir():
            raise UserError(f"folder: {images_dir} has no mask folder {masks_dir}")
        images = files_with_suffix(images_dir, IMAGE_SUFFIXES)
        return pair_by_stem(images, files_with_suffix(masks_dir, (".png",)), f"folder {split} ({masks_dir})"), None
    list_file = root / f"{split}.txt"
    stems, split_stems = _split_stems(root, split, args)
    images_by_stem = {p.stem: p for p in files_with_suffix(root / "images", IMAGE_SUFFIXES)}
    unknown = [stem for stem in stems if stem not in images_by_stem]
    if unknown:
        raise UserError(f"{list_file}: {len(unknown)} stem(s) without an image in {root / 'images'}, e.g. "
                        f"{unknown[0]!r}")
    pairs = pair_by_stem([images_by_stem[stem] for stem in stems], files_with_suffix(root / "masks", (".png",)),
                         f"folder {split} ({root / 'masks'})")
    return pairs, split_stems


def make_folder_source(split: str, args: argparse.Namespace) -> FilePairSource:
    """The split's (image, mask) pairs; a flat folder's source also carries ``data_split``, the stems of both
    splits, which runs record (``split.json``, the checkpoint) and check on resume and in evaluation."""
    root = dataset_root(INFO, args, [CLASSES_FILE, "images", "masks"])
    names, palette = read_classes(root / CLASSES_FILE)
    pairs, split_stems = _split_pairs(root, split, args)
    source = FilePairSource("folder", split, pairs, names,
                            palette=palette if palette is not None else voc_palette(len(names)))
    source.data_split = split_stems
    return source


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text}")
    return value


def add_folder_arguments(group: argparse._ArgumentGroup) -> None:
    add_flag(group, "val_fraction", type=_fraction, default=0.1, locked=True,
             help="flat folders without split lists: the share of the images held out for val (default: 0.1)")
    add_flag(group, "split_seed", type=non_negative_int, default=0, locked=True,
             help="flat folders without split lists: the seed of the train/val split (default: 0, the same in "
                  "every stage)")


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
    add_arguments=add_folder_arguments,
))
