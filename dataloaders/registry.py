"""The dataset registry: what the scripts know about each dataset before touching its files.

A dataset module registers a ``DatasetInfo`` whose ``make_source(split, args)`` returns a
*source*: ``__len__``, ``load(i) -> (image uint8 [H, W, 3], mask uint8 [H, W])``,
``describe(i)`` (the files behind sample ``i``, for error messages), ``check(num_classes)``
(validate the whole split before training) and ``class_names``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from utils.flags import add_flag, positive_int
from mypath import Path as DataPath
from utils.errors import UserError
from utils.labels import IGNORE_INDEX, voc_palette
from utils.registry import Registry

class SegmentationSource(Protocol):
    """What a dataset provides for one split: raw arrays, no tensors, no augmentation.

    A source may also carry ``palette`` ([N, 3] uint8) when its files define class colours.
    """

    class_names: Sequence[str]

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...

    def describe(self, index: int) -> str: ...

    def check(self, num_classes: int) -> None: ...


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's name, classes, expected layout, source factory and the tasks its labels serve (data facts
    only: training recipes live in ``config_utils.recipes``)."""

    name: str
    num_classes: int | None  # None: chosen with --num_classes, or counted by count_classes
    default_num_classes: int
    make_source: Callable[[str, argparse.Namespace], SegmentationSource]
    count_classes: Callable[[argparse.Namespace], int] | None = None  # the count the data (or a flag) fixes
    layout: str = ""  # the on-disk layout, quoted in errors about a missing or wrong root
    splits: tuple[str, ...] = ("train", "val")
    palette: Callable[[int], np.ndarray] = voc_palette
    tasks: tuple[str, ...] = ("semantic",)  # what its labels serve: "semantic" or "panoptic" segmentation
    add_arguments: Callable[[argparse._ArgumentGroup], None] | None = None  # dataset-specific flags


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    return DATASETS.register(info.name, info)


def get_dataset_info(name: str) -> DatasetInfo:
    return DATASETS.lookup(name, "--dataset")


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """--dataset, --data_root, --num_classes, --skip_data_check, and each dataset's own flags."""
    add_flag(parser, "dataset", default="synthetic", choices=sorted(DATASETS), locked=True,
             help="dataset to use (default: %(default)s)")
    add_flag(parser, "data_root", default=None,
             help="dataset root folder; overrides AUTODEEPLAB_<DATASET>_ROOT and "
                  "AUTODEEPLAB_DATA_ROOT (unused by the generated synthetic* datasets)")
    add_flag(parser, "num_classes", type=positive_int, default=None, locked=True,
             help="number of classes including background (default: the dataset's own)")
    add_flag(parser, "skip_data_check", action="store_true",
             help="do not read every label file before training (the check finds unpaired, mis-sized "
                  "and out-of-range masks at start instead of hours into a run)")
    for info in sorted(DATASETS.values(), key=lambda info: info.name):
        if info.add_arguments is not None:
            info.add_arguments(parser.add_argument_group(f"{info.name} dataset"))


def resolve_num_classes(args: argparse.Namespace) -> int:
    """The class count in use: fixed by the dataset or its files, or --num_classes, or the default."""
    info = get_dataset_info(args.dataset)
    fixed = info.count_classes(args) if info.count_classes is not None else info.num_classes
    if fixed is None:
        return info.default_num_classes if args.num_classes is None else args.num_classes
    if args.num_classes not in (None, fixed):
        raise UserError(f"--num_classes: dataset {info.name} has exactly {fixed} classes here, got "
                        f"{args.num_classes}; drop the flag")
    return fixed


def source_palette(info: DatasetInfo, source: SegmentationSource, num_classes: int) -> np.ndarray:
    """Colours [num_classes, 3] for pictures: the source's own (e.g. from a class file) or the dataset's."""
    own = getattr(source, "palette", None)
    return np.asarray(own if own is not None else info.palette(num_classes), dtype=np.uint8)[:num_classes]


def dataset_root(info: DatasetInfo, args: argparse.Namespace, required: Sequence[str] = (),
                 nested: str | Path | None = None) -> Path:
    """The dataset's root folder, checked to exist and to hold every path in ``required``.

    With ``nested`` (e.g. ``VOCdevkit/VOC2012``), a root holding that folder stands for it, so users may
    point at either the archive's folder or its parent. The error names where the root came from (flag
    or environment variable) and the layout expected.
    """
    root_text, origin = DataPath.root_and_origin(info.name, args.data_root, info.layout)
    root = Path(root_text).expanduser()
    if not root.is_dir():
        raise UserError(f"{info.name}: data root {root} (from {origin}) is not a folder; expected the layout "
                        f"{info.layout}")
    if nested is not None and (root / nested).is_dir():
        root = root / nested
    missing = [name for name in required if not (root / name).exists()]
    if missing:
        raise UserError(f"{info.name}: data root {root} (from {origin}) lacks {', '.join(missing)}; expected "
                        f"the layout {info.layout}")
    return root


def check_mask_values(mask: np.ndarray, num_classes: int, where: str) -> None:
    """Fail on labels outside 0..num_classes-1 other than the ignore label, naming the values."""
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        values = np.unique(mask[bad])
        shown = ", ".join(str(int(v)) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        raise UserError(f"{where}: label values {shown} are outside 0..{num_classes - 1} (and not "
                        f"{IGNORE_INDEX}); check --num_classes and the masks")



def inherit_dataset_flags(args: argparse.Namespace, trained: dict, explicit: set[str]) -> None:
    """Fill the dataset flags not given on the command line from the arguments a network was trained with.

    Giving another --dataset drops the trained class count, so the new dataset's own count is checked instead.
    """
    probe = argparse.ArgumentParser(add_help=False)
    add_dataset_arguments(probe)
    for action in probe._actions:
        if action.dest not in explicit and action.dest in trained:
            setattr(args, action.dest, trained[action.dest])
    if "dataset" in explicit and "num_classes" not in explicit:
        args.num_classes = None
