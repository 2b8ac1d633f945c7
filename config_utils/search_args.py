"""Arguments of the search stage (train_autodeeplab.py); defaults are the paper's (Sec. 5.1).
Unset training flags come from the recipe (``config_utils.recipes``)."""

from __future__ import annotations

import argparse

from config_utils.common import add_training_flags
from dataloaders import add_dataset_arguments
from utils.flags import Parser, add_flag, positive_int


def search_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="train_autodeeplab.py",
                    description="Auto-DeepLab architecture search: bi-level optimisation of the supernet's "
                                "weights (on trainA) and its α/β (on trainB).")
    parser.add_config_flag()
    add_dataset_arguments(parser)
    add_training_flags(parser, experiment="search")
    add_flag(parser, "resize", type=positive_int, default=None,
             help="resize the short side to this before cropping (default: the dataset's default)")
    space = parser.add_argument_group("search space")
    add_flag(space, "filter_multiplier", type=positive_int, default=8, locked=True,
             help="F: channels per block at stride 4")
    add_flag(space, "block_multiplier", type=positive_int, default=5, locked=True,
             help="number of block outputs concatenated into the cell output")
    add_flag(space, "steps", type=positive_int, default=5, locked=True, help="B: blocks per cell")
    add_flag(space, "num_layers", type=positive_int, default=12, locked=True, help="L: layers of the supernet")
    add_flag(parser, "partial_channels", type=positive_int, default=1, locked=True, metavar="K",
             help="PC-DARTS: each edge's ops see 1/K of the channels (must divide F; default 1 = all, exact)")
    add_flag(parser, "checkpoint_cells", action="store_true",
             help="activation checkpointing of the supernet's cells: less memory, more compute, same results")
    opt = parser.add_argument_group("optimisation")
    add_flag(opt, "lr", type=float, default=0.025, help="weight learning rate (cosine decay)")
    add_flag(opt, "min_lr", type=float, default=0.001, help="final weight learning rate")
    add_flag(opt, "momentum", type=float, default=0.9)
    add_flag(opt, "weight_decay", type=float, default=3e-4)
    add_flag(opt, "grad_clip", type=float, default=5.0,
             help="clip the weight gradients to this global norm, as DARTS does (0 disables)")
    add_flag(opt, "arch_lr", type=float, default=3e-3, help="Adam learning rate of α and β")
    add_flag(opt, "arch_weight_decay", type=float, default=1e-3)
    add_flag(opt, "alpha_epoch", type=int, default=None,
             help="first epoch (0-based) with architecture steps (default: the dataset's; the paper's "
                  "20 of 40 epochs where the dataset sets none)")
    return parser
