"""Arguments of the decode stage (decode_autodeeplab.py)."""

from __future__ import annotations

import argparse

from utils.flags import Parser, add_flag


def decode_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="decode_autodeeplab.py",
                    description="Decode a search checkpoint into architecture.json (Viterbi network path and "
                                "cell genotype) and architecture.png.")
    parser.add_config_flag()
    add_flag(parser, "resume", default=None, metavar="CHECKPOINT",
             help="search checkpoint, or its run directory (default: the newest "
                  "run/<dataset>/*/experiment_*/checkpoint.pth.tar of a search)")
    add_flag(parser, "dataset", default="synthetic",
             help="dataset of the search run, used to find the newest checkpoint when --resume is not given")
    add_flag(parser, "out-dir", default=None, help="where to write the files (default: beside the checkpoint)")
    return parser
