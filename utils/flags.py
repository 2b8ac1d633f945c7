"""Command-line flags: a parser whose errors are one line, flags in both spellings, value converters, and
experiment files (``--config``).

Every flag is accepted in both spellings the public implementations used (``--batch_size`` and
``--batch-size``); ``add_flag`` registers both under one destination. Parse errors are one line
(``prog: error: ...``) with no usage dump, like every other user mistake.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from utils.errors import UserError

# What a run's args.json holds beside its flag values (engine.run_dir.open_run writes them).
RUN_METADATA_KEYS = ("argv", "system", "stage")


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are a single readable line, and which can read flag values from a file.

    With ``add_config_flag``, ``--config FILE`` names a JSON file of flag values (a run's own ``args.json``
    replays that run); they replace the defaults, and flags given on the command line override them.
    """

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)

    def add_config_flag(self) -> None:
        add_flag(self, "config", default=None, metavar="FILE",
                 help="a JSON file of flag values, such as a run's own args.json (which replays that run); "
                      "flags given on the command line override it")

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        if namespace is None and any(action.dest == "config" for action in self._actions):
            probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
            add_flag(probe, "config", default=None)
            given, _ = probe.parse_known_args(args)
            if given.config is not None:
                self.set_defaults(**read_flag_file(self, given.config))
        return super().parse_args(args, namespace)


def read_flag_file(parser: argparse.ArgumentParser, path: str | Path) -> dict[str, Any]:
    """The flag values in a JSON file, each checked against ``parser``'s flag of that name: an unknown key or
    a value of the wrong type is one UserError naming the key and the file."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        raise UserError(f"--config {path}: YAML files need PyYAML, which is not installed; write the flags as JSON "
                        "(a run's args.json is one)")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--config {path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"--config {path}: not a readable JSON file ({error})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a JSON object of flag values, such as a run's args.json")
    actions = {action.dest: action for action in parser._actions if action.dest not in ("help", "config")}
    for action in list(actions.values()):  # a flag's other spellings name it too (lr for base_lr, batch-size)
        actions.update({option.lstrip("-"): action for option in action.option_strings})
    values = {}
    for key, value in data.items():
        if key in RUN_METADATA_KEYS or key == "config":  # a replayed args.json names the file it came from
            continue
        if key not in actions:
            raise UserError(f"{path}: unknown key '{key}': {parser.prog} has no --{key} flag")
        values[actions[key].dest] = _flag_value(actions[key], value, f"{path}: key '{key}'")
    return values


def _flag_value(action: argparse.Action, value: Any, where: str) -> Any:
    """``value`` as the flag's own type, checked as the command line would check it."""
    if value is None:
        if action.default is not None:
            raise UserError(f"{where}: expected a value, got null")
        return None
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):  # switches
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {json.dumps(value)}")
        return value
    if action.nargs not in (None, "?"):
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {json.dumps(value)}")
        if isinstance(action.nargs, int) and len(value) != action.nargs:
            raise UserError(f"{where}: expected {action.nargs} values, got {len(value)}")
        return [_one_value(action, item, where) for item in value]
    return _one_value(action, value, where)


def _one_value(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(value, (dict, list)) or isinstance(value, bool):
        raise UserError(f"{where}: expected a single value, got {json.dumps(value)}")
    if action.type is None and not isinstance(value, str):
        raise UserError(f"{where}: expected a string, got {json.dumps(value)}")
    try:
        converted = action.type(str(value)) if action.type is not None else value
    except (ValueError, argparse.ArgumentTypeError) as error:
        raise UserError(f"{where}: {error}") from None
    if action.choices is not None and converted not in action.choices:
        raise UserError(f"{where}: {json.dumps(value)} is not one of {', '.join(map(str, action.choices))}")
    return converted


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
