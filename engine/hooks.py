"""Hooks that turn ``Trainer.fit`` into a run: TensorBoard, validation, the epoch record, checkpoints
(with the best one chosen by a named metric), stop requests, and the curves picture.

Each hook does one job (detectron2's ``PeriodicCheckpointer``, ``BestCheckpointer``, ``EvalHook``);
``fit_stage`` runs a stage with them, in the order a stage script needs. Hooks that write files exist on rank 0
only; the validation and checkpoint hooks run on every rank, since they take part in collectives.
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from engine.checkpoint import Checkpointer, save_checkpoint
from engine.distributed import DistributedContext
from engine.interrupt import RunInterrupted, StopRequest
from engine.run_dir import LOGGER_NAME, RunDir, append_jsonl, read_jsonl, truncate_jsonl
from engine.trainer import EpochProgress, Hook, Trainer, TrainStep
from utils.plots import plot_curves, save_figure

Evaluate = Callable[[int, "SummaryWriter | None"], dict[str, Any]]


class TensorBoardLog(Hook):
    """Each step's first scalar as ``train/loss`` and the learning rate as ``train/lr``; a resumed run
    first drops the events past its checkpoint. ``writer`` is None without a log folder (ranks > 0).
    A loop that is not the ``Trainer``'s (the decoder search's rounds) calls ``open``, ``add_scalars`` and
    ``close`` itself."""

    def __init__(self, log_dir: Path | None) -> None:
        self.log_dir = log_dir
        self.writer: SummaryWriter | None = None

    def open(self, purge_step: int) -> None:
        """Start writing; the events at ``purge_step`` and later (an interrupted run's) are dropped."""
        if self.log_dir is not None:
            self.writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)

    def add_scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        """Each of ``values`` as ``prefix/name`` at ``step`` (nothing without a writer)."""
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def before_train(self, trainer: Trainer) -> None:
        self.open(trainer.global_step)

    def after_step(self, trainer: Trainer) -> None:
        if self.writer is None or not trainer.last:
            return
        step = trainer.global_step - 1
        self.add_scalars("train", {"loss": next(iter(trainer.last.values())), "lr": trainer.step.learning_rate()},
                         step)

    def after_train(self, trainer: Trainer) -> None:
        self.close()


class Validation(Hook):
    """Adds ``evaluate(epoch, writer)``'s scores to the epoch's record every ``every`` epochs and after the
    last one."""

    def __init__(self, evaluate: Evaluate, every: int, tensorboard: TensorBoardLog) -> None:
        self.evaluate, self.every, self.tensorboard = evaluate, every, tensorboard

    def after_epoch(self, trainer: Trainer) -> None:
        epoch = trainer.epoch
        if (epoch + 1) % self.every and epoch + 1 != trainer.epochs:
            return
        trainer.record.update(self.evaluate(epoch, self.tensorboard.writer))


class MetricsLog(Hook):
    """The epoch's record as a line of ``metrics.jsonl``, as TensorBoard ``epoch/*`` scalars and in the log."""

    def __init__(self, path: Path, tensorboard: TensorBoardLog) -> None:
        self.path, self.tensorboard = path, tensorboard

    def after_epoch(self, trainer: Trainer) -> None:
        record, epoch = trainer.record, trainer.epoch
        append_jsonl(self.path, record)
        scalars = {key: value for key, value in record.items() if isinstance(value, float)}
        self.tensorboard.add_scalars("epoch", scalars, epoch)
        logging.getLogger(LOGGER_NAME).info(
            f"epoch {epoch}: " + ", ".join(f"{key} {value:.4f}" for key, value in scalars.items())
            + "".join(trainer.notes))


class Checkpoint(Hook):
    """``checkpoint.pth.tar`` after every epoch (and every ``period`` steps within one), and
    ``model_best.pth.tar`` first when ``metric`` (higher is better) reaches a new best. On a stop request
    (SIGTERM/SIGINT, agreed by every rank), a checkpoint of exactly the current step, then ``RunInterrupted``.
    ``run_dir`` is None on ranks other than 0."""

    def __init__(self, checkpointer: Checkpointer, run_dir: RunDir | None, context: DistributedContext,
                 metric: str | None, best: float | None = None, stop: StopRequest | None = None,
                 period: int | None = None) -> None:
        self.checkpointer, self.run_dir, self.context = checkpointer, run_dir, context
        self.metric, self.best, self.stop, self.period = metric, best, stop, period

    def best_text(self) -> str:
        return "none (no validation ran)" if self.best is None else f"{self.best:.4f}"

    def _best_state(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.best}

    def after_epoch(self, trainer: Trainer) -> None:
        value = trainer.record.get(self.metric)
        is_best = value is not None and (self.best is None or value > self.best)
        if is_best:
            self.best = value
        if self.run_dir is None:
            return
        state = self.checkpointer.state(epoch=trainer.epoch, best=self._best_state())
        # The best file first: a run stopped between the two writes must not hold a checkpoint whose
        # best score names a model_best.pth.tar that was never written.
        if is_best:
            save_checkpoint(state, self.run_dir.best)
        save_checkpoint(state, self.run_dir.checkpoint)

    def _save_partial(self, trainer: Trainer) -> Path | None:
        """A checkpoint of exactly the current step: ``epoch`` stays the last completed one, and
        ``partial_epoch`` says how far the current one got."""
        path = self.run_dir.checkpoint if self.run_dir else None
        if path is not None:
            save_checkpoint(self.checkpointer.state(epoch=trainer.epoch - 1, best=self._best_state(),
                                                    partial_epoch=trainer.progress.to_dict()), path)
        return path

    def after_step(self, trainer: Trainer) -> None:
        signum = self.stop.requested(self.context) if self.stop is not None else None
        if signum is None:
            mid_epoch = trainer.progress.steps < trainer.steps_in(trainer.epoch)  # an epoch's end saves anyway
            if self.period and trainer.global_step % self.period == 0 and mid_epoch:
                self._save_partial(trainer)
            return
        progress, path = trainer.progress, self._save_partial(trainer)
        raise RunInterrupted(f"stopped by {signal.Signals(signum).name} after step {progress.steps} of epoch "
                             f"{trainer.epoch}; the checkpoint {path} holds that point exactly: continue with "
                             f"--resume {path}", signum)


class Curves(Hook):
    """At the end, the record's curves (losses, validation scores) as a picture."""

    def __init__(self, metrics: Path, keys: Sequence[str], title: str, path: Path) -> None:
        self.metrics, self.keys, self.title, self.path = metrics, keys, title, path

    def after_train(self, trainer: Trainer) -> None:
        save_figure(plot_curves(read_jsonl(self.metrics), self.keys, title=self.title), self.path)


@dataclass(frozen=True)
class StageRun:
    """What a stage's loop saves and resumes: rank 0's run directory (None on the other ranks), the state its
    checkpoints hold (also every ``checkpoint_period`` steps, where given), the processes, where it resumes
    (``resume_point``), and the curves drawn at the end (the record's keys, the picture's name)."""

    run_dir: RunDir | None
    checkpointer: Checkpointer
    context: DistributedContext
    resume: tuple[int, EpochProgress | None, float | None]
    curves: tuple[Sequence[str], str]
    checkpoint_period: int | None = None


@dataclass(frozen=True)
class ValidationPlan:
    """``evaluate(epoch, writer)`` every ``every`` epochs (and after the last); the best checkpoint is the one with
    the highest ``best_metric``."""

    evaluate: Evaluate
    every: int
    best_metric: str


def fit_stage(step: TrainStep, loader: DataLoader, run: StageRun, validation: ValidationPlan | None, *,
              epochs: int | None = None, max_iters: int | None = None, desc: str,
              system_hooks: Callable[[TensorBoardLog], Sequence[Hook]] = lambda tensorboard: (),
              extra: Sequence[Hook] = ()) -> Checkpoint:
    """Run a stage (search or retrain) on the loop for ``epochs`` (or ``max_iters`` steps), from ``run.resume``,
    stopping cleanly on SIGTERM/SIGINT. The hooks, in order: ``extra`` (e.g. a test's fault injection),
    TensorBoard, validation (none without a plan), the system's own (``system_hooks(tensorboard)``, rank 0; e.g.
    the search's architecture log), the metrics record, the checkpoint and stop hook, the curves picture. Returns
    the checkpoint hook, which knows the best score."""
    run_dir = run.run_dir
    tensorboard = TensorBoardLog(run_dir.tensorboard if run_dir else None)
    hooks = [*extra, tensorboard]
    if validation is not None:
        hooks.append(Validation(validation.evaluate, validation.every, tensorboard))
    if run_dir is not None:
        hooks += [*system_hooks(tensorboard), MetricsLog(run_dir.metrics, tensorboard)]
    start_epoch, partial, best = run.resume
    with StopRequest(run_dir.checkpoint if run_dir else None) as stop:
        checkpoint = Checkpoint(run.checkpointer, run_dir, run.context,
                                validation.best_metric if validation is not None else None, best, stop,
                                run.checkpoint_period)
        hooks.append(checkpoint)
        if run_dir is not None:
            keys, stage = run.curves
            hooks.append(Curves(run_dir.metrics, keys, stage, run_dir.curves(stage)))
        Trainer(step, loader, epochs=epochs, max_iters=max_iters, hooks=hooks, context=run.context, desc=desc,
                last_checkpoint=run_dir.checkpoint if run_dir else None).fit(start_epoch, partial)
    return checkpoint


def resume_point(resumed: dict[str, Any] | None, checkpointer: Checkpointer, run_dir: RunDir | None,
                 source: str, logs: Sequence[Path] = ()) -> tuple[int, EpochProgress | None, float | None]:
    """Restore a resumed checkpoint (model, stateful objects, RNG) and drop the lines of ``logs`` past it.

    Returns (first epoch to run, the partial epoch to continue, best score so far); a fresh run starts at
    epoch 0 with no best. Checkpoints written before the best metric was named hold ``best_miou``.
    """
    if resumed is None:
        return 0, None, None
    checkpointer.restore(resumed, source)
    for path in logs if run_dir is not None else ():  # rank 0 owns the run directory
        truncate_jsonl(path, resumed["epoch"])
    partial = resumed.get("partial_epoch")
    step = f", step {partial['steps']}" if partial else ""
    logging.getLogger(LOGGER_NAME).info(f"resumed at epoch {resumed['epoch'] + 1}{step}")
    best = resumed["best"]["value"] if "best" in resumed else resumed.get("best_miou")
    if best is not None and best < 0 or (isinstance(best, float) and math.isnan(best)):
        best = None  # old checkpoints wrote -1.0 for "no validation yet"
    return resumed["epoch"] + 1, EpochProgress.from_dict(partial) if partial else None, best
