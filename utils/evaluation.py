"""Validation loop: cross-entropy and the confusion-matrix metrics over a loader."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from utils.metrics import ConfusionMatrix

IGNORE_INDEX = 255


@torch.no_grad()
def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, num_classes: int, device: torch.device,
             desc: str = "val") -> dict[str, Any]:
    """Metrics summary of ``model`` on ``loader`` plus the mean loss; leaves the model in eval mode."""
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)
    total_loss, batches = 0.0, 0
    for images, masks in tqdm(loader, desc=desc, leave=False, disable=None):
        images, masks = images.to(device), masks.to(device)
        logits = model(images)
        total_loss += F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX).item()
        batches += 1
        matrix.update(logits.argmax(dim=1).cpu(), masks.cpu())
    summary = matrix.summary()
    summary["loss"] = total_loss / max(batches, 1)
    return summary
