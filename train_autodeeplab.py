"""Stage 1: Auto-DeepLab architecture search.

First-order bi-level optimisation on two disjoint, seeded halves of the training set: the
supernet's weights take an SGD step on a trainA batch, then (from --alpha_epoch on) α and β take
an Adam step on a trainB batch. Every epoch validates, logs the decoded architecture and writes
``checkpoint.pth.tar`` (and ``model_best.pth.tar`` on a new best mIoU). The search itself is
``search.autodeeplab.stage.search``, run by the shared training loop (``engine.trainer``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from config_utils.common import parse_stage_args
from config_utils.search_args import search_parser
from engine.cli import run_cli
from engine.run_dir import check_run_output
from engine.trainer import Hook
from modeling.autodeeplab.genotype import Architecture
from search.registry import run_search
from utils.errors import UserError

SYSTEM = Architecture.system
RECIPE_FLAGS = ("epochs", "alpha_epoch", "batch_size", "crop_size")  # the recipe must fill them


def check_args(args: argparse.Namespace) -> None:
    if args.filter_multiplier % args.partial_channels:
        raise UserError(f"--partial_channels {args.partial_channels}: must divide --filter_multiplier "
                        f"{args.filter_multiplier} (the channels of every level)")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict | None]:
    """The arguments, and the checkpoint being resumed (whose own arguments fill unset flags)."""
    return parse_stage_args(search_parser(), argv, SYSTEM, "search", RECIPE_FLAGS, check=check_args)


def main(argv: list[str] | None = None, hooks: Sequence[Hook] = ()) -> Path | None:
    """Run the search; under torchrun every process calls this, and rank 0 returns the run directory.
    ``hooks`` join the training loop's (before its own), e.g. to watch or interrupt a run in a test."""
    args, resumed = parse_args(argv)
    check_run_output(args)
    return run_search(SYSTEM, "train_autodeeplab.py", args, resumed, argv, hooks)


if __name__ == "__main__":
    run_cli(main, "train_autodeeplab.py")
