"""The one training loop: epochs (or a number of iterations) of steps, with hooks around them.

In the manner of detectron2's ``TrainerBase`` and torchvision's ``train_one_epoch``: a system supplies
its *step* (one optimisation step on one batch, returning named scalars such as ``train_loss``) and
the loop does the rest: epochs, seeded batches, exact mid-epoch resume, progress bar, the per-epoch
record (each scalar averaged over all processes), and the hooks (logging, validation, checkpoints,
stop requests, pictures), called in the order they are given.

The loop owns no run directory, signal handler or file: a stage script composes those as hooks, and a
search that trains many candidates in one process calls ``fit`` once per candidate.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from engine.distributed import DistributedContext, all_reduce_sum
from engine.losses import Criterion, cross_entropy
from engine.precision import PrecisionStep
from utils.errors import UserError


class NonFiniteLoss(UserError):
    """A step's loss was inf or NaN; the loop adds where it happened, and nothing is saved."""

    def __init__(self, what: str, value: float, where: str = "") -> None:
        super().__init__(f"{what} loss is {value}{where}")
        self.what, self.value = what, value


class TrainStep(Protocol):
    """What a system gives the loop: one optimisation step per batch, and its learning rate."""

    def train(self) -> None:
        """Put the trained modules in training mode (called at the start of every epoch)."""

    def start_epoch(self, epoch: int, steps_done: int) -> None:
        """An epoch begins (``steps_done`` > 0 when it resumes in its middle)."""

    def __call__(self, batch: Any, global_step: int) -> dict[str, float]:
        """One step on ``batch``; the named scalars it returns are averaged into the epoch's record."""

    def learning_rate(self) -> float: ...


class Hook:
    """Called by ``Trainer.fit`` around the loop; override what you need (detectron2's ``HookBase``)."""

    def before_train(self, trainer: Trainer) -> None:
        pass

    def before_epoch(self, trainer: Trainer) -> None:
        pass

    def after_step(self, trainer: Trainer) -> None:
        pass

    def after_epoch(self, trainer: Trainer) -> None:
        """``trainer.record`` holds the epoch's record; hooks may add to it (validation scores) or to
        ``trainer.notes`` (text for the epoch's log line)."""

    def after_train(self, trainer: Trainer) -> None:
        pass


@dataclass
class EpochProgress:
    """How far an epoch got: steps done, seconds spent, and every step's scalars (a mid-epoch checkpoint
    stores this, so a resumed epoch ends with exactly the record it would have had)."""

    epoch: int
    steps: int = 0
    seconds: float = 0.0
    values: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "steps": self.steps, "seconds": self.seconds,
                "values": {name: list(values) for name, values in self.values.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochProgress:
        values = data.get("values")
        if values is None:  # written before steps returned named scalars: the search's two loss lists
            values = {"train_loss": data["losses"], "arch_loss": data.get("arch_losses", [])}
        return cls(data["epoch"], data["steps"], data["seconds"],
                   {name: list(steps) for name, steps in values.items() if steps})


def epoch_batches(loader: DataLoader, epoch: int, skip_batches: int = 0) -> Iterator:
    """The loader's batches for ``epoch`` from batch ``skip_batches`` on: its seeded sampler fixes the order
    and the augmentation seeds, so a resumed epoch continues with exactly the batches it would have had."""
    loader.sampler.set_epoch(epoch, skip_batches * loader.batch_size)
    return iter(loader)


def cycle_batches(loader: DataLoader, epoch: int, skip_batches: int = 0) -> Iterator:
    """Batches of ``epoch`` without end: a smaller loader restarts its epoch order instead of stopping.
    ``skip_batches`` counts batches already drawn (a resume in the middle of an epoch)."""
    skip = skip_batches % (loader.sampler.samples_per_epoch // loader.batch_size)
    while True:
        yield from epoch_batches(loader, epoch, skip)
        skip = 0


def mean_over_ranks(values: Sequence[float], context: DistributedContext) -> float:
    """The mean of every rank's ``values`` (equal counts per rank): an epoch's scalar for the record."""
    local = torch.tensor([sum(values), len(values)], dtype=torch.float64)
    total = all_reduce_sum(local, context)
    return float(total[0] / total[1])


class Trainer:
    """Runs ``step`` over ``loader`` for ``epochs`` epochs, or for ``max_iters`` steps in all.

    ``loader`` must use a sampler with ``set_epoch(epoch, skip)`` (``dataloaders.SeededSampler``).
    ``last_checkpoint`` (rank 0's checkpoint path, if any) is only quoted when a loss turns non-finite, and only
    once that file exists.
    """

    def __init__(self, step: TrainStep, loader: DataLoader, *, epochs: int | None = None,
                 max_iters: int | None = None, hooks: Sequence[Hook] = (),
                 context: DistributedContext | None = None, desc: str = "train",
                 last_checkpoint: Path | None = None) -> None:
        if (epochs is None) == (max_iters is None):
            raise ValueError("give exactly one of epochs and max_iters")
        self.step = step
        self.loader = loader
        samples = loader.sampler.samples_per_epoch
        self.steps_per_epoch = samples // loader.batch_size if loader.drop_last else -(-samples // loader.batch_size)
        if self.steps_per_epoch < 1:
            raise ValueError("the loader yields no batch")
        self.max_iters = max_iters if max_iters is not None else epochs * self.steps_per_epoch
        self.epochs = -(-self.max_iters // self.steps_per_epoch)
        self.hooks = list(hooks)
        self.context = context or DistributedContext()
        self.desc = desc
        self.last_checkpoint = last_checkpoint
        self.epoch = 0
        self.progress = EpochProgress(0)
        self.last: dict[str, float] = {}
        self.record: dict[str, Any] = {}
        self.notes: list[str] = []
        self.should_stop = False

    @property
    def global_step(self) -> int:
        """Steps done so far over all epochs."""
        return self.epoch * self.steps_per_epoch + self.progress.steps

    def steps_in(self, epoch: int) -> int:
        """The number of steps of ``epoch`` (the last one is shorter when ``max_iters`` cuts it)."""
        return min(self.steps_per_epoch, self.max_iters - epoch * self.steps_per_epoch)

    def fit(self, start_epoch: int = 0, partial: EpochProgress | None = None) -> None:
        """Train from ``start_epoch`` (the first epoch not completed); ``partial`` continues that epoch
        from a mid-epoch checkpoint, with exactly the batches and record the uninterrupted run has. A hook
        that sets ``should_stop`` after an epoch ends the training there (early termination)."""
        self.epoch, self.should_stop = start_epoch, False
        self.progress = partial if partial is not None and partial.epoch == start_epoch else EpochProgress(start_epoch)
        for hook in self.hooks:
            hook.before_train(self)
        for epoch in range(start_epoch, self.epochs):
            self._run_epoch(epoch)
            if self.should_stop:
                break
        for hook in self.hooks:
            hook.after_train(self)

    def _run_epoch(self, epoch: int) -> None:
        if epoch != self.progress.epoch:
            self.progress = EpochProgress(epoch)
        self.epoch, progress, total = epoch, self.progress, self.steps_in(epoch)
        self.step.train()
        self.step.start_epoch(epoch, progress.steps)
        for hook in self.hooks:
            hook.before_epoch(self)
        started = time.time() - progress.seconds
        batches = epoch_batches(self.loader, epoch, progress.steps)
        bar = tqdm(total=total, initial=progress.steps, desc=f"{self.desc} epoch {epoch}", leave=False,
                   disable=None if self.context.is_main else True)
        with bar:
            while progress.steps < total:
                batch = next(batches)
                try:
                    values = self.step(batch, self.global_step)
                except NonFiniteLoss as error:
                    raise NonFiniteLoss(error.what, error.value, f" at epoch {epoch}, step {progress.steps}; stopping "
                                        f"without saving it ({self._kept()}). Try a lower learning rate.") from None
                for name, value in values.items():
                    progress.values.setdefault(name, []).append(value)
                progress.steps += 1
                progress.seconds = time.time() - started
                self.last = values
                bar.update()
                if values:
                    bar.set_postfix({name: f"{value:.3f}" for name, value in list(values.items())[:1]})
                for hook in self.hooks:
                    hook.after_step(self)
        self.record = self._epoch_record(epoch, time.time() - started)
        self.notes = []
        for hook in self.hooks:
            hook.after_epoch(self)

    def _kept(self) -> str:
        """What a run stopped by a non-finite loss keeps: a checkpoint is named only once it exists on disk."""
        if self.last_checkpoint is not None and self.last_checkpoint.is_file():
            return f"the last good checkpoint is {self.last_checkpoint}"
        if self.context.enabled and not self.context.is_main:
            return "rank 0 keeps the last good checkpoint, if one was written"
        return "no checkpoint holds this run"

    def _epoch_record(self, epoch: int, seconds: float) -> dict[str, Any]:
        """``{"epoch", first scalar, "lr", "epoch_seconds", other scalars}``, each averaged over processes."""
        means = {name: mean_over_ranks(values, self.context) for name, values in self.progress.values.items()}
        names = list(means)
        record: dict[str, Any] = {"epoch": epoch}
        record.update({name: means[name] for name in names[:1]})
        record.update({"lr": self.step.learning_rate(), "epoch_seconds": round(seconds, 1)})
        record.update({name: means[name] for name in names[1:]})
        return record


def batch_loss(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, device: torch.device,
               autocast: contextlib.AbstractContextManager, criterion: Criterion = cross_entropy,
               what: str = "training") -> torch.Tensor:
    """The loss of one batch (cross-entropy by default, label 255 ignored, in float32), the forward pass under
    ``autocast`` (--amp); a non-finite value raises ``NonFiniteLoss`` (the loop says where, and saves nothing)."""
    with autocast:
        logits = model(images.to(device, non_blocking=True))
    loss = criterion(logits, masks.to(device, non_blocking=True))
    if not torch.isfinite(loss):
        raise NonFiniteLoss(what, loss.item())
    return loss


class SupervisedStep:
    """Forward, loss, backward, optimizer step and learning-rate schedule on one (images, masks) batch: the
    retrain step, and the weight step of a search.

    ``params`` limits backward and gradient clipping (``grad_clip`` > 0) to those tensors (a search's weights,
    not its architecture); ``before_forward(global_step)`` adjusts the model first (scheduled drop-path).
    The schedule advances only when the optimizer stepped (float16 overflow skips a step). ``compile`` runs the
    forward (and so its backward) through ``torch.compile`` (inductor): the same module and weights, so
    checkpoints, validation and the architecture step are those of the plain model.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, precision: PrecisionStep, device: torch.device,
                 criterion: Criterion = cross_entropy, *, params: Sequence[torch.Tensor] | None = None,
                 grad_clip: float = 0.0, what: str = "training",
                 before_forward: Callable[[int], None] | None = None, compile: bool = False) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.precision, self.device, self.criterion = precision, device, criterion
        self.params, self.grad_clip, self.what = params, grad_clip, what
        self.before_forward = before_forward
        self.forward = torch.compile(model) if compile else model

    def train(self) -> None:
        self.model.train()

    def start_epoch(self, epoch: int, steps_done: int) -> None:
        pass

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor], global_step: int) -> dict[str, float]:
        images, masks = batch
        if self.before_forward is not None:
            self.before_forward(global_step)
        loss = self._loss(images, masks)
        self.precision.backward(loss, inputs=self.params)
        if self.precision.step(self.optimizer, self.params or (), self.grad_clip):
            self.scheduler.step()
        return {"train_loss": loss.item()}

    def _loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        try:
            return batch_loss(self.forward, images, masks, self.device, self.precision.autocast(), self.criterion,
                              self.what)
        except torch._dynamo.exc.BackendCompilerFailed as error:  # no C++ compiler, an unsupported op, ...
            cause = getattr(error, "inner_exception", error)
            reason = f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0]}"
            raise UserError(f"--compile: torch.compile could not compile the {self.what} step ({reason}); run "
                            "without --compile") from None

    def learning_rate(self) -> float:
        return self.scheduler.get_last_lr()[0]
