"""Segmentation losses: cross-entropy, and online hard example mining (OHEM) as an option.

OHEM (as in PSPNet and mmsegmentation) averages the cross-entropy over the hard pixels only: those
whose probability for their true class is at most ``threshold``, and never fewer than ``min_kept``
(the ``min_kept`` hardest), so easy background pixels stop dominating the gradient.

A batch whose pixels are all ignored (label 255) contributes a loss of 0 and zero gradients to both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from utils.labels import IGNORE_INDEX

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels; 0 (with zero gradients) for a batch without any, where
    PyTorch's mean over no pixel is NaN and would stop the run as a diverged one."""
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (target != IGNORE_INDEX).sum().clamp(min=1)


def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.7,
                       min_kept: int = 100_000) -> torch.Tensor:
    """Mean cross-entropy over the pixels whose true-class probability is <= max(threshold, the
    min_kept-th smallest such probability); all labelled pixels when there are at most min_kept."""
    pixel_losses = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none").reshape(-1)
    valid = target.reshape(-1) != IGNORE_INDEX
    losses = pixel_losses[valid]
    if losses.numel() <= min_kept:
        return losses.mean() if losses.numel() else pixel_losses.sum() * 0.0
    true_class_probability = torch.exp(-losses.detach())
    kth_smallest = torch.kthvalue(true_class_probability, min_kept).values
    cutoff = torch.maximum(kth_smallest, torch.tensor(threshold, device=kth_smallest.device))
    return losses[true_class_probability <= cutoff].mean()


def make_criterion(loss: str, ohem_threshold: float, ohem_min_kept: int) -> Criterion:
    if loss == "ce":
        return cross_entropy
    return lambda logits, target: ohem_cross_entropy(logits, target, ohem_threshold, ohem_min_kept)
