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

from config_utils.common import explicit_dests, resumed_arguments
from config_utils.recipes import fill_recipe_defaults
from config_utils.search_args import search_parser
from dataloaders import resolve_num_classes
from engine.checkpoint import load_checkpoint
from engine.cli import run_cli
from engine.run_dir import check_run_output
from engine.trainer import Hook
from modeling.autodeeplab.genotype import Architecture
from search.registry import run_search
from utils.errors import UserError
from utils.flags import locked_dests

SYSTEM = Architecture.system


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict | None]:
    """The arguments, and the checkpoint being resumed (whose own arguments fill unset flags)."""
    parser = search_parser()
    args = parser.parse_args(argv)
    if args.filter_multiplier % args.partial_channels:
        raise UserError(f"--partial_channels {args.partial_channels}: must divide --filter_multiplier "
                        f"{args.filter_multiplier} (the channels of every level)")
    if args.resume:
        resumed = load_checkpoint(args.resume, stage="search", system=SYSTEM)
        return resumed_arguments(args.resume, resumed["args"], args, explicit_dests(parser, argv),
                                 locked_dests(parser)), resumed
    fill_recipe_defaults(args, SYSTEM, "search", required=("epochs", "alpha_epoch", "batch_size", "crop_size"))
    args.num_classes = resolve_num_classes(args)
    return args, None


def main(argv: list[str] | None = None, hooks: Sequence[Hook] = ()) -> Path | None:
    """Run the search; under torchrun every process calls this, and rank 0 returns the run directory.
    ``hooks`` join the training loop's (before its own), e.g. to watch or interrupt a run in a test."""
    args, resumed = parse_args(argv)
    check_run_output(args)
    return run_search(SYSTEM, "train_autodeeplab.py", args, resumed, argv, hooks)


if __name__ == "__main__":
    run_cli(main, "train_autodeeplab.py")
