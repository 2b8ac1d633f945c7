"""Arguments of the decode stage (decode_autodeeplab.py)."""

from __future__ import annotations

import argparse

from utils.flags import Parser, add_flag, positive_int


def decode_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="decode_autodeeplab.py",
                    description="Decode a search checkpoint into architecture.json and architecture.png: for "
                                "Auto-DeepLab the Viterbi network path and cell genotype, for the nas-segm decoder "
                                "search the best-scored candidate (the ranking is printed).")
    parser.add_config_flag()
    add_flag(parser, "resume", default=None, metavar="CHECKPOINT",
             help="search checkpoint, or its run directory (default: the newest "
                  "run/<dataset>/*/experiment_*/checkpoint.pth.tar of a search)")
    add_flag(parser, "dataset", default="synthetic",
             help="dataset of the search run, used to find the newest checkpoint when --resume is not given")
    add_flag(parser, "out-dir", default=None, help="where to write the files (default: beside the checkpoint)")
    add_flag(parser, "top-k", type=positive_int, default=10,
             help="a search of many candidates (nas-segm): how many of the best to print (default: %(default)s)")
    return parser
