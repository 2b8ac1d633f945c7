"""Flags shared by the stage scripts (training, device, checkpoint) and the resume rules.

The flag machinery itself (``Parser``, ``add_flag``, converters) is ``utils.flags``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from config_utils.recipes import fill_recipe_defaults
from dataloaders import resolve_num_classes
from engine.checkpoint import load_checkpoint
from engine.run_dir import resume_checkpoint
from utils.errors import UserError
from utils.flags import add_flag, locked_dests, non_negative_int, positive_int


def add_device_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    add_flag(parser, "device", default="auto", help="'auto' (CUDA when available), 'cpu' or 'cuda[:N]'")


def add_resume_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str = "run") -> None:
    """--resume: a checkpoint.pth.tar, or the run directory that holds it."""
    add_flag(parser, "resume", type=resume_checkpoint, default=None, metavar="CHECKPOINT",
             help=f"continue the {what} that wrote this checkpoint.pth.tar (or its run directory), in its own "
                  "directory")


def add_checkpoint_flag(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--ckpt: the trained network that evaluation, inference and export read (evaluation may score prediction
    files instead, so it checks the flag itself)."""
    add_flag(parser, "ckpt", required=required, metavar="FILE", default=None,
             help="a retrain checkpoint (model_best.pth.tar or checkpoint.pth.tar)")


def add_training_flags(parser: argparse.ArgumentParser, experiment: str) -> None:
    """Flags every training stage shares; dataset-dependent defaults are filled in later."""
    add_flag(parser, "epochs", type=positive_int, default=None, locked=True,
             help="number of epochs (default: the dataset's default for this stage)")
    add_flag(parser, "batch_size", type=positive_int, default=None, locked=True,
             help="images per optimisation step (default: the dataset's default; at least 2)")
    add_flag(parser, "crop_size", type=positive_int, default=None,
             help="side of the square training crops (default: the dataset's default)")
    add_flag(parser, "workers", type=non_negative_int, default=0, help="DataLoader worker processes")
    add_flag(parser, "seed", type=int, default=1, locked=True,
             help="seed for initialisation, data order and augmentation")
    add_flag(parser, "out-dir", default=None,
             help=f"run directory (default: a new run/<dataset>/{experiment}/experiment_<N>)")
    add_flag(parser, "checkname", default=experiment, help="experiment name used in the default run directory")
    add_resume_flag(parser)
    add_device_flag(parser)
    add_flag(parser, "eval_interval", type=positive_int, default=1, help="validate every N epochs")
    scale = parser.add_argument_group("multi-process and mixed precision")
    add_flag(scale, "local_rank", type=int, default=None,
             help="set by 'python -m torch.distributed.launch'; torchrun sets LOCAL_RANK instead")
    add_flag(scale, "sync_bn", action=argparse.BooleanOptionalAction, default=True,
             help="BatchNorm statistics over all GPUs when several CUDA processes search or retrain (default: "
                  "on; per-process statistics on CPU, where SyncBatchNorm does not run)")
    add_flag(scale, "amp", action="store_true",
             help="mixed precision with torch.autocast (α, β and their softmax stay float32)")
    add_flag(scale, "amp_dtype", default="auto", choices=("auto", "bf16", "fp16"),
             help="autocast dtype: auto = fp16 with loss scaling on CUDA, bf16 on CPU")
    add_flag(scale, "compile", action=argparse.BooleanOptionalAction, default=False,
             help="compile the training step with torch.compile (inductor; on CPU it needs a C++ compiler): the "
                  "first steps pay the compile time; docs/benchmarks.md measures when that pays off (default: off; "
                  "a resumed run keeps its choice unless given --compile or --no-compile)")


_UNSET = object()


def explicit_dests(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """Destinations of the flags actually given on the command line (not filled from defaults). Flags ``parser``
    does not know are left out, so this also finds which of its flags a command line meant for another parser
    gives (the Auto-Panoptic retrain's, asked for the flags of the other networks)."""
    namespace = argparse.Namespace(**{a.dest: _UNSET for a in parser._actions if a.dest != "help"})
    parser.parse_known_args(argv, namespace=namespace)
    return {dest for dest, value in vars(namespace).items() if value is not _UNSET}


def chosen_dests(make_parser: Callable[[], argparse.ArgumentParser], argv: list[str] | None,
                 args: argparse.Namespace) -> set[str]:
    """The flags the user chose: given on the command line, or set by ``--config`` to another value than the
    default (a replayed args.json lists every flag, so only its changes count). ``args`` is the parse of ``argv``;
    defaults and the recipe's values never count."""
    defaults = vars(make_parser().parse_args([]))
    return explicit_dests(make_parser(), argv) | {dest for dest, value in vars(args).items()
                                                  if dest in defaults and value != defaults[dest]}


def resumed_arguments(checkpoint: str, saved: dict[str, Any], args: argparse.Namespace, explicit: set[str],
                      locked: tuple[str, ...]) -> argparse.Namespace:
    """The run's own arguments from its checkpoint, overridden by flags given now.

    A flag in ``locked`` (``locked_dests(parser)``) shapes the run (model, data order, schedule); giving it
    a different value is refused, naming every such flag.
    """
    diffs = [f"--{key} {getattr(args, key)!r} (checkpoint has {saved.get(key)!r})"
             for key in locked if key in explicit and getattr(args, key) != saved.get(key)]
    if diffs:
        raise UserError(f"{checkpoint}: cannot resume with a different {', '.join(diffs)}; "
                        "drop these flags to continue the run as it was started")
    merged = dict(saved)
    merged.update({key: value for key, value in vars(args).items() if key in explicit or key not in saved})
    return argparse.Namespace(**merged)


def parse_stage_args(parser: argparse.ArgumentParser, argv: list[str] | None, system: str, stage: str,
                     recipe_flags: tuple[str, ...], prepare: Callable[[argparse.Namespace], None] | None = None,
                     check: Callable[[argparse.Namespace], None] | None = None
                     ) -> tuple[argparse.Namespace, dict[str, Any] | None]:
    """A stage script's arguments, and the checkpoint being resumed (whose own arguments fill unset flags and
    keep the locked ones). A fresh run: ``prepare(args)``, then the recipe of (``system``, ``stage``, dataset)
    fills the unset ``recipe_flags``, the class count is resolved, and ``check(args)`` refuses bad values."""
    args = parser.parse_args(argv)
    if args.resume:
        resumed = load_checkpoint(args.resume, stage=stage, system=system)
        return resumed_arguments(args.resume, resumed["args"], args, explicit_dests(parser, argv),
                                 locked_dests(parser)), resumed
    if prepare is not None:
        prepare(args)
    fill_recipe_defaults(args, system, stage, required=recipe_flags)
    args.num_classes = resolve_num_classes(args)
    if check is not None:
        check(args)
    return args, None
