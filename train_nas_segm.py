"""Stage 1 of the decoder search (Nekrasov et al., CVPR 2019 / WACV 2020): an LSTM controller samples decoders for
a MobileNetV2 encoder; each candidate trains in two stages (the decoder alone on encoder features cached once,
then end to end), is scored on a held-out part of the training split by the geometric mean of mIoU, mean accuracy
and frequency-weighted IoU, and the score rewards the controller (PPO by default).

Every candidate is one line of ``candidates.jsonl``; ``checkpoint.pth.tar`` is written after each round, and
``--resume`` (or a rerun after SIGTERM) continues exactly. ``decode_autodeeplab.py --resume RUN`` then ranks the
candidates and writes the best one as ``architecture.json``, which ``train_new_model.py`` retrains. The search
itself is ``search.nas_segm.stage.search``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from config_utils.common import parse_stage_args
from config_utils.nas_segm_args import nas_segm_parser
from config_utils.recipes import SPACE_DEFAULTS, recipe
from engine.cli import run_cli
from engine.run_dir import check_run_output
from engine.trainer import Hook
from modeling.nas_segm.genotype import DecoderGenotype
from search.registry import run_search
from utils.errors import UserError

SYSTEM = DecoderGenotype.system
RECIPE_FLAGS = ("space", "num_candidates", "n_task0", "batch_size", "crop_size", "resize_side", "resize_longer_side",
                "val_resize_side", "val_crop_size", "val_batch_size", "val_omit_classes", "num_segm_epochs",
                "val_every", "enc_optim", "dec_optim", "enc_lr", "dec_lr", "enc_mom", "dec_mom", "enc_wd", "dec_wd",
                "dec_aux_weight", "aux_cell")


def check_args(args: argparse.Namespace) -> None:
    for stage in (0, 1):
        if args.num_segm_epochs[stage] % args.val_every[stage]:
            raise UserError(f"--val-every {args.val_every[0]} {args.val_every[1]}: must divide --num-segm-epochs "
                            f"{args.num_segm_epochs[0]} {args.num_segm_epochs[1]} stage by stage (a candidate's "
                            "reward is its last score)")
    if not 0 < args.meta_train_prct < 100:
        raise UserError(f"--meta-train-prct {args.meta_train_prct}: expected a percentage in 1..99")
    if args.do_kd and not args.kd_teacher:
        raise UserError("--do-kd: needs --kd-teacher RUN/model_best.pth.tar, a network retrained with this project "
                        "(the original's RefineNet-152 teacher can no longer be downloaded)")
    if args.kd_teacher and not Path(args.kd_teacher).is_file():
        raise UserError(f"--kd-teacher {args.kd_teacher}: file not found")
    bad = [c for c in args.val_omit_classes if c >= args.num_classes]
    if bad:
        raise UserError(f"--val-omit-classes {bad[0]}: the dataset has classes 0..{args.num_classes - 1}")


def space_defaults(args: argparse.Namespace) -> None:
    """A --space other than the dataset recipe's brings that space's own settings for the flags left unset."""
    if args.space is not None and args.space != recipe(SYSTEM, "search", args.dataset).get("space"):
        for flag, value in SPACE_DEFAULTS[args.space].items():
            if getattr(args, flag) is None:
                setattr(args, flag, value)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict | None]:
    """The arguments, and the checkpoint being resumed (whose own arguments fill unset flags)."""
    return parse_stage_args(nas_segm_parser(), argv, SYSTEM, "search", RECIPE_FLAGS, prepare=space_defaults,
                            check=check_args)


def main(argv: list[str] | None = None, hooks: Sequence[Hook] = ()) -> Path | None:
    """Run the search; under torchrun every process calls this, and rank 0 returns the run directory.
    ``hooks`` join every candidate's training loop (before its own), e.g. to interrupt a run in a test."""
    args, resumed = parse_args(argv)
    check_run_output(args)
    return run_search(SYSTEM, "train_nas_segm.py", args, resumed, argv, hooks)


if __name__ == "__main__":
    run_cli(main, "train_nas_segm.py")
