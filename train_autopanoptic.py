"""Stage 1 of Auto-Panoptic (Wu et al., NeurIPS 2020): train the one-shot Panoptic-FPN supernet with fair path
sampling, then run the path-priority greedy search on it. The supernet's 56 choice layers (40 backbone blocks of 4
ops, 4 mask-head and 3 semantic-subnet layers of 6 ops, 9 inter-modular attention layers of 3 reductions at the
paper's sizes) take one op each per iteration; over every 12 iterations each op of each layer is used equally often,
and the optimiser steps once on the summed gradients. The greedy search then scores cycles of 12 fairly sampled
candidate paths by held-out PQ after BatchNorm recalibration, one candidate per process at a time under torchrun.

``checkpoint.pth.tar`` is written every ``--checkpoint-period`` iterations, after each pass over the data and on
SIGTERM, and ``greedy_search.json`` after every round of candidates; ``--resume`` continues either exactly.
``decode_autodeeplab.py --resume RUN`` then writes ``architecture.json`` from the search's scoreboard. The stage
itself is ``search.autopanoptic.stage.search``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from config_utils.autopanoptic_args import RECIPE_FLAGS, autopanoptic_parser, check_group_norm_widths
from config_utils.common import parse_stage_args
from dataloaders import require_panoptic_dataset
from engine.cli import run_cli
from engine.run_dir import check_run_output
from engine.trainer import Hook
from modeling.autopanoptic.genotype import PanopticGenotype
from search.registry import run_search
from utils.errors import UserError

SYSTEM = PanopticGenotype.system


def check_args(args: argparse.Namespace) -> None:
    check_group_norm_widths(args)
    if args.warmup_iters >= args.max_iter:
        raise UserError(f"--warmup-iters {args.warmup_iters}: must be below --max-iter {args.max_iter}")
    if args.backbone_weights and not Path(args.backbone_weights).is_file():
        raise UserError(f"--backbone-weights {args.backbone_weights}: file not found")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict | None]:
    """The arguments, and the checkpoint being resumed (whose own arguments fill unset flags)."""
    return parse_stage_args(autopanoptic_parser(), argv, SYSTEM, "search", RECIPE_FLAGS,
                            prepare=lambda args: require_panoptic_dataset(args.dataset), check=check_args)


def main(argv: list[str] | None = None, hooks: Sequence[Hook] = ()) -> Path | None:
    """Train the supernet; under torchrun every process calls this, and rank 0 returns the run directory.
    ``hooks`` join the training loop (before its own), e.g. to interrupt a run in a test."""
    args, resumed = parse_args(argv)
    check_run_output(args)
    return run_search(SYSTEM, "train_autopanoptic.py", args, resumed, argv, hooks)


if __name__ == "__main__":
    run_cli(main, "train_autopanoptic.py")
