"""Shared tiny runs for the stage-script tests, and hooks that inject faults through the training loop.

The runs are small enough for a 2-core CPU: 12 synthetic 40x40 images, 3-layer supernets of F=2 for the
search, F=2 networks for the retrain, batch 2, 3 epochs. Faults are ``utils.trainer.Hook``s passed to a
script's ``main(argv, hooks=...)``: they run before the script's own hooks at every point of the loop.
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import train_autodeeplab
import train_new_model
from utils.trainer import Hook, Trainer

ROOT = Path(__file__).resolve().parents[1]

TINY_DATA = ["--synthetic_train_samples", "12", "--synthetic_val_samples", "2", "--synthetic_size", "40",
             "--batch_size", "2", "--crop_size", "32"]
TINY_SEARCH = TINY_DATA + ["--filter_multiplier", "2", "--num_layers", "3", "--steps", "3", "--block_multiplier", "3",
                           "--epochs", "3", "--alpha_epoch", "1"]
TINY_RETRAIN = TINY_DATA + ["--filter_multiplier", "2", "--epochs", "3"]
STEPS_PER_EPOCH = {"search": 3, "retrain": 6}  # trainA holds half of the 12 images for the search
STAGES = {"search": (train_autodeeplab, TINY_SEARCH), "retrain": (train_new_model, TINY_RETRAIN)}


class Preempted(Exception):
    """Stands for a machine taken away: nothing after it runs."""


class PreemptBeforeEpoch(Hook):
    """Stop the run dead when ``epoch`` is about to start (all earlier epochs are checkpointed)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def before_epoch(self, trainer: Trainer) -> None:
        if trainer.epoch == self.epoch:
            raise Preempted


class SignalAtStep(Hook):
    """Send this process ``signum`` right after its ``step``-th step (counted from 1 over the whole run): the
    handler only raises a flag, so the step completes and the loop stops at its next check."""

    def __init__(self, step: int, signum: int = signal.SIGTERM) -> None:
        self.step, self.signum, self.steps_seen = step, signum, []

    def after_step(self, trainer: Trainer) -> None:
        self.steps_seen.append(trainer.global_step)
        if len(self.steps_seen) == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.fixture
def tiny_stage():
    """``tiny_stage("search"|"retrain")`` -> (the stage script's module, a fresh copy of its tiny arguments)."""
    def make(stage: str):
        module, args = STAGES[stage]
        return module, list(args)
    return make


def run_script(script: str, *args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``script`` (a path under the repository, e.g. ``train_new_model.py`` or ``benchmarks/inference.py``) in a
    fresh Python process, as a user does: for what only a process shows (signals, exit status, imports, threads)."""
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def run_in_process(monkeypatch, capsys):
    """``run_in_process(script, *args, cwd=...)``: the script run as ``__main__`` in this process (its command-line
    wrapper included, so exit status and messages are the user's), without the 3 to 4 seconds of a fresh
    interpreter's imports. Returns a ``CompletedProcess`` with the exit status and what it printed."""
    def run(script: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", [str(ROOT / script), *args])
        capsys.readouterr()
        try:
            runpy.run_path(str(ROOT / script), run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        output = capsys.readouterr()
        return subprocess.CompletedProcess(sys.argv, code, output.out, output.err)
    return run
