"""Run directories: one per run, never overwriting an earlier one, self-describing.

A run directory holds ``args.json`` (the exact arguments, with the run's system and stage),
``versions.json`` (library versions), ``log.txt``, ``metrics.jsonl`` (one JSON line per epoch),
checkpoints, pictures and the TensorBoard events under ``tensorboard/``. ``RunDir`` is the one place
that names them. While a process trains in a run directory it holds the directory's lock (``.lock``), so a
second run or a ``--resume`` of a run still going is refused instead of writing beside it.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from utils.atomic import remove_stale_temporaries
from utils.errors import UserError
from utils.output_path import check_output_path

LOGGER_NAME = "autodeeplab"


class RunDir:
    """A run's folder and the name of every artefact in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    @property
    def checkpoint(self) -> Path:
        """The latest state, for --resume (written every epoch, and on a stop request)."""
        return self.path / "checkpoint.pth.tar"

    @property
    def lock(self) -> Path:
        """Locked (``flock``) by the process training in the run, and naming it."""
        return self.path / ".lock"

    @property
    def best(self) -> Path:
        """The state of the epoch with the best validation score."""
        return self.path / "model_best.pth.tar"

    @property
    def args(self) -> Path:
        return self.path / "args.json"

    @property
    def versions(self) -> Path:
        return self.path / "versions.json"

    @property
    def log(self) -> Path:
        return self.path / "log.txt"

    @property
    def metrics(self) -> Path:
        """One JSON line per epoch: losses, learning rate, validation scores."""
        return self.path / "metrics.jsonl"

    @property
    def search_log(self) -> Path:
        """One JSON line per search epoch (or candidate): what the search would decode at that point."""
        return self.path / "architecture_history.jsonl"

    @property
    def candidates(self) -> Path:
        """One JSON line per candidate of a sampled-architecture search: its genotype, reward and costs."""
        return self.path / "candidates.jsonl"

    @property
    def data_split(self) -> Path:
        """The stems of each split, when the run split its data itself (a flat folder)."""
        return self.path / "split.json"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def architecture(self) -> Path:
        return self.path / "architecture.json"

    @property
    def architecture_picture(self) -> Path:
        return self.path / "architecture.png"

    @property
    def report(self) -> Path:
        """The final per-class report of a retrained network on the validation split."""
        return self.path / "report_val"

    def curves(self, stage: str) -> Path:
        return self.path / f"{stage}_curves.png"

    def picture(self, name: str) -> Path:
        return self.path / f"{name}.png"

    def run_info(self) -> dict[str, Any]:
        """``args.json`` as a dict ({} when missing or unreadable)."""
        try:
            return json.loads(self.args.read_text())
        except (OSError, ValueError):
            return {}

    @classmethod
    def latest(cls, root: str | Path, dataset: str, system: str | None, stage: str) -> RunDir | None:
        """The newest run under ``root/dataset`` of this system (None: of any) and stage that holds a checkpoint.

        Runs written before ``args.json`` named them are Auto-DeepLab runs; a search run among them is
        known by its search log."""
        def matches(run: RunDir) -> bool:
            info = run.run_info()
            if "stage" in info:
                return system in (None, info.get("system")) and info["stage"] == stage
            return system in (None, "autodeeplab") and (stage == "search") == run.search_log.is_file()

        runs = [RunDir(p) for p in Path(root, dataset).glob("*/experiment_*") if (p / "checkpoint.pth.tar").is_file()]
        runs = sorted((run for run in runs if matches(run)), key=lambda run: run.checkpoint.stat().st_mtime)
        return runs[-1] if runs else None


def resume_checkpoint(text: str) -> str:
    """The --resume converter: a run directory stands for its ``checkpoint.pth.tar``."""
    return str(RunDir(text).checkpoint) if Path(text).is_dir() else text


def check_new_run_dir(out_dir: str | None, dataset: str, experiment: str, root: str = "run") -> None:
    """Refuse, creating nothing, a new run's directory that ``new_run_dir`` could not make: ``out_dir`` must be
    creatable, or an empty folder; without it, ``root/dataset/experiment`` must be creatable."""
    if not out_dir:
        check_output_path("--out-dir (default)", Path(root) / dataset / experiment)
        return
    path = check_output_path("--out-dir", out_dir)
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"--out-dir {path}: already exists and is not empty; choose a new directory "
                        "(or use --resume to continue a run)")


def check_run_output(args: argparse.Namespace) -> None:
    """Refuse, before a training script's work starts, a run directory it could not write: the resumed run's own
    (``args.resume``), else the new one (``args.out_dir``, ``args.dataset``, ``args.checkname``). Under a launcher
    only rank 0 checks: it alone writes, and the others would find its directory already filling."""
    if os.environ.get("RANK", "0") != "0":
        return
    if args.resume:
        check_output_path("--resume", Path(args.resume).resolve().parent)
    else:
        check_new_run_dir(args.out_dir, args.dataset, args.checkname)


def new_run_dir(out_dir: str | None, dataset: str, experiment: str, root: str = "run") -> Path:
    """``out_dir`` if given (it must be new or empty), else ``run/<dataset>/<experiment>/experiment_<N>``."""
    check_new_run_dir(out_dir, dataset, experiment, root)
    if out_dir:
        path = Path(out_dir)
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


_HELD_LOCKS: dict[Path, TextIO] = {}


def lock_run_dir(run_dir: RunDir) -> None:
    """Take ``run_dir``'s lock for this process, or refuse (one UserError naming the directory and the process
    that holds it). ``flock`` locks die with their process, however it ends, so a killed run never leaves its
    directory locked. Taking a lock this process already holds is a no-op; ``release_run_dirs`` gives them back."""
    key = run_dir.path.resolve()
    if key in _HELD_LOCKS:
        return
    handle = open(run_dir.lock, "a+")  # appending: the holder's name stays readable until the lock is ours
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"{run_dir.path}: in use by {holder}, which is still running in it; wait for it to end "
                        "or stop it (SIGTERM writes a checkpoint), then --resume") from None
    handle.truncate(0)
    handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    _HELD_LOCKS[key] = handle


def release_run_dirs() -> None:
    """Give back every run directory lock this process holds (its runs have ended)."""
    while _HELD_LOCKS:
        _HELD_LOCKS.popitem()[1].close()


def open_run(args: argparse.Namespace, argv: list[str] | None, system: str,
             stage: str) -> tuple[RunDir, logging.Logger]:
    """The run directory (the resumed checkpoint's, or a new one), locked for this process, rid of the
    temporaries of writers killed midway, with its log and metadata.

    Called once the inputs are known to be valid, so a run that cannot start leaves no directory.
    """
    run_dir = RunDir(Path(args.resume).resolve().parent if args.resume
                     else new_run_dir(args.out_dir, args.dataset, args.checkname))
    lock_run_dir(run_dir)
    stale = remove_stale_temporaries(run_dir.path)
    logger = setup_logging(run_dir.path)
    if stale:
        logger.info(f"removed {len(stale)} temporary file(s) of writes cut short by a killed process: "
                    + ", ".join(str(path.relative_to(run_dir.path)) for path in stale))
    write_run_metadata(run_dir.path, vars(args) | {"argv": sys.argv[1:] if argv is None else argv,
                                                  "system": system, "stage": stage})
    return run_dir, logger
