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


# The decoder search (Nekrasov et al.): the CVPR 2019 search on PASCAL VOC (the original's defaults) and the
# WACV 2020 one on Cityscapes (its examples/search/search_wacv.sh). That script asks for 321-pixel crops: the
# original's RandomCrop rounds an odd size down when it is built, which gives the cached stage-0 images 320, but
# set_config later hands stage 1 the 321 unrounded.
_NAS_SEGM_CVPR = {"space": "cvpr", "num_candidates": 20000, "n_task0": 4000, "batch_size": [64, 32],
                  "crop_size": [256, 350], "resize_side": [300, 400], "resize_longer_side": False,
                  "val_resize_side": 400, "val_crop_size": 400, "val_batch_size": 64, "val_omit_classes": [0],
                  "num_segm_epochs": [5, 1], "val_every": [5, 1], "enc_optim": "sgd", "dec_optim": "adam",
                  "enc_lr": [1e-3, 1e-3], "dec_lr": [3e-3, 3e-3], "enc_mom": [0.9, 0.9], "dec_mom": [0.9, 0.9],
                  "enc_wd": [1e-5, 1e-5], "dec_wd": [1e-5, 1e-5], "dec_aux_weight": 0.15, "aux_cell": True}
_NAS_SEGM_WACV = {"space": "wacv", "num_candidates": 20000, "n_task0": 1000, "batch_size": [32, 32],
                  "crop_size": [320, 321], "resize_side": [1024, 1024], "resize_longer_side": True,
                  "val_resize_side": 1024, "val_crop_size": 512, "val_batch_size": 10, "val_omit_classes": [],
                  "num_segm_epochs": [5, 5], "val_every": [5, 1], "enc_optim": "adam", "dec_optim": "adam",
                  "enc_lr": [1e-3, 5e-4], "dec_lr": [7e-3, 2e-3], "enc_mom": [0.9, 0.9], "dec_mom": [0.9, 0.9],
                  "enc_wd": [1e-5, 1e-5], "dec_wd": [1e-5, 1e-5], "dec_aux_weight": 0.0, "aux_cell": False}
RECIPES.update({
    ("nas-segm", "search", "pascal"): _NAS_SEGM_CVPR,
    ("nas-segm", "search", "cityscapes"): _NAS_SEGM_WACV,
    ("nas-segm", "search", "camvid"): _NAS_SEGM_WACV | {"resize_side": [480, 480], "val_resize_side": 480,
                                                       "val_crop_size": 360},
    ("nas-segm", "search", "ade20k"): _NAS_SEGM_CVPR | {"val_omit_classes": []},
    ("nas-segm", "search", "coco"): _NAS_SEGM_CVPR,
    ("nas-segm", "search", "folder"): _NAS_SEGM_WACV | {"resize_longer_side": False, "resize_side": [320, 320],
                                                       "val_resize_side": 320, "val_crop_size": 320},
    # The embedded dataset: a few minutes a search on a CPU.
    ("nas-segm", "search", "synthetic"): _NAS_SEGM_WACV | {
        "num_candidates": 8, "n_task0": 1000, "batch_size": [8, 8], "crop_size": [64, 64], "resize_side": [64, 64],
        "resize_longer_side": False, "val_resize_side": 64, "val_crop_size": 64, "val_batch_size": 8,
        "num_segm_epochs": [4, 2], "val_every": [4, 1]},
})
# Auto-Panoptic's supernet and greedy search: the paper's on COCO panoptic (the original's
# scripts/architecture_search.sh and its config); a scale-down on the embedded data that keeps the algorithm:
# fewer blocks and channels, 96-pixel images, fewer proposals and iterations, 2 search cycles.
_AUTOPANOPTIC_PAPER = {
    "batch_size": 16, "min_size": 800, "max_size": 1333, "held_out": 5000, "stuff_area_limit": 4096,
    "widths": [48, 96, 240, 480, 960], "stage_repeats": [8, 8, 16, 8], "fpn_channels": 256, "subnet_channels": 128,
    "rpn_pre_nms_train": 2000, "rpn_post_nms_train": 2000, "rpn_pre_nms_test": 1000, "rpn_post_nms_test": 1000,
    "rois_per_image": 512, "detections_per_image": 100, "max_iter": 90000, "warmup_iters": 3000,
    "checkpoint_period": 2500, "search_cycles": 5, "bn_recalibration_iters": 500}
RECIPES |= {
    ("autopanoptic", "search", "coco_panoptic"): _AUTOPANOPTIC_PAPER,
    ("autopanoptic", "search", "synthetic_panoptic"): _AUTOPANOPTIC_PAPER | {
        "batch_size": 2, "min_size": 96, "max_size": 96, "held_out": 16, "stuff_area_limit": 96,
        "widths": [16, 32, 64, 128, 256], "stage_repeats": [2, 2, 4, 2], "fpn_channels": 64, "subnet_channels": 32,
        "rpn_pre_nms_train": 300, "rpn_post_nms_train": 300, "rpn_pre_nms_test": 300, "rpn_post_nms_test": 300,
        "rois_per_image": 128, "detections_per_image": 50, "max_iter": 240, "warmup_iters": 24,
        "checkpoint_period": 120, "search_cycles": 2, "bn_recalibration_iters": 10},
    # The retrain (the original's config of the searched COCO model): the 3.8G widths, 90k iterations with drops at 60k and 80k, warm-up over 500.
    ("autopanoptic", "retrain", "coco_panoptic"): {
        key: _AUTOPANOPTIC_PAPER[key] for key in ("batch_size", "min_size", "max_size", "stuff_area_limit",
                                                  "fpn_channels", "subnet_channels", "rpn_pre_nms_train",
                                                  "rpn_post_nms_train", "rpn_pre_nms_test", "rpn_post_nms_test",
                                                  "rois_per_image", "detections_per_image", "max_iter",
                                                  "checkpoint_period")} | {
        "widths": [72, 172, 432, 864, 1728], "lr_steps": [60000, 80000], "warmup_iters": 500},
    ("autopanoptic", "retrain", "synthetic_panoptic"): {
        "batch_size": 2, "min_size": 96, "max_size": 96, "stuff_area_limit": 96, "widths": [24, 48, 96, 192, 384],
        "fpn_channels": 64, "subnet_channels": 32, "rpn_pre_nms_train": 300, "rpn_post_nms_train": 300,
        "rpn_pre_nms_test": 300, "rpn_post_nms_test": 300, "rois_per_image": 128, "detections_per_image": 50,
        "max_iter": 300, "lr_steps": [200, 270], "warmup_iters": 30, "checkpoint_period": 100},
}
# The generated variants whose labels need context, thin detail and several scales train with their base dataset's
# recipes, so that scores on the two compare.
_VARIANT_BASES = {"synthetic_context": "synthetic", "synthetic_panoptic_context": "synthetic_panoptic"}
RECIPES |= {(system, stage, variant): RECIPES[(system, stage, base)]
            for variant, base in _VARIANT_BASES.items() for system, stage, dataset in list(RECIPES) if dataset == base}
# A setting of the other space fills what the chosen space's recipe does not fix (--space against the recipe).
SPACE_DEFAULTS = {"cvpr": {key: _NAS_SEGM_CVPR[key] for key in ("dec_aux_weight", "aux_cell")},
                  "wacv": {key: _NAS_SEGM_WACV[key] for key in ("dec_aux_weight", "aux_cell")}}


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
