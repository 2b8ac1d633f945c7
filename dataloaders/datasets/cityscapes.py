"""Cityscapes (fine annotations), read in the layout the official archives unpack to.

``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` with
``gtFine/<split>/<city>/<name>_gtFine_labelIds.png``. The 34 official label ids map to the 19
train ids through a lookup table (every void id, and license plate's -1 stored as 255, → 255);
any other value is an error naming the file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dataloaders.files import FilePairSource, label_lookup_table, pair_by_stem
from dataloaders.registry import DatasetInfo, dataset_root, register_dataset

# (label id, train-id class name, colour) of the 19 evaluated classes, in train-id order (cityscapesScripts).
TRAIN_CLASSES = (
    (7, "road", (128, 64, 128)), (8, "sidewalk", (244, 35, 232)), (11, "building", (70, 70, 70)),
    (12, "wall", (102, 102, 156)), (13, "fence", (190, 153, 153)), (17, "pole", (153, 153, 153)),
    (19, "traffic light", (250, 170, 30)), (20, "traffic sign", (220, 220, 0)),
    (21, "vegetation", (107, 142, 35)), (22, "terrain", (152, 251, 152)), (23, "sky", (70, 130, 180)),
    (24, "person", (220, 20, 60)), (25, "rider", (255, 0, 0)), (26, "car", (0, 0, 142)),
    (27, "truck", (0, 0, 70)), (28, "bus", (0, 60, 100)), (31, "train", (0, 80, 100)),
    (32, "motorcycle", (0, 0, 230)), (33, "bicycle", (119, 11, 32)),
)
# unlabeled, ego vehicle, rectification border, out of roi, static, dynamic, ground, parking, rail track,
# guard rail, bridge, tunnel, polegroup, caravan, trailer; and license plate (id -1, 255 in a uint8 PNG).
VOID_IDS = (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 255)
CLASS_NAMES = tuple(name for _, name, _ in TRAIN_CLASSES)
LOOKUP_TABLE = label_lookup_table({label_id: train_id for train_id, (label_id, _, _) in enumerate(TRAIN_CLASSES)},
                                  ignored=VOID_IDS)
IMAGE_SUFFIX, LABEL_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"
LAYOUT = ("<root>/leftImg8bit/{train,val,test}/<city>/*_leftImg8bit.png and "
          "<root>/gtFine/{train,val,test}/<city>/*_gtFine_labelIds.png")


def cityscapes_palette(num_classes: int) -> np.ndarray:
    return np.array([colour for _, _, colour in TRAIN_CLASSES[:num_classes]], dtype=np.uint8)


def _key(path: Path, suffix: str) -> str:
    return f"{path.parent.name}/{path.name[: -len(suffix)]}"


def make_cityscapes_source(split: str, args: argparse.Namespace) -> FilePairSource:
    root = dataset_root(INFO, args, [f"leftImg8bit/{split}", f"gtFine/{split}"])
    images = sorted((root / "leftImg8bit" / split).glob(f"*/*{IMAGE_SUFFIX}"))
    labels = sorted((root / "gtFine" / split).glob(f"*/*{LABEL_SUFFIX}"))
    pairs = pair_by_stem(images, labels, f"cityscapes {split} ({root / 'gtFine' / split})",
                         image_key=lambda p: _key(p, IMAGE_SUFFIX), label_key=lambda p: _key(p, LABEL_SUFFIX))
    return FilePairSource("cityscapes", split, pairs, CLASS_NAMES, lookup_table=LOOKUP_TABLE)


INFO = register_dataset(DatasetInfo(
    name="cityscapes",
    num_classes=len(TRAIN_CLASSES),
    default_num_classes=len(TRAIN_CLASSES),
    make_source=make_cityscapes_source,
    layout=LAYOUT,
    splits=("train", "val", "test"),
    # The paper's search (Sec. 5.1): 40 epochs, α/β from epoch 20, batch 2, 321 crops of the half-resolution
    # images. Retrain (Sec. 5.2): 769 crops, batch 8, 1.5M iterations (about 4000 epochs of 2975 images).
    palette=cityscapes_palette,
))
