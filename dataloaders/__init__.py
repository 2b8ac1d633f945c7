"""Datasets for the stage scripts: the registry, and the seeded dataset, sampler and loaders.

Each dataset module registers itself on import (the list below is the whole set). A source
(see ``registry.SegmentationSource``) yields raw arrays; ``SegmentationDataset`` adds a transform
(``loaders``).
"""

from __future__ import annotations

from dataloaders.datasets import ade20k, camvid, cityscapes, coco, folder, pascal, synthetic  # noqa: F401 - register
from dataloaders.loaders import (SeededSampler, SegmentationDataset, TrainingSources, check_recorded_split,
                                 check_split, keep_data_split, make_loader, split_indices, training_sources,
                                 validation_loader)
from dataloaders.registry import (DATASETS, IGNORE_INDEX, DatasetInfo, SegmentationSource, add_dataset_arguments,
                                  check_mask_values, dataset_root, get_dataset_info, register_dataset,
                                  resolve_num_classes, source_palette, voc_palette)

__all__ = ["DATASETS", "IGNORE_INDEX", "DatasetInfo", "SeededSampler", "SegmentationDataset", "SegmentationSource",
           "TrainingSources", "add_dataset_arguments", "check_mask_values", "check_recorded_split", "check_split", "dataset_root",
           "get_dataset_info", "keep_data_split", "make_loader", "register_dataset", "resolve_num_classes", "source_palette",
           "split_indices", "training_sources", "validation_loader", "voc_palette"]
