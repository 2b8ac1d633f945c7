"""Seeded datasets, samplers and loaders, and the checks a split passes before training.

Reproducibility: ``SeededSampler`` yields ``(index, sample_seed)`` pairs and the dataset seeds the
transform's random draws with ``sample_seed``, so the augmentation of every sample is a function of
(seed, epoch, position) alone, whatever the number of workers, and survives a resume.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dataloaders.panoptic import PanopticSource
from dataloaders.registry import (DATASETS, DatasetInfo, SegmentationSource, check_mask_values, get_dataset_info,
                                  source_palette)
from dataloaders.transforms import seeded_rng
from engine.distributed import DistributedContext
from engine.run_dir import RunDir
from utils.atomic import atomic_path
from utils.errors import UserError

Transform = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


class SegmentationDataset(Dataset):
    """A source plus a transform; keys are ``(index, seed)`` pairs (a plain index means seed 0)."""

    def __init__(self, source: SegmentationSource, transform: Transform,
                 num_classes: int | None = None) -> None:
        self.source = source
        self.transform = transform
        self.num_classes = len(source.class_names) if num_classes is None else num_classes

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        image, mask = self.source.load(int(index))
        # Fail on the raw mask, where the offending file is still known, not later in the loss.
        check_mask_values(mask, self.num_classes, self.source.describe(int(index)))
        with seeded_rng(int(seed)):
            return self.transform(image, mask)


_UINT64_MASK = (1 << 64) - 1
_SEED_MASK = (1 << 63) - 1  # torch.Generator.manual_seed takes up to 64 bits; keep it positive


def _splitmix64(state: int) -> int:
    """One well-mixed 64-bit value per input: turns (key, position) into unrelated seeds."""
    value = (state + 0x9E3779B97F4A7C15) & _UINT64_MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _UINT64_MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _UINT64_MASK
    return value ^ (value >> 31)


class SeededSampler(Sampler):
    """Yields ``(index, sample_seed)``; the same (seed, epoch) gives the same pairs everywhere.

    The epoch order is a permutation of ``indices`` drawn from (seed, epoch), identical on every
    rank, padded by wrapping around (or truncated with ``drop_last``) to a multiple of
    ``num_replicas`` and sharded as ``order[rank::num_replicas]``. The seed of a sample depends on
    (seed, epoch, position in the epoch order) only.
    """

    def __init__(self, indices: Sequence[int], seed: int, shuffle: bool, num_replicas: int = 1,
                 rank: int = 0, drop_last: bool = False) -> None:
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in 0..{num_replicas - 1}")
        self.indices = [int(i) for i in indices]
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch; ``skip`` drops the first samples of this process's share (a resume in the
        middle of an epoch), leaving every later sample and its seed exactly as without it."""
        if not 0 <= skip <= self.samples_per_epoch:
            raise ValueError(f"cannot skip {skip} of the {self.samples_per_epoch} samples of an epoch")
        self.epoch = epoch
        self.skip = skip

    def _epoch_length(self) -> int:
        count, replicas = len(self.indices), self.num_replicas
        return count // replicas * replicas if self.drop_last else -(-count // replicas) * replicas

    @property
    def samples_per_epoch(self) -> int:
        """This process's share of an epoch, skipped samples included."""
        return self._epoch_length() // self.num_replicas

    def __len__(self) -> int:
        return self.samples_per_epoch - self.skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order_seed, sample_key = np.random.SeedSequence([self.seed, self.epoch]).generate_state(
            2, dtype=np.uint64)
        count = len(self.indices)
        if self.shuffle:
            generator = torch.Generator().manual_seed(int(order_seed) & _SEED_MASK)
            order = torch.randperm(count, generator=generator).tolist()
        else:
            order = list(range(count))
        for position in range(self.rank + self.skip * self.num_replicas, self._epoch_length(), self.num_replicas):
            sample_seed = _splitmix64(int(sample_key) ^ position) & _SEED_MASK
            yield self.indices[order[position % count]], sample_seed


def make_loader(dataset: Dataset, sampler: Sampler, batch_size: int, workers: int,
                drop_last: bool, collate_fn: Callable[[list], Any] | None = None) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=False,
        # A private generator for the workers' base seed: iterating never advances the global
        # RNG, so model init and dropout do not depend on how the data is loaded.
        generator=torch.Generator().manual_seed(0),
    )


def split_indices(n: int, seed: int) -> tuple[list[int], list[int]]:
    """Seeded disjoint halves (floor, ceil) of ``range(n)``: trainA for weights, trainB for α/β."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    half = n // 2
    return sorted(order[:half]), sorted(order[half:])


def validation_loader(dataset: Dataset, workers: int, context: DistributedContext) -> DataLoader:
    """Whole images one at a time, in order; each process takes every world_size-th image, none twice."""
    shard = range(context.rank, len(dataset), context.world_size)
    return make_loader(dataset, SeededSampler(shard, 0, shuffle=False), 1, workers, drop_last=False)


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


@dataclass(frozen=True)
class TrainingSources:
    """The train and val sources of a run, with the class names and colours its outputs carry."""

    train: SegmentationSource
    val: SegmentationSource
    palette: np.ndarray

    @property
    def classes(self) -> dict[str, list]:
        """What a checkpoint keeps, so evaluation and inference need no dataset on disk."""
        return {"names": list(self.val.class_names), "palette": self.palette.tolist()}

    @property
    def data_split(self) -> dict[str, list[str]] | None:
        """The stems of each split when the dataset made the split itself (a flat folder), else None."""
        return getattr(self.train, "data_split", None)


def keep_data_split(sources: TrainingSources, resumed: dict[str, Any] | None, run_dir: RunDir | None,
                    origin: str) -> None:
    """A run that split its data itself keeps that split: checked against the resumed checkpoint's, and written
    to the run directory's ``split.json`` (rank 0) for people and later stages to read."""
    if resumed is not None:
        check_recorded_split(resumed.get("data_split"), sources.data_split, origin)
    if run_dir is not None and sources.data_split is not None:
        with atomic_path(run_dir.data_split) as temporary:
            Path(temporary).write_text(json.dumps(sources.data_split, indent=1) + "\n")


def check_recorded_split(recorded: dict[str, list[str]] | None, current: dict[str, list[str]] | None,
                         origin: str) -> None:
    """Refuse data whose split differs from the one a run recorded (images added, removed or renamed since):
    an image the run trained on must never be scored as validation."""
    if recorded is None or recorded == current:
        return
    if current is None:
        raise UserError(f"{origin}: the run split a flat folder itself, but the data now gives its own splits; "
                        "use the data the run was trained on")
    moved = sorted(set(recorded["train"]) & set(current.get("val", [])))
    changed = moved or sorted(set(recorded["train"] + recorded["val"]) ^ set(current["train"] + current["val"]))
    raise UserError(f"{origin}: the folder's images changed since the run split them into train and val "
                    f"({len(changed)} image(s), e.g. {changed[0]!r}); restore them, or start a new run")


def split_dataset(args: argparse.Namespace) -> DatasetInfo:
    """The registry entry of ``--dataset``, with ``--split`` checked to be one of its splits."""
    info = get_dataset_info(args.dataset)
    if args.split not in info.splits:
        raise UserError(f"--split {args.split}: dataset {args.dataset} has the splits {', '.join(info.splits)}")
    return info


def panoptic_split_source(args: argparse.Namespace, categories: Sequence[dict[str, Any]],
                          checkpoint: str) -> PanopticSource:
    """The ``--split`` of ``--dataset`` for a panoptic network trained on ``categories``: the labels must be
    panoptic, and the categories the same ids, things and stuff alike, in the same order (the network's outputs
    name them by position)."""
    info = get_dataset_info(args.dataset)
    if "panoptic" not in info.tasks:
        raise UserError(f"--dataset {args.dataset}: its labels serve {', '.join(info.tasks)}, and {checkpoint} is a "
                        "panoptic network")
    source = split_dataset(args).make_source(args.split, args)

    def kinds(listed: Sequence[dict[str, Any]]) -> list[tuple[int, bool]]:
        return [(category["id"], bool(category["isthing"])) for category in listed]

    if kinds(source.categories) != kinds(categories):
        raise UserError(f"--dataset {args.dataset}: its categories differ from those {checkpoint} was trained on")
    return source


def require_panoptic_dataset(name: str) -> None:
    """Refuse, before any recipe or file is looked at, a dataset whose labels are not panoptic."""
    info = get_dataset_info(name)
    if "panoptic" not in info.tasks:
        panoptic = sorted(other for other, entry in DATASETS.items() if "panoptic" in entry.tasks)
        raise UserError(f"--dataset {name}: its labels serve {', '.join(info.tasks)}, not panoptic (panoptic "
                        f"datasets: {', '.join(panoptic)})")


def training_sources(args: argparse.Namespace, context: DistributedContext, crop_size: int | None = None,
                     resize: int | None = None, task: str = "semantic") -> TrainingSources:
    """The dataset's train and val sources for ``task``, each checked whole before training (``check_split``) by
    rank 0: reading every mask once is enough, and the other ranks wait at the first collective."""
    info = get_dataset_info(args.dataset)
    if task not in info.tasks:
        raise UserError(f"--dataset {args.dataset}: its labels serve {', '.join(info.tasks)}, not {task}")
    train, val = info.make_source("train", args), info.make_source("val", args)
    if context.is_main:
        check_split(train, "train", args, crop_size, resize)
        check_split(val, "val", args)
    return TrainingSources(train, val, source_palette(info, val, args.num_classes))
