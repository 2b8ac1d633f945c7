"""Stage 3: retrain a decoded architecture (or the DeepLabV3+ baseline) from scratch and evaluate it.

What the network predicts decides the retrain (``modeling.registry.ModelSpec.task``): a semantic network (an
Auto-DeepLab or decoder-search architecture, or ``--model deeplabv3plus``) trains for epochs of crops and is
validated by mIoU (``retrain.semantic``); an Auto-Panoptic architecture trains for iterations with the original's
multi-step schedule and is validated by PQ (``retrain.panoptic``). Each keeps its own flags; ``--help`` shows the
semantic retrain's, and ``--saved_arch_path FILE --help`` those of the file's retrain.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from config_utils.autopanoptic_args import autopanoptic_retrain_parser
from config_utils.common import explicit_dests
from config_utils.retrain_args import retrain_parser
from engine.checkpoint import load_checkpoint
from engine.cli import run_cli
from engine.distributed import run_in_process_group
from engine.run_dir import check_run_output, resume_checkpoint
from engine.trainer import Hook
from modeling.architecture_file import load_architecture
from modeling.registry import checkpoint_model, model_for_system, refuse_unread_flags
from retrain import network
from retrain import panoptic as panoptic_retrain
from retrain import semantic as semantic_retrain
from utils.errors import UserError

RETRAINS = {"semantic": semantic_retrain, "panoptic": panoptic_retrain}  # a network's task -> its retrain


def refuse_the_other_retrains_flags(argv: list[str] | None, task: str) -> None:
    """The semantic retrain counts epochs of crops and the panoptic one iterations of resized images, so each takes
    flags the other does not: one of the other's is refused naming the architectures it applies to, where argparse
    would only call it unrecognized. A flag of a semantic network given for the one panoptic network is refused
    naming the networks that read it."""
    panoptic = task == "panoptic"
    if panoptic:
        refuse_unread_flags(model_for_system(panoptic_retrain.SYSTEM), explicit_dests(retrain_parser(), argv))
    own, other = ((autopanoptic_retrain_parser(), retrain_parser()) if panoptic
                  else (retrain_parser(), autopanoptic_retrain_parser()))
    own_flags, other_flags = ({flag for action in parser._actions for flag in action.option_strings}
                              for parser in (own, other))
    for token in sys.argv[1:] if argv is None else argv:
        flag = token.split("=", 1)[0]
        if flag.startswith("--") and flag not in own_flags and flag in other_flags:
            applies, given = (("semantic", "an Auto-Panoptic") if panoptic else ("Auto-Panoptic", "a semantic"))
            raise UserError(f"{flag}: applies to {applies} architectures only; this retrain is of {given} one")


def retrain_task(argv: list[str] | None) -> str:
    """The task of the network the command retrains: the resumed checkpoint's network's, else that of the
    network registered for the architecture file's system, else semantic (``--model``'s networks)."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--saved_arch_path", "--saved-arch-path")
    probe.add_argument("--resume", type=resume_checkpoint)
    known, _ = probe.parse_known_args(argv)
    if known.resume:
        return checkpoint_model(load_checkpoint(known.resume, stage="retrain"), str(known.resume))[0].task
    if known.saved_arch_path:
        return model_for_system(load_architecture(known.saved_arch_path).system).task
    return "semantic"


def main(argv: list[str] | None = None, hooks: Sequence[Hook] = ()) -> Path | None:
    """Retrain (or print --summary); under torchrun every process calls this, and rank 0 returns the run directory.
    ``hooks`` join the training loop's (before its own), e.g. to watch or interrupt a run in a test."""
    task = retrain_task(argv)
    refuse_the_other_retrains_flags(argv, task)
    stage = RETRAINS[task]
    args, resumed = stage.parse_args(argv)
    if args.summary:
        spec, genotype = network(args, None)
        print(spec.summary(vars(args), genotype, tuple(args.input_size)))
        return None
    check_run_output(args)
    run_dir = run_in_process_group(args, lambda context: stage.retrain(args, resumed, context, argv, hooks))
    return run_dir.path if run_dir is not None else None


if __name__ == "__main__":
    run_cli(main, "train_new_model.py")
