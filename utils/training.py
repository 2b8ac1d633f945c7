"""Pieces of the training loops that the search and retrain stages share."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from dataloaders import DatasetInfo, SeededSampler
from utils.errors import UserError

MIN_TRAIN_BATCH = 2  # BatchNorm on the ASPP image-pooling branch needs more than one value per channel


def fill_dataset_defaults(args: argparse.Namespace, info: DatasetInfo, stage: str) -> None:
    """Replace unset flags by the dataset's defaults for this stage ("search" or "retrain")."""
    for flag in ("batch_size", "crop_size", "resize"):
        if getattr(args, flag, 0) is None:
            setattr(args, flag, info.defaults.get(flag))
    if args.epochs is None:
        args.epochs = info.defaults[f"{stage}_epochs"]
    if args.batch_size < MIN_TRAIN_BATCH:
        raise UserError(f"--batch_size {args.batch_size}: training needs at least {MIN_TRAIN_BATCH} images "
                        "per step (BatchNorm in the ASPP image-pooling branch)")


def check_split(source: Any, split: str, crop_size: int | None = None, resize: int | None = None) -> None:
    """Fail before training on an empty split, or a crop that cannot be cut from the (resized) first image."""
    if len(source) == 0:
        raise UserError(f"the {split} split is empty")
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


def epoch_batches(loader: DataLoader, epoch: int) -> Iterator:
    """The loader's batches for ``epoch``: its SeededSampler fixes the order and augmentation seeds."""
    sampler = loader.sampler
    if isinstance(sampler, SeededSampler):
        sampler.set_epoch(epoch)
    return iter(loader)


def cycle_batches(loader: DataLoader, epoch: int) -> Iterator:
    """Batches of ``epoch`` without end: a smaller trainB restarts its epoch order instead of stopping."""
    while True:
        yield from epoch_batches(loader, epoch)


def check_finite(loss: torch.Tensor, epoch: int, step: int, what: str, checkpoint: str) -> None:
    if not torch.isfinite(loss):
        raise UserError(f"{what} loss is {loss.item()} at epoch {epoch}, step {step}; stopping without "
                        f"saving it (the last good checkpoint is {checkpoint}). Try a lower learning rate.")
