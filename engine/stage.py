"""What every stage of every system does around its training loop: its process's set-up (device, share of the
batch, synchronised BatchNorm, precision), its run directory and logger on rank 0, and, for a retrain, the final
report of the best checkpoint."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.checkpoint import load_checkpoint
from engine.cli import resolve_device
from engine.distributed import (DistributedContext, broadcast_from_main, check_batchnorm_batch, per_process_batch,
                                process_device, uses_sync_batchnorm)
from engine.hooks import Checkpoint
from engine.precision import PrecisionStep, amp_dtype
from engine.run_dir import LOGGER_NAME, RunDir, open_run


@dataclass(frozen=True)
class StageProcess:
    """What one process of a stage runs with: its device, its share of the global ``--batch_size``, whether
    BatchNorm statistics are synchronised over the processes, and the autocast dtype (``amp``: whether autocast
    is on)."""

    device: torch.device
    batch_size: int
    sync_bn: bool
    amp: bool
    dtype: torch.dtype

    def precision(self) -> PrecisionStep:
        """A new precision step (autocast and, for float16 on CUDA, its own loss scaler)."""
        return PrecisionStep(self.amp, self.device, self.dtype)

    @property
    def amp_text(self) -> str:
        return str(self.dtype) if self.amp else "off"


def stage_device(args: argparse.Namespace, context: DistributedContext) -> torch.device:
    """``--device``, where ``auto`` under a launcher is this process's own GPU."""
    return process_device(context, args.device) or resolve_device(args.device)


def process_setup(args: argparse.Namespace, context: DistributedContext, *, sync_bn: bool, min_batch: int = 1,
                  why: str = "") -> StageProcess:
    """This process's ``StageProcess``. ``sync_bn`` asks for synchronised BatchNorm (it takes effect with several
    CUDA processes). A batch too small for the network's BatchNorm (``min_batch`` images, ``why``) is refused
    here, before the run starts."""
    device = stage_device(args, context)
    batch_size = per_process_batch(args.batch_size, context)
    synchronized = uses_sync_batchnorm(context, device, sync_bn)
    if min_batch > 1:
        check_batchnorm_batch(args.batch_size, context, synchronized, min_batch, why)
    return StageProcess(device, batch_size, synchronized, args.amp, amp_dtype(args.amp_dtype, device))


def open_stage_run(args: argparse.Namespace, argv: list[str] | None, system: str, stage: str,
                   context: DistributedContext) -> tuple[RunDir | None, logging.Logger]:
    """Rank 0's run directory and logger (``open_run``); the other ranks write nothing and log to the project's
    logger."""
    if context.is_main:
        return open_run(args, argv, system, stage)
    return None, logging.getLogger(LOGGER_NAME)


def report_best(model: nn.Module, run_dir: RunDir | None, context: DistributedContext,
                evaluate: Callable[[], dict[str, Any]],
                write_report: Callable[[dict[str, Any], Path, dict[str, Any]], str],
                logger: logging.Logger, metric: str, checkpoint: Checkpoint) -> RunDir | None:
    """A retrain's last step: the best checkpoint's weights (read by rank 0, sent to every rank) scored by
    ``evaluate()`` on the whole validation split, and ``write_report(scores, folder, details)`` into the run's
    report folder. Rank 0 returns the run directory."""
    best_state = None
    if run_dir is not None:
        best_state = load_checkpoint(run_dir.best, stage="retrain")
        model.load_state_dict(best_state["model"])
    broadcast_from_main(model, context, parameters=True)
    scores = evaluate()
    if run_dir is None:
        return None
    table = write_report(scores, run_dir.report, {"checkpoint": str(run_dir.best), "epoch": best_state["epoch"]})
    logger.info(f"best checkpoint (epoch {best_state['epoch']}) on val, report in {run_dir.report}:\n{table}")
    logger.info(f"retrain finished: best val {metric} {checkpoint.best_text()}; checkpoints in {run_dir}")
    return run_dir
