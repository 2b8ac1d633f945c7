"""Arguments of export.py."""

from __future__ import annotations

import argparse

from config_utils.common import add_checkpoint_flag
from utils.flags import Parser, add_flag, positive_int

FORMATS = ("onnx",)
MIN_OPSET = 18  # torch's exporter writes 18; its conversion to older opsets fails on this network


def export_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="export.py",
                    description="Export a trained network to a self-contained ONNX file with a free batch size, "
                                "checked against PyTorch with onnxruntime.")
    add_checkpoint_flag(parser)
    add_flag(parser, "format", choices=FORMATS, default="onnx", help="export format (default: %(default)s)")
    add_flag(parser, "input_size", type=positive_int, nargs=2, required=True, metavar=("H", "W"),
             help="height and width of the images the exported network takes")
    add_flag(parser, "out", default=None, metavar="FILE",
             help="output file (default: the checkpoint's name with .onnx, beside it)")
    add_flag(parser, "opset", type=int, default=MIN_OPSET,
             help=f"ONNX opset version, at least {MIN_OPSET} (default: %(default)s)")
    return parser
