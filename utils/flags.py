"""Command-line flags: a parser whose errors are one line, flags in both spellings, and value converters.

Every flag is accepted in both spellings the public implementations used (``--batch_size`` and
``--batch-size``); ``add_flag`` registers both under one destination. Parse errors are one line
(``prog: error: ...``) with no usage dump, like every other user mistake.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are a single readable line."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def add_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, *aliases: str,
             locked: bool = False, **kwargs: Any) -> argparse.Action:
    """Add ``--name`` with its underscore and dash spellings (plus ``aliases``) as one flag.

    ``locked``: the flag shapes the run (model, data, order, schedule), so ``--resume`` refuses another value.
    """
    stem = name.lstrip("-")
    spellings = [f"--{stem}"]
    for variant in (stem.replace("-", "_"), stem.replace("_", "-")):
        if f"--{variant}" not in spellings:
            spellings.append(f"--{variant}")
    spellings.extend(a for a in aliases if a not in spellings)
    kwargs.setdefault("dest", stem.replace("-", "_"))
    action = parser.add_argument(*spellings, **kwargs)
    action.locked_on_resume = locked
    return action


def locked_dests(parser: argparse.ArgumentParser) -> tuple[str, ...]:
    """The destinations of the flags declared ``locked`` (see ``add_flag``)."""
    return tuple(action.dest for action in parser._actions if getattr(action, "locked_on_resume", False))


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


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value
