"""Dataset registry, dataset flags, and the seeded dataset/sampler/loader the stage scripts use.

A dataset plugs in by registering a ``DatasetInfo`` whose ``make_source(split, args)`` returns a
*source*: an object with ``__len__``, ``load(i) -> (image uint8 [H, W, 3], mask uint8 [H, W])``
and ``class_names``. ``SegmentationDataset`` turns a source and a transform into tensors.

Reproducibility: ``SeededSampler`` yields ``(index, sample_seed)`` pairs and the dataset seeds the
transform's generator with ``sample_seed``, so the augmentation of every sample is a function of
(seed, epoch, position) alone, whatever the number of workers, and survives a resume.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from config_utils.common import add_flag, non_negative_int, positive_int
from dataloaders.synthetic import SyntheticShapes
from dataloaders.transforms import IGNORE_INDEX
from utils.errors import UserError


class SegmentationSource(Protocol):
    """What a dataset provides for one split: raw arrays, no tensors, no augmentation."""

    class_names: Sequence[str]

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


Transform = Callable[[np.ndarray, np.ndarray, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def voc_palette(num_classes: int) -> np.ndarray:
    """The PASCAL VOC colour map: [N, 3] uint8, class 0 black, neighbours clearly distinct."""
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for class_id in range(num_classes):
        bits, colour = class_id, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((bits >> channel) & 1) << shift
            bits >>= 3
        palette[class_id] = colour
    return palette


@dataclass(frozen=True)
class DatasetInfo:
    """Everything the scripts need to know about a dataset before touching its files."""

    name: str
    num_classes: int | None  # None: chosen with --num_classes (default_num_classes otherwise)
    default_num_classes: int
    make_source: Callable[[str, argparse.Namespace], SegmentationSource]
    defaults: dict[str, Any] = field(default_factory=dict)  # per-dataset default flag values
    palette: Callable[[int], np.ndarray] = voc_palette


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    if info.name in DATASETS:
        raise ValueError(f"dataset {info.name!r} is already registered")
    DATASETS[info.name] = info
    return info


def get_dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise UserError(f"--dataset: unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "dataset", default="synthetic", choices=sorted(DATASETS),
             help="dataset to use (default: %(default)s)")
    add_flag(parser, "data_root", default=None,
             help="dataset root folder; overrides AUTODEEPLAB_<DATASET>_ROOT and "
                  "AUTODEEPLAB_DATA_ROOT (unused by synthetic)")
    add_flag(parser, "num_classes", type=positive_int, default=None,
             help="number of classes including background (default: the dataset's own)")
    synthetic = parser.add_argument_group("synthetic dataset")
    add_flag(synthetic, "synthetic_size", type=positive_int, default=96,
             help="image side in pixels (default: %(default)s)")
    add_flag(synthetic, "synthetic_train_samples", type=positive_int, default=400,
             help="training images (default: %(default)s)")
    add_flag(synthetic, "synthetic_val_samples", type=positive_int, default=100,
             help="validation images (default: %(default)s)")
    add_flag(synthetic, "synthetic_seed", type=non_negative_int, default=0,
             help="seed of the generated images (default: %(default)s)")


def resolve_num_classes(args: argparse.Namespace) -> int:
    """The class count in use: fixed by the dataset, or --num_classes, or the dataset default."""
    info = get_dataset_info(args.dataset)
    if info.num_classes is None:
        return info.default_num_classes if args.num_classes is None else args.num_classes
    if args.num_classes not in (None, info.num_classes):
        raise UserError(f"--num_classes: dataset {info.name} has exactly {info.num_classes} "
                        f"classes, got {args.num_classes}; drop the flag")
    return info.num_classes


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
        self._check_labels(int(index), mask)
        return self.transform(image, mask, torch.Generator().manual_seed(int(seed)))

    def _check_labels(self, index: int, mask: np.ndarray) -> None:
        """Fail on the raw mask, where the offending sample is still known, not in the loss."""
        bad = (mask >= self.num_classes) & (mask != IGNORE_INDEX)
        if bad.any():
            raise UserError(f"sample {index} of {type(self.source).__name__}: mask label "
                            f"{int(mask[bad].max())} is outside 0..{self.num_classes - 1} "
                            f"(and not {IGNORE_INDEX}); check --num_classes and the data")


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

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _epoch_length(self) -> int:
        count, replicas = len(self.indices), self.num_replicas
        return count // replicas * replicas if self.drop_last else -(-count // replicas) * replicas

    def __len__(self) -> int:
        return self._epoch_length() // self.num_replicas

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order_seed, sample_key = np.random.SeedSequence([self.seed, self.epoch]).generate_state(
            2, dtype=np.uint64)
        count = len(self.indices)
        if self.shuffle:
            generator = torch.Generator().manual_seed(int(order_seed) & _SEED_MASK)
            order = torch.randperm(count, generator=generator).tolist()
        else:
            order = list(range(count))
        for position in range(self.rank, self._epoch_length(), self.num_replicas):
            sample_seed = _splitmix64(int(sample_key) ^ position) & _SEED_MASK
            yield self.indices[order[position % count]], sample_seed


def make_loader(dataset: Dataset, sampler: Sampler, batch_size: int, workers: int,
                drop_last: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
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


def _synthetic_source(split: str, args: argparse.Namespace) -> SyntheticShapes:
    num_samples = args.synthetic_train_samples if split == "train" else args.synthetic_val_samples
    return SyntheticShapes(split, num_samples, args.synthetic_size, resolve_num_classes(args),
                           args.synthetic_seed)


register_dataset(DatasetInfo(
    name="synthetic",
    num_classes=None,
    default_num_classes=4,  # background, disk, ring, cross: learnable in minutes on CPU
    make_source=_synthetic_source,
    defaults={"search_epochs": 8, "alpha_epoch": 4, "retrain_epochs": 6, "crop_size": 64, "resize": None,
              "batch_size": 8},
))
