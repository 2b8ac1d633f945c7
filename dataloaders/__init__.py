"""Datasets for the stage scripts: the registry, and the seeded dataset, sampler and loaders.

Each dataset module registers itself on import (the list below is the whole set). A source
(see ``registry.SegmentationSource``, or ``panoptic.PanopticSource`` for panoptic datasets) yields raw
arrays; ``SegmentationDataset`` (``loaders``) and ``PanopticDataset`` (``panoptic``) add a transform.
"""

from __future__ import annotations

from dataloaders.datasets import (ade20k, camvid, cityscapes, coco, coco_panoptic, folder,  # noqa: F401 - register
                                  pascal, synthetic, synthetic_context, synthetic_panoptic)
from dataloaders.loaders import (SeededSampler, SegmentationDataset, TrainingSources, check_recorded_split,
                                 check_split, keep_data_split, make_loader, panoptic_split_source,
                                 require_panoptic_dataset, split_dataset, split_indices, training_sources,
                                 validation_loader)
from dataloaders.panoptic import PanopticDataset, PanopticSource, PanopticTransform, trainable_indices
from dataloaders.registry import (DATASETS, IGNORE_INDEX, DatasetInfo, SegmentationSource, add_dataset_arguments,
                                  check_mask_values, dataset_root, get_dataset_info, register_dataset,
                                  resolve_num_classes, source_palette, voc_palette)

__all__ = ["DATASETS", "IGNORE_INDEX", "DatasetInfo", "PanopticDataset", "PanopticSource", "PanopticTransform",
           "SeededSampler", "SegmentationDataset", "SegmentationSource", "TrainingSources", "add_dataset_arguments",
           "check_mask_values", "check_recorded_split", "check_split", "dataset_root", "get_dataset_info",
           "keep_data_split", "make_loader", "panoptic_split_source", "require_panoptic_dataset", "register_dataset",
           "resolve_num_classes", "source_palette", "split_dataset", "split_indices", "trainable_indices",
           "training_sources", "validation_loader", "voc_palette"]
