"""Segmentation scores (IoU, mIoU, pixel and class accuracy) from one accumulated confusion matrix.

Every score is derived from integer counts, so batches can be added in any order and the matrices
of several processes summed (``merge``) before scoring, with no averaging-of-averages error.
"""

from __future__ import annotations

import numpy as np
import torch

from utils.labels import IGNORE_INDEX


class ConfusionMatrix:
    """Pixel counts per (ground truth, prediction) pair: rows are ground truth, columns predictions."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch of class-index maps; pixels with an ignored or unknown target are skipped.

        Both tensors are widened to int64 first: ``num_classes * target`` would overflow the
        uint8 masks that image loaders produce.
        """
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} differs from target shape "
                             f"{tuple(target.shape)}")
        if prediction.is_floating_point() or target.is_floating_point():
            raise TypeError("expected integer class-index tensors (take the argmax of the logits first)")
        target = target.reshape(-1).to(torch.int64)
        prediction = prediction.reshape(-1).to(device=target.device, dtype=torch.int64)
        keep = (target >= 0) & (target < self.num_classes) & (target != self.ignore_index)
        target, prediction = target[keep], prediction[keep]
        if torch.any((prediction < 0) | (prediction >= self.num_classes)):
            raise ValueError(f"prediction holds a class index outside 0..{self.num_classes - 1}")
        counts = torch.bincount(self.num_classes * target + prediction, minlength=self.num_classes**2)
        self._matrix = self._matrix.to(counts.device)
        self._matrix += counts.reshape(self.num_classes, self.num_classes)

    @classmethod
    def from_counts(cls, counts: torch.Tensor | np.ndarray | list, ignore_index: int = IGNORE_INDEX) -> ConfusionMatrix:
        """A matrix holding saved counts (e.g. the ``confusion_matrix`` of an evaluation summary)."""
        counts_t = torch.as_tensor(counts)
        matrix = cls(counts_t.shape[0], ignore_index)
        matrix.merge(counts_t)
        return matrix

    def reset(self) -> None:
        self._matrix = torch.zeros_like(self._matrix)

    @property
    def matrix(self) -> torch.Tensor:
        """A copy of the int64 counts [C, C], on the device of the last update."""
        return self._matrix.clone()

    def merge(self, other_matrix: torch.Tensor | np.ndarray) -> None:
        """Add counts gathered elsewhere, e.g. another process's matrix after an all-reduce."""
        other = torch.as_tensor(other_matrix)
        if other.shape != self._matrix.shape:
            raise ValueError(f"expected a {self.num_classes}x{self.num_classes} matrix, "
                             f"got shape {tuple(other.shape)}")
        if other.is_floating_point():
            raise TypeError("expected integer counts, got a floating-point matrix")
        self._matrix += other.to(device=self._matrix.device, dtype=torch.int64)

    def iou(self) -> np.ndarray:
        """Per-class TP / (TP + FP + FN); NaN for a class absent from both ground truth and prediction."""
        counts = self._counts()
        true_positives = np.diag(counts)
        union = counts.sum(axis=1) + counts.sum(axis=0) - true_positives
        scores = np.full(self.num_classes, np.nan)
        np.divide(true_positives, union, out=scores, where=union > 0)
        return scores

    def miou(self) -> float:
        """Mean IoU over the classes seen at all; 0.0 before any pixel has been counted."""
        scores = self.iou()
        seen = ~np.isnan(scores)
        return float(scores[seen].mean()) if seen.any() else 0.0

    def pixel_accuracy(self) -> float:
        counts = self._counts()
        total = counts.sum()
        return float(np.trace(counts) / total) if total > 0 else 0.0

    def ground_truth_pixels(self) -> np.ndarray:
        return self._counts().sum(axis=1)

    def predicted_pixels(self) -> np.ndarray:
        return self._counts().sum(axis=0)

    def class_accuracy(self) -> np.ndarray:
        """Per-class recall TP / (TP + FN); NaN for a class absent from the ground truth."""
        counts = self._counts()
        gt_pixels = counts.sum(axis=1)
        scores = np.full(self.num_classes, np.nan)
        np.divide(np.diag(counts), gt_pixels, out=scores, where=gt_pixels > 0)
        return scores

    def mean_class_accuracy(self) -> float:
        """Mean recall over the classes present in the ground truth."""
        scores = self.class_accuracy()
        present = ~np.isnan(scores)
        return float(scores[present].mean()) if present.any() else 0.0

    def frequency_weighted_iou(self) -> float:
        """IoU averaged with each class weighted by its share of ground-truth pixels."""
        counts = self._counts()
        gt_pixels = counts.sum(axis=1)
        total = gt_pixels.sum()
        if total == 0:
            return 0.0
        present = gt_pixels > 0
        return float((gt_pixels[present] / total * self.iou()[present]).sum())

    def summary(self) -> dict[str, float | list]:
        """All scores as plain Python values (JSON-ready: a NaN class IoU becomes None)."""
        return {
            "miou": self.miou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "mean_class_accuracy": self.mean_class_accuracy(),
            "fw_iou": self.frequency_weighted_iou(),
            "per_class_iou": [None if np.isnan(score) else float(score) for score in self.iou()],
        }

    def _counts(self) -> np.ndarray:
        return self._matrix.cpu().numpy().astype(np.float64)
