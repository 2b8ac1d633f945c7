"""Arguments of evaluate.py and inference.py: a trained checkpoint and how to predict with it."""

from __future__ import annotations

import argparse

from config_utils.common import add_checkpoint_flag, add_device_flag
from dataloaders import add_dataset_arguments
from utils.flags import Parser, add_flag, non_negative_int, positive_float, positive_int


def add_prediction_flags(parser: argparse.ArgumentParser, checkpoint_required: bool = True) -> None:
    """The checkpoint, the test-time augmentation and the device, shared by evaluation and inference."""
    add_checkpoint_flag(parser, required=checkpoint_required)
    add_flag(parser, "eval_scales", type=positive_float, nargs="+", default=[1.0], metavar="SCALE",
             help="average the predictions at these input scales, e.g. 0.5 0.75 1.0 1.25 1.5 1.75 (default: 1.0)")
    add_flag(parser, "flip", action="store_true", help="also average the predictions of mirrored inputs")
    add_flag(parser, "resize", type=positive_int, default=None,
             help="resize the short side of the network's input to this (default: none); scores are taken, and "
                  "masks written, at each image's own size all the same")
    add_device_flag(parser)


def eval_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="evaluate.py",
                    description="Evaluate a trained network (--ckpt), or score prediction files (--pred-dir), on a "
                                "dataset split: mIoU, per-class IoU (table and CSV), pixel accuracy, mean class "
                                "accuracy, frequency-weighted IoU and a confusion-matrix picture; PQ, SQ and RQ per "
                                "category for panoptic data. Dataset flags default to the checkpoint's.")
    add_prediction_flags(parser, checkpoint_required=False)
    add_dataset_arguments(parser)
    add_flag(parser, "split", default="val", help="split to evaluate (default: %(default)s)")
    add_flag(parser, "pred-dir", default=None, metavar="DIR",
             help="score these predictions instead of a checkpoint's: index PNGs named like the images "
                  "(searched recursively), or, for panoptic data, the COCO-panoptic PNGs --pred-json lists")
    add_flag(parser, "pred-json", default=None, metavar="FILE",
             help="the COCO-panoptic predictions JSON (annotations with image_id, file_name, segments_info) of "
                  "--pred-dir's PNGs (default: <pred-dir>.json, as panopticapi pairs them)")
    add_flag(parser, "out-dir", default=None,
             help="report folder (default: eval_<split>[_ms][_flip] beside the checkpoint, or beside --pred-dir)")
    add_flag(parser, "workers", type=non_negative_int, default=0, help="DataLoader worker processes")
    return parser


def inference_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="inference.py",
                    description="Segment every image of a folder with a trained network: index PNG masks in the "
                                "dataset's palette and colour overlays. A panoptic network can segment a dataset "
                                "split instead (--split), writing COCO-panoptic predictions that panopticapi and "
                                "evaluate.py --pred-dir score.")
    add_prediction_flags(parser)
    add_flag(parser, "in_path", default=None, metavar="PATH", help="an image, or a folder searched recursively")
    add_dataset_arguments(parser)
    add_flag(parser, "split", default=None,
             help="instead of --in-path, segment this split of the dataset (a panoptic network only; dataset flags "
                  "default to the checkpoint's): each prediction carries the image's id and PNG file name")
    add_flag(parser, "out_path", required=True, metavar="DIR",
             help="output folder: masks/<name>.png (index PNG) and overlays/<name>.jpg, keeping sub-folders")
    add_flag(parser, "overlay_alpha", type=float, default=0.5, help="weight of the class colours in the overlays")
    return parser
