"""Entry-point plumbing shared by the stage scripts: one readable line for user mistakes."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

import torch

from engine.interrupt import RunInterrupted
from utils.errors import UserError


def run_cli(main: Callable[[], object], prog: str) -> None:
    """Run ``main``; a ``UserError`` becomes ``prog: error: message`` and exit status 2, an interrupted
    run ``prog: message`` and 128 + the signal number, and a Ctrl-C outside a training loop (which keeps no
    state to save) ``prog: interrupted by Ctrl-C`` and 130: one line, never a traceback."""
    try:
        main()
    except UserError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        sys.exit(2)
    except RunInterrupted as exc:
        _rank_zero_says(f"{prog}: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _rank_zero_says(f"{prog}: interrupted by Ctrl-C")
        sys.exit(128 + signal.SIGINT)


def _rank_zero_says(line: str) -> None:
    """Under torchrun every rank stops; rank 0 speaks."""
    if os.environ.get("RANK", "0") == "0":
        sys.stderr.write(f"{line}\n")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: expected 'auto', 'cpu' or 'cuda[:N]'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device
