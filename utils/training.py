"""Pieces of the training loops that the search and retrain stages share."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from dataloaders import DatasetInfo, SeededSampler, make_loader
from dataloaders.transforms import denormalize
from utils.checkpoint import load_model_state, restore_rng_state, save_checkpoint
from utils.labels import colorize
from utils.distributed import DistributedContext, all_reduce_sum, broadcast_from_main
from utils.errors import UserError
from utils.evaluation import evaluate
from utils.interrupt import RunInterrupted, StopRequest
from utils.losses import Criterion, cross_entropy
from utils.run_dir import LOGGER_NAME, append_jsonl, new_run_dir, setup_logging, truncate_jsonl, write_run_metadata

CHECKPOINT_NAME = "checkpoint.pth.tar"
TENSORBOARD_EXAMPLES = 4  # validation images shown with their ground truth and prediction each validation
BEST_CHECKPOINT_NAME = "model_best.pth.tar"

PAPER_ALPHA_EPOCH = 20  # the paper trains weights alone for 20 of its 40 search epochs
MIN_TRAIN_BATCH = 2  # BatchNorm on the ASPP image-pooling branch needs more than one value per channel


def fill_dataset_defaults(args: argparse.Namespace, info: DatasetInfo, stage: str) -> None:
    """Replace unset flags by the dataset's defaults for this stage ("search" or "retrain").

    A dataset default named ``<stage>_<flag>`` (e.g. ``retrain_crop_size``) wins over ``<flag>``.
    """
    for flag in ("batch_size", "crop_size", "resize", "epochs"):
        if getattr(args, flag, 0) is None:
            setattr(args, flag, info.defaults.get(f"{stage}_{flag}", info.defaults.get(flag)))
    if getattr(args, "alpha_epoch", 0) is None:
        args.alpha_epoch = info.defaults.get("alpha_epoch", PAPER_ALPHA_EPOCH)
    if args.batch_size < MIN_TRAIN_BATCH:
        raise UserError(f"--batch_size {args.batch_size}: training needs at least {MIN_TRAIN_BATCH} images "
                        "per step (BatchNorm in the ASPP image-pooling branch)")


def check_split(source: Any, split: str, args: argparse.Namespace, crop_size: int | None = None,
                resize: int | None = None) -> None:
    """Fail before training on an empty split, a bad sample anywhere in it (unless --skip_data_check),
    or a crop that cannot be cut from the (resized) first image."""
    if len(source) == 0:
        raise UserError(f"the {split} split of {args.dataset} is empty")
    if not args.skip_data_check:
        source.check(args.num_classes)
    if crop_size is None:
        return
    image, _ = source.load(0)
    h, w = image.shape[:2]
    if resize is not None:
        scale = resize / min(h, w)
        h, w = round(h * scale), round(w * scale)
    if crop_size > min(h, w):
        after = f" after --resize {resize}" if resize is not None else ""
        raise UserError(f"--crop_size {crop_size} is larger than the {split} images ({h}x{w}{after}); "
                        "the search stage crops without padding")


def epoch_batches(loader: DataLoader, epoch: int, skip_batches: int = 0) -> Iterator:
    """The loader's batches for ``epoch`` from batch ``skip_batches`` on: its SeededSampler fixes the order
    and the augmentation seeds, so a resumed epoch continues with exactly the batches it would have had."""
    loader.sampler.set_epoch(epoch, skip_batches * loader.batch_size)
    return iter(loader)


def cycle_batches(loader: DataLoader, epoch: int, skip_batches: int = 0) -> Iterator:
    """Batches of ``epoch`` without end: a smaller trainB restarts its epoch order instead of stopping.
    ``skip_batches`` counts batches already drawn (a resume in the middle of an epoch)."""
    skip = skip_batches % (loader.sampler.samples_per_epoch // loader.batch_size)
    while True:
        yield from epoch_batches(loader, epoch, skip)
        skip = 0


def batch_loss(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, device: torch.device, what: str,
               epoch: int, step: int, checkpoint: Path | None,
               autocast: contextlib.AbstractContextManager | None = None,
               criterion: Criterion = cross_entropy) -> torch.Tensor:
    """The loss of one batch (cross-entropy by default, label 255 ignored, in float32); a non-finite value
    stops the run, unsaved. The forward pass runs under ``autocast`` (--amp) when given."""
    with autocast or contextlib.nullcontext():
        logits = model(images.to(device, non_blocking=True))
    loss = criterion(logits, masks.to(device, non_blocking=True))
    if not torch.isfinite(loss):
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "rank 0 keeps the last good checkpoint"
        raise UserError(f"{what} loss is {loss.item()} at epoch {epoch}, step {step}; stopping without "
                        f"saving it ({kept}). Try a lower learning rate.")
    return loss


def log_step(writer: SummaryWriter | None, progress: tqdm, loss: float, lr: float, global_step: int) -> None:
    """Per-step scalars and the progress bar's loss; ``writer`` is None on ranks other than 0."""
    if writer is None:
        return
    writer.add_scalar("train/loss", loss, global_step)
    writer.add_scalar("train/lr", lr, global_step)
    progress.set_postfix(loss=f"{loss:.3f}")


def mean_over_ranks(values: list[float], context: DistributedContext) -> float:
    """The mean of every rank's ``values`` (equal counts per rank): an epoch's loss for the record."""
    local = torch.tensor([sum(values), len(values)], dtype=torch.float64)
    total = all_reduce_sum(local, context)
    return float(total[0] / total[1])


def validation_record(model: nn.Module, loader: DataLoader, args: argparse.Namespace, epoch: int,
                      device: torch.device, writer: SummaryWriter | None, palette: np.ndarray,
                      context: DistributedContext) -> dict[str, Any]:
    """Validation metrics for the epoch's record, every --eval_interval epochs and after the last one;
    the first validation images with their ground truth and prediction go to TensorBoard (rank 0).
    Every rank evaluates its shard of the split; the counts are summed, so the scores are exact."""
    if (epoch + 1) % args.eval_interval and epoch + 1 != args.epochs:
        return {}
    broadcast_from_main(model, context)
    val = evaluate(model, loader, args.num_classes, device, keep_examples=TENSORBOARD_EXAMPLES, context=context)
    for index, (image, mask, prediction) in enumerate(val["examples"] if writer is not None else []):
        panels = [denormalize(image)] + [torch.from_numpy(colorize(m.numpy(), palette)).permute(2, 0, 1).float() / 255
                                         for m in (mask, prediction)]
        writer.add_image(f"val_examples/{index} (image | ground truth | prediction)", torch.cat(panels, dim=2), epoch)
    return {"val_loss": val["loss"], "val_miou": val["miou"], "val_pixel_accuracy": val["pixel_accuracy"],
            "val_per_class_iou": val["per_class_iou"]}


def finish_epoch(run_dir: Path, writer: SummaryWriter, record: dict[str, Any], state: dict[str, Any],
                 best_miou: float, note: str = "") -> float:
    """Record the epoch (metrics.jsonl, TensorBoard, log) and write ``checkpoint.pth.tar``, plus
    ``model_best.pth.tar`` on a new best validation mIoU. Returns the best mIoU so far."""
    epoch = record["epoch"]
    append_jsonl(run_dir / "metrics.jsonl", record)
    scalars = {key: value for key, value in record.items() if isinstance(value, float)}
    for key, value in scalars.items():
        writer.add_scalar(f"epoch/{key}", value, epoch)
    is_best = "val_miou" in record and record["val_miou"] > best_miou
    best_miou = max(best_miou, record.get("val_miou", best_miou))
    state = state | {"epoch": epoch, "best_miou": best_miou}
    # The best file first: a run stopped between the two writes must not hold a checkpoint whose
    # best_miou names a model_best.pth.tar that was never written.
    if is_best:
        save_checkpoint(state, run_dir / BEST_CHECKPOINT_NAME)
    save_checkpoint(state, run_dir / CHECKPOINT_NAME)
    logging.getLogger(LOGGER_NAME).info(
        f"epoch {epoch}: " + ", ".join(f"{key} {value:.4f}" for key, value in scalars.items()) + note)
    return best_miou


def stop_if_requested(stop: StopRequest, context: DistributedContext, checkpoint: Path | None,
                      state: Callable[[], dict[str, Any]], epoch: int, steps_done: int, partial: dict[str, Any]) -> None:
    """After a step: on SIGTERM/SIGINT, write a checkpoint of exactly this point and stop the run.

    The checkpoint's ``epoch`` stays the last completed one; ``partial_epoch`` says how far the current
    epoch got (``steps`` done, plus what its record needs), so ``--resume`` continues with the next step.
    """
    signum = stop.requested(context)
    if signum is None:
        return
    if context.is_main:
        save_checkpoint(state() | {"epoch": epoch - 1, "partial_epoch": {"epoch": epoch, "steps": steps_done, **partial}},
                        checkpoint)
    name = signal.Signals(signum).name
    raise RunInterrupted(f"stopped by {name} after step {steps_done} of epoch {epoch}; the checkpoint {checkpoint} "
                         f"holds that point exactly: continue with --resume {checkpoint}", signum)


def resumed_progress(resumed: dict[str, Any] | None, epoch: int) -> dict[str, Any]:
    """What a mid-epoch checkpoint recorded of ``epoch`` (``steps`` done and the step losses so far), or a fresh start."""
    partial = (resumed or {}).get("partial_epoch")
    if partial is not None and partial["epoch"] == epoch:
        return partial
    return {"epoch": epoch, "steps": 0, "seconds": 0.0, "losses": [], "arch_losses": []}


def restore_run(resumed: dict[str, Any] | None, run_dir: Path | None, model: nn.Module, stateful: dict[str, Any],
                logs: tuple[str, ...] = ("metrics.jsonl",)) -> tuple[int, float]:
    """Load a resumed checkpoint into the model and the optimizers/schedulers in ``stateful`` (keyed
    as in the checkpoint), restore the RNG, and drop log lines of the epochs that will run again.
    Returns (first epoch to run, best validation mIoU so far)."""
    if resumed is None:
        return 0, -1.0
    load_model_state(model, resumed["model"], "--resume")
    for key, obj in stateful.items():
        obj.load_state_dict(resumed[key])
    restore_rng_state(resumed["rng"])
    for name in logs if run_dir is not None else ():  # rank 0 owns the run directory
        truncate_jsonl(run_dir / name, resumed["epoch"])
    partial = resumed.get("partial_epoch")
    step = f", step {partial['steps']}" if partial else ""
    logging.getLogger(LOGGER_NAME).info(f"resumed at epoch {resumed['epoch'] + 1}{step}")
    return resumed["epoch"] + 1, resumed["best_miou"]


def validation_loader(dataset: Dataset, workers: int, context: DistributedContext) -> DataLoader:
    """Whole images one at a time, in order; each process takes every world_size-th image, none twice."""
    shard = range(context.rank, len(dataset), context.world_size)
    return make_loader(dataset, SeededSampler(shard, 0, shuffle=False), 1, workers, drop_last=False)


def open_run(args: argparse.Namespace, argv: list[str] | None) -> tuple[Path, logging.Logger]:
    """The run directory (the resumed checkpoint's, or a new one) with its log and metadata.

    Called once the inputs are known to be valid, so a run that cannot start leaves no directory.
    """
    run_dir = (Path(args.resume).resolve().parent if args.resume
               else new_run_dir(args.out_dir, args.dataset, args.checkname))
    logger = setup_logging(run_dir)
    write_run_metadata(run_dir, vars(args) | {"argv": sys.argv[1:] if argv is None else argv})
    return run_dir, logger
