"""Run directories: one per run, never overwriting an earlier one, self-describing.

A run directory holds ``args.json`` (the exact arguments), ``versions.json`` (library versions),
``log.txt``, ``metrics.jsonl`` (one JSON line per epoch), checkpoints, pictures and the
TensorBoard events under ``tensorboard/``.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.errors import UserError

LOGGER_NAME = "autodeeplab"


def new_run_dir(out_dir: str | None, dataset: str, experiment: str, root: str = "run") -> Path:
    """``out_dir`` if given (it must be new or empty), else ``run/<dataset>/<experiment>/experiment_<N>``."""
    if out_dir:
        path = Path(out_dir)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UserError(f"--out-dir {path}: already exists and is not empty; choose a new directory "
                            "(or use --resume to continue a run)")
        path.mkdir(parents=True, exist_ok=True)
        return path
    parent = Path(root) / dataset / experiment
    parent.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in parent.iterdir() if (m := re.fullmatch(r"experiment_(\d+)", p.name))]
    while True:  # another process may take the same number: mkdir is the atomic claim
        path = parent / f"experiment_{max(numbers, default=-1) + 1}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            numbers.append(int(path.name.split("_")[1]))


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
                "numpy": np.__version__, "cuda": str(torch.version.cuda)}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent)
        if commit.returncode == 0:
            versions["autodeeplab_commit"] = commit.stdout.strip()
    except OSError:
        pass
    return versions


def write_run_metadata(run_dir: Path, args: dict[str, Any]) -> None:
    (run_dir / "args.json").write_text(json.dumps(args, indent=2, sort_keys=True) + "\n")
    (run_dir / "versions.json").write_text(json.dumps(library_versions(), indent=2) + "\n")


def setup_logging(run_dir: Path | None, quiet: bool = False) -> logging.Logger:
    """Log to ``run_dir/log.txt`` and to stderr (errors only when ``quiet``)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.ERROR if quiet else logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if run_dir is not None:
        file_handler = logging.FileHandler(run_dir / "log.txt")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(file_handler)
    return logger


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_jsonl(path: Path, last_epoch: int) -> None:
    """Drop records after ``last_epoch`` (a resumed run rewrites the epochs it repeats)."""
    kept = [r for r in read_jsonl(path) if r.get("epoch", -1) <= last_epoch]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
