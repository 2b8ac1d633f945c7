"""What the tests share: each system's tiny arguments, ways to run a script (in process, in a fresh process, in two
processes), and hooks that inject faults through the training loop.

The runs are small enough for a 2-core CPU: Auto-DeepLab on 12 synthetic 40x40 images, 3-layer supernets of F=2 for
the search, F=2 networks for the retrain, batch 2, 3 epochs; the decoder search on 20 images, 3 candidates at 32 px;
Auto-Panoptic's supernet on 16 images of 64 px for 24 iterations. Faults are ``engine.trainer.Hook``s passed to a
script's ``main(argv, hooks=...)``: they run before the script's own hooks at every point of the loop.
"""

from __future__ import annotations

import os
import runpy
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import train_autodeeplab
import train_new_model
from engine.run_dir import RunDir, read_jsonl
from engine.trainer import Hook, Trainer

ROOT = Path(__file__).resolve().parents[1]

TINY_DATA = ["--synthetic_train_samples", "12", "--synthetic_val_samples", "2", "--synthetic_size", "40",
             "--batch_size", "2", "--crop_size", "32"]
TINY_SEARCH = TINY_DATA + ["--filter_multiplier", "2", "--num_layers", "3", "--steps", "3", "--block_multiplier", "3",
                           "--epochs", "3", "--alpha_epoch", "1"]
TINY_RETRAIN = TINY_DATA + ["--filter_multiplier", "2", "--epochs", "3"]
STEPS_PER_EPOCH = {"search": 3, "retrain": 6}  # trainA holds half of the 12 images for the search
STAGES = {"search": (train_autodeeplab, TINY_SEARCH), "retrain": (train_new_model, TINY_RETRAIN)}
# Auto-DeepLab in two processes: batch 4, two images per process (BatchNorm needs two).
DISTRIBUTED_DATA = ["--synthetic_train_samples", "12", "--synthetic_val_samples", "3", "--synthetic_size", "40",
                    "--batch_size", "4", "--crop_size", "32", "--filter_multiplier", "2"]
DISTRIBUTED_SEARCH = DISTRIBUTED_DATA + ["--num_layers", "3", "--steps", "3", "--block_multiplier", "3", "--epochs",
                                         "2", "--alpha_epoch", "1"]
DISTRIBUTED_RETRAIN = DISTRIBUTED_DATA + ["--epochs", "2"]
NAS_SEGM_DATA = ["--synthetic_train_samples", "20", "--synthetic_val_samples", "2", "--synthetic_size", "40"]
NAS_SEGM_SEARCH = NAS_SEGM_DATA + ["--batch-size", "4", "4", "--crop-size", "32", "32", "--resize-side", "32", "32",
                                   "--val-crop-size", "32", "--val-resize-side", "32", "--num-segm-epochs", "2", "1",
                                   "--val-every", "2", "1", "--n-task0", "12", "--num_candidates", "3"]
# The files whose tests take longest (seconds on a 2-core CI run at e97d099), run first: `make test` spreads whole
# files over two workers in collection order, and a long file collected last would leave one worker idle while
# the other finishes it. Longest first keeps the two workers' ends together; within a file the order is kept.
LONGEST_FILES = {"test_nas_segm_search.py": 134, "test_autopanoptic_search.py": 128, "test_interrupt.py": 117,
                 "test_benchmarks.py": 113, "test_distributed.py": 101, "test_search_vs_random.py": 83,
                 "test_faults.py": 76, "test_resume.py": 43, "test_benchmark_inference.py": 38, "test_cli.py": 38}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: -LONGEST_FILES.get(item.path.name, 0))  # a stable sort


AUTOPANOPTIC_SEARCH = ["--synthetic_train_samples", "16", "--synthetic_val_samples", "2", "--synthetic_size", "64",
                       "--min-size", "64", "--max-size", "64", "--held-out", "4", "--max-iter", "24", "--warmup-iters",
                       "4", "--checkpoint-period", "12", "--search-cycles", "2", "--bn-recalibration-iters", "2",
                       "--deterministic", "--no-greedy-search"]
AUTOPANOPTIC_RETRAIN = ["--synthetic_train_samples", "12", "--synthetic_val_samples", "3", "--synthetic_size", "64",
                        "--min-size", "64", "--max-size", "64", "--max-iter", "8", "--lr-steps", "5", "7",
                        "--warmup-iters", "2", "--checkpoint-period", "4"]


class Preempted(Exception):
    """Stands for a machine taken away: nothing after it runs."""


class PreemptBeforeEpoch(Hook):
    """Stop the run dead when ``epoch`` is about to start (all earlier epochs are checkpointed)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def before_epoch(self, trainer: Trainer) -> None:
        if trainer.epoch == self.epoch:
            raise Preempted


class PreemptAfterStep(Hook):
    """Stop the run dead after the ``step``-th step of the training loop whose ``desc`` is ``desc`` (any, if None)."""

    def __init__(self, step: int, desc: str | None = None) -> None:
        self.step, self.desc, self.seen = step, desc, 0

    def after_step(self, trainer: Trainer) -> None:
        if self.desc is None or trainer.desc == self.desc:
            self.seen += 1
            if self.seen == self.step:
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
        except SystemExit as exc:  # as the interpreter ends: sys.exit("message") prints it and exits with 1
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                sys.stderr.write(f"{exc.code}\n")
        output = capsys.readouterr()
        return subprocess.CompletedProcess(sys.argv, code, output.out, output.err)
    return run


def launch(launcher: list[str] | str | None, script: str, args: list[str], logs: Path, expect_code: int = 0) -> str:
    """Run ``script`` in 2 processes through ``launcher``, or alone (None); the output goes to files in ``logs``
    (two concurrent processes must not block on full pipes). Returns the output."""
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    python = [sys.executable, "-m"]
    if launcher is None:
        commands = [[sys.executable, str(ROOT / script), *args]]
    elif launcher == "two-nodes":  # one process on each of 2 "nodes", rendezvous at a master address
        port = free_port()
        commands = [python + ["torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={node}",
                              "--master_addr=127.0.0.1", f"--master_port={port}", str(ROOT / script), *args]
                    for node in range(2)]
    else:
        commands = [python + [*launcher, "--nproc_per_node=2", str(ROOT / script), *args]]
    logs.mkdir()
    outputs = [logs / f"{index}.out" for index in range(len(commands))]
    processes = []
    try:
        for command, output in zip(commands, outputs):
            with output.open("w") as sink:
                processes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT))
        codes = [process.wait(timeout=600) for process in processes]
    finally:
        for process in processes:
            process.kill()
    output = "".join(output.read_text() for output in outputs)
    assert codes == [expect_code] * len(commands), output[-3000:]
    return output


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def records(run_dir: Path) -> list[dict]:
    """A run's metrics.jsonl, one dict per epoch."""
    return read_jsonl(RunDir(run_dir).metrics)
