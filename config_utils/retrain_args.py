"""Arguments of the retrain stage (train_new_model.py)."""

from __future__ import annotations

import argparse

from config_utils.common import Parser, add_flag, add_training_flags, positive_int
from dataloaders import add_dataset_arguments
from modeling.genotypes import PAPER_ARCHITECTURE_PATH


def retrain_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="train_new_model.py",
                    description="Train a searched architecture (architecture.json) from scratch as a "
                                "segmentation network and evaluate it.")
    add_dataset_arguments(parser)
    add_training_flags(parser, experiment="retrain")
    add_flag(parser, "saved_arch_path", default=str(PAPER_ARCHITECTURE_PATH),
             help="architecture.json, or a run directory holding one (default: the paper's architecture)")
    add_flag(parser, "filter_multiplier", type=positive_int, default=20,
             help="F of the retrained network: 20/32/48 give Auto-DeepLab-S/M/L (default: %(default)s)")
    add_flag(parser, "scale_range", type=float, nargs=2, default=[0.5, 2.0], metavar=("MIN", "MAX"),
             help="random scale augmentation range before cropping (default: 0.5 2.0)")
    add_flag(parser, "summary", action="store_true",
             help="print parameters and Multi-Adds per component and exit (no data needed)")
    add_flag(parser, "input_size", type=positive_int, nargs=2, default=[1025, 2049], metavar=("H", "W"),
             help="input size for the --summary Multi-Adds (default: 1025 2049, the paper's)")
    opt = parser.add_argument_group("optimisation")
    add_flag(opt, "base_lr", "--lr", type=float, default=0.05, help="initial learning rate of the poly schedule")
    add_flag(opt, "poly_power", type=float, default=0.9)
    add_flag(opt, "momentum", type=float, default=0.9)
    add_flag(opt, "weight_decay", type=float, default=4e-5, help="the official network's weight decay")
    return parser
