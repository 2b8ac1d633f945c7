"""Argument parsing shared by the stage scripts.

Every flag is accepted in both spellings the public implementations used (``--batch_size`` and
``--batch-size``); ``add_flag`` registers both under one destination. Parse errors are one line
(``prog: error: ...``) with no usage dump, like every other user mistake.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from utils.errors import UserError


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are a single readable line."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def add_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, *aliases: str,
             **kwargs: Any) -> argparse.Action:
    """Add ``--name`` with its underscore and dash spellings (plus ``aliases``) as one flag."""
    stem = name.lstrip("-")
    spellings = [f"--{stem}"]
    for variant in (stem.replace("-", "_"), stem.replace("_", "-")):
        if f"--{variant}" not in spellings:
            spellings.append(f"--{variant}")
    spellings.extend(a for a in aliases if a not in spellings)
    kwargs.setdefault("dest", stem.replace("-", "_"))
    return parser.add_argument(*spellings, **kwargs)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def add_training_flags(parser: argparse.ArgumentParser, experiment: str) -> None:
    """Flags every training stage shares; dataset-dependent defaults are filled in later."""
    add_flag(parser, "epochs", type=positive_int, default=None,
             help="number of epochs (default: the dataset's default for this stage)")
    add_flag(parser, "batch_size", type=positive_int, default=None,
             help="images per optimisation step (default: the dataset's default; at least 2)")
    add_flag(parser, "crop_size", type=positive_int, default=None,
             help="side of the square training crops (default: the dataset's default)")
    add_flag(parser, "workers", type=non_negative_int, default=0, help="DataLoader worker processes")
    add_flag(parser, "seed", type=int, default=1, help="seed for initialisation, data order and augmentation")
    add_flag(parser, "out-dir", default=None,
             help=f"run directory (default: a new run/<dataset>/{experiment}/experiment_<N>)")
    add_flag(parser, "checkname", default=experiment, help="experiment name used in the default run directory")
    add_flag(parser, "resume", default=None, metavar="CHECKPOINT",
             help="continue the run that wrote this checkpoint.pth.tar, in its own directory")
    add_flag(parser, "device", default="auto", help="'auto' (CUDA when available), 'cpu' or 'cuda[:N]'")
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


_UNSET = object()


def explicit_dests(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """Destinations of the flags actually given on the command line (not filled from defaults)."""
    namespace = argparse.Namespace(**{a.dest: _UNSET for a in parser._actions if a.dest != "help"})
    parser.parse_args(argv, namespace=namespace)
    return {dest for dest, value in vars(namespace).items() if value is not _UNSET}


def resumed_arguments(checkpoint: str, saved: dict[str, Any], args: argparse.Namespace, explicit: set[str],
                      locked: tuple[str, ...]) -> argparse.Namespace:
    """The run's own arguments from its checkpoint, overridden by flags given now.

    A flag in ``locked`` shapes the run (model, data order, schedule); giving it a different
    value is refused, naming every such flag.
    """
    diffs = [f"--{key} {getattr(args, key)!r} (checkpoint has {saved.get(key)!r})"
             for key in locked if key in explicit and getattr(args, key) != saved.get(key)]
    if diffs:
        raise UserError(f"{checkpoint}: cannot resume with a different {', '.join(diffs)}; "
                        "drop these flags to continue the run as it was started")
    merged = dict(saved)
    merged.update({key: value for key, value in vars(args).items() if key in explicit or key not in saved})
    return argparse.Namespace(**merged)
