"""ADE20K SceneParsing (the 150-class benchmark), read in the layout ``ADEChallengeData2016.zip`` unpacks to.

``ADEChallengeData2016/images/{training,validation}/ADE_*.jpg`` with
``ADEChallengeData2016/annotations/{training,validation}/ADE_*.png``, 8-bit greyscale masks whose
value 0 is "other" (unlabelled, → 255) and 1..150 the benchmark classes (→ 0..149). Any other value
is an error naming the file. The root may be ``ADEChallengeData2016`` itself or a folder holding it.
"""

from __future__ import annotations

import argparse

from dataloaders.files import IMAGE_SUFFIXES, FilePairSource, files_with_suffix, label_lookup_table, pair_by_stem
from dataloaders.registry import DatasetInfo, dataset_root, register_dataset

# The 150 classes in label order (objectInfo150.txt, first name of each), label k is CLASS_NAMES[k - 1].
CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
UNLABELLED = 0
LOOKUP_TABLE = label_lookup_table({raw: raw - 1 for raw in range(1, len(CLASS_NAMES) + 1)}, ignored=(UNLABELLED,))
ARCHIVE_FOLDER = "ADEChallengeData2016"
SPLIT_FOLDERS = {"train": "training", "val": "validation"}
LAYOUT = (f"<root>/images/{{training,validation}}/ADE_*.jpg and <root>/annotations/{{training,validation}}/ADE_*.png, "
          f"<root> being {ARCHIVE_FOLDER} or a folder holding it")


def make_ade20k_source(split: str, args: argparse.Namespace) -> FilePairSource:
    split_folder = SPLIT_FOLDERS[split]
    root = dataset_root(INFO, args, [f"{folder}/{split_folder}" for folder in ("images", "annotations")],
                        nested=ARCHIVE_FOLDER)
    images = files_with_suffix(root / "images" / split_folder, IMAGE_SUFFIXES)
    labels = files_with_suffix(root / "annotations" / split_folder, (".png",))
    pairs = pair_by_stem(images, labels, f"ade20k {split} ({root / 'annotations' / split_folder})")
    return FilePairSource("ade20k", split, pairs, CLASS_NAMES, lookup_table=LOOKUP_TABLE)


INFO = register_dataset(DatasetInfo(
    name="ade20k",
    num_classes=len(CLASS_NAMES),
    default_num_classes=len(CLASS_NAMES),
    make_source=make_ade20k_source,
    layout=LAYOUT,
    splits=tuple(SPLIT_FOLDERS),
    # The paper's search recipe (Sec. 5.1: 40 epochs, α/β from epoch 20, batch 2, 321 crops). ADE20K image sizes
    # vary (some short sides are under 321), so the search resizes every short side to the crop size.
))
