"""Entry-point plumbing shared by the stage scripts: one readable line for user mistakes."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch

from utils.errors import UserError
from utils.interrupt import RunInterrupted


def run_cli(main: Callable[[], object], prog: str) -> None:
    """Run ``main``; a ``UserError`` becomes ``prog: error: message`` and exit status 2, an interrupted
    run (checkpoint written) ``prog: message`` and 128 + the signal number."""
    try:
        main()
    except UserError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        sys.exit(2)
    except RunInterrupted as exc:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank stops; rank 0 speaks
            sys.stderr.write(f"{prog}: {exc}\n")
        sys.exit(exc.exit_code)


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
