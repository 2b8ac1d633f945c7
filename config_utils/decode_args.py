"""Arguments of the decode stage (decode_autodeeplab.py)."""

from __future__ import annotations

import argparse

from engine.run_dir import resume_checkpoint
from utils.flags import Parser, add_flag, non_negative_int, positive_int


def decode_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="decode_autodeeplab.py",
                    description="Decode a search checkpoint of any system into architecture.json and "
                                "architecture.png: for Auto-DeepLab the Viterbi network path and cell genotype (quick"
                                "); for the nas-segm decoder search the best-scored candidate (the ranking is "
                                "printed; quick); for Auto-Panoptic each layer's best op on the path-priority greedy "
                                "search's scoreboard, which train_autopanoptic.py fills (quick; a search run with "
                                "--no-greedy-search or stopped during its greedy search has the rest of it run here, "
                                "on one process, resuming where it stopped: the paper scores 60 candidate paths, each "
                                "on 5,000 held-out images after 500 batches of BatchNorm recalibration).")
    parser.add_config_flag()
    add_flag(parser, "resume", type=resume_checkpoint, default=None, metavar="CHECKPOINT",
             help="search checkpoint, or its run directory (default: the newest "
                  "run/<dataset>/*/experiment_*/checkpoint.pth.tar of a search of any system)")
    add_flag(parser, "dataset", default="synthetic",
             help="dataset of the search run, used to find the newest checkpoint when --resume is not given")
    add_flag(parser, "out-dir", default=None,
             help="where to write the files (default: beside the checkpoint; with --strategy random, its "
                  "random_seed<N>/ folder)")
    add_flag(parser, "top-k", type=positive_int, default=10,
             help="a search of many candidates (nas-segm): how many of the best to print (default: %(default)s)")
    add_flag(parser, "strategy", default="search", choices=("search", "random"),
             help="search: the search's own decision (default); random: the random-search baseline on the same "
                  "space and supernet (Auto-DeepLab, Auto-Panoptic; the decoder search's is train_nas_segm.py "
                  "--agent random)")
    add_flag(parser, "random-candidates", type=positive_int, default=None,
             help="--strategy random: architectures to draw uniformly; with more than one, each is scored by the "
                  "supernet (Auto-DeepLab: validation mIoU with alpha and beta one-hot; Auto-Panoptic: held-out PQ "
                  "after BatchNorm recalibration) and the best kept (default: Auto-DeepLab 1, Auto-Panoptic as many "
                  "as its greedy search scores)")
    add_flag(parser, "seed", type=non_negative_int, default=0,
             help="--strategy random: seed of the drawn architectures (default: %(default)s)")
    return parser
