"""Arguments of evaluate.py and inference.py: a trained checkpoint and how to predict with it."""

from __future__ import annotations

import argparse

from config_utils.common import add_checkpoint_flag, add_device_flag
from dataloaders import add_dataset_arguments
from utils.flags import Parser, add_flag, non_negative_int, positive_float, positive_int


def add_prediction_flags(parser: argparse.ArgumentParser) -> None:
    """The checkpoint, the test-time augmentation and the device, shared by evaluation and inference."""
    add_checkpoint_flag(parser)
    add_flag(parser, "eval_scales", type=positive_float, nargs="+", default=[1.0], metavar="SCALE",
             help="average the predictions at these input scales, e.g. 0.5 0.75 1.0 1.25 1.5 1.75 (default: 1.0)")
    add_flag(parser, "flip", action="store_true", help="also average the predictions of mirrored inputs")
    add_flag(parser, "resize", type=positive_int, default=None,
             help="resize the short side of the network's input to this (default: none); scores are taken, and "
                  "masks written, at each image's own size all the same")
    add_device_flag(parser)


def eval_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="evaluate.py",
                    description="Evaluate a trained network on a dataset split: mIoU, per-class IoU (table and "
                                "CSV), pixel accuracy, mean class accuracy, frequency-weighted IoU and a "
                                "confusion-matrix picture. Dataset flags default to the checkpoint's.")
    add_prediction_flags(parser)
    add_dataset_arguments(parser)
    add_flag(parser, "split", default="val", help="split to evaluate (default: %(default)s)")
    add_flag(parser, "out-dir", default=None,
             help="report folder (default: eval_<split>[_ms][_flip] beside the checkpoint)")
    add_flag(parser, "workers", type=non_negative_int, default=0, help="DataLoader worker processes")
    return parser


def inference_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="inference.py",
                    description="Segment every image of a folder with a trained network: index PNG masks in the "
                                "dataset's palette and colour overlays.")
    add_prediction_flags(parser)
    add_flag(parser, "in_path", required=True, metavar="PATH", help="an image, or a folder searched recursively")
    add_flag(parser, "out_path", required=True, metavar="DIR",
             help="output folder: masks/<name>.png (index PNG) and overlays/<name>.jpg, keeping sub-folders")
    add_flag(parser, "overlay_alpha", type=float, default=0.5, help="weight of the class colours in the overlays")
    return parser
