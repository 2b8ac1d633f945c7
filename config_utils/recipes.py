"""Training recipes: default flag values per (search system, stage, dataset), apart from the data.

A dataset module says what its data is (files, classes, colours); how long to search or retrain on it,
with which batch and crop, is a recipe, kept here (as mmsegmentation keeps schedules apart from datasets).
A flag given on the command line always wins; a dataset without a recipe needs its flags given.
"""

from __future__ import annotations

import argparse
from typing import Any

from utils.errors import UserError

PAPER_ALPHA_EPOCH = 20  # the paper trains weights alone for 20 of its 40 search epochs

# The paper's search setting (Sec. 5.1): batch 2, 321x321 crops, architecture steps from epoch 20 of 40.
_PAPER_SEARCH = {"epochs": 40, "alpha_epoch": PAPER_ALPHA_EPOCH, "batch_size": 2, "crop_size": 321}
_PAPER_RETRAIN = {"batch_size": 8}

RECIPES: dict[tuple[str, str, str], dict[str, Any]] = {
    ("autodeeplab", "search", "cityscapes"): _PAPER_SEARCH | {"resize": 512},
    ("autodeeplab", "retrain", "cityscapes"): _PAPER_RETRAIN | {"epochs": 4000, "crop_size": 769},
    ("autodeeplab", "search", "pascal"): _PAPER_SEARCH | {"epochs": 50, "resize": 321},
    ("autodeeplab", "retrain", "pascal"): _PAPER_RETRAIN | {"epochs": 300, "crop_size": 513},
    ("autodeeplab", "search", "ade20k"): _PAPER_SEARCH | {"resize": 321},
    ("autodeeplab", "retrain", "ade20k"): _PAPER_RETRAIN | {"epochs": 200, "crop_size": 513},
    ("autodeeplab", "search", "coco"): _PAPER_SEARCH | {"epochs": 30, "alpha_epoch": 15, "resize": 321},
    ("autodeeplab", "retrain", "coco"): _PAPER_RETRAIN | {"epochs": 30, "crop_size": 513},
    ("autodeeplab", "search", "camvid"): _PAPER_SEARCH | {"resize": 360},
    ("autodeeplab", "retrain", "camvid"): _PAPER_RETRAIN | {"epochs": 200, "crop_size": 360},
    ("autodeeplab", "search", "folder"): _PAPER_SEARCH | {"resize": None},
    ("autodeeplab", "retrain", "folder"): _PAPER_RETRAIN | {"epochs": 200, "crop_size": 513},
    # The embedded dataset: small enough for a CPU.
    ("autodeeplab", "search", "synthetic"): {"epochs": 8, "alpha_epoch": 4, "batch_size": 8, "crop_size": 64,
                                             "resize": None},
    ("autodeeplab", "retrain", "synthetic"): {"epochs": 6, "batch_size": 8, "crop_size": 64},
}


def recipe(system: str, stage: str, dataset: str) -> dict[str, Any]:
    return dict(RECIPES.get((system, stage, dataset), {}))


def fill_recipe_defaults(args: argparse.Namespace, system: str, stage: str, required: tuple[str, ...]) -> None:
    """Replace the unset (None) flags in ``args`` by the recipe's values; ``required`` flags must end up set."""
    for flag, value in recipe(system, stage, args.dataset).items():
        if getattr(args, flag, 0) is None:
            setattr(args, flag, value)
    missing = [flag for flag in required if getattr(args, flag) is None]
    if missing:
        raise UserError(f"--dataset {args.dataset}: no {system} {stage} recipe gives "
                        f"{', '.join('--' + flag for flag in missing)}; give them on the command line")
