"""Validation and evaluation: predictions (optionally multi-scale and flipped), metrics and reports.

``predict`` is the one place where a model turns an image batch into class probabilities; the
training loops, ``evaluate.py`` and ``inference.py`` all go through it.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from engine.distributed import DistributedContext, all_reduce_sum, broadcast_from_main
from evaluation.metrics import ConfusionMatrix
from utils.labels import IGNORE_INDEX, colorize

TENSORBOARD_EXAMPLES = 4  # validation images shown with their ground truth and prediction each validation
PROBABILITY_FLOOR = 1e-12  # log of averaged probabilities: keeps the loss finite on a confident mistake


def predict(model: nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0,),
            flip: bool = False, resize: int | None = None, probabilities: bool = True) -> torch.Tensor:
    """Class probabilities [N, C, H, W] at the input size, averaged over ``scales`` (and mirrored inputs).

    Each scaled input is resized bilinearly, its logits resized back to the input size and
    softmaxed; averaging probabilities (not logits) is DeepLab's multi-scale test. ``resize`` first
    brings the short side to that many pixels (the scales apply to that size); the probabilities still
    come back at the input size, so scores are taken against the full-size labels. Without ``probabilities``, a
    single pass (one scale, no flip) returns its logits at the input size instead: the same argmax, without the
    softmax (what a score that reads only the predicted classes needs); several passes still average
    probabilities.
    """
    height, width = images.shape[-2:]
    base = (height, width)
    if resize is not None:
        factor = resize / min(height, width)
        base = (max(1, round(height * factor)), max(1, round(width * factor)))
    total = None
    softmax = probabilities or len(scales) > 1 or flip
    for scale in scales:
        size = (max(1, math.ceil(base[0] * scale)), max(1, math.ceil(base[1] * scale)))
        scaled = images if size == (height, width) else F.interpolate(images, size=size, mode="bilinear",
                                                                      align_corners=False)
        for mirrored in ((False, True) if flip else (False,)):
            logits = model(scaled.flip(-1) if mirrored else scaled).float()
            if mirrored:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            scores = logits.softmax(dim=1) if softmax else logits
            total = scores if total is None else total + scores
    return total / (len(scales) * (2 if flip else 1))


@torch.no_grad()
def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, num_classes: int, device: torch.device,
             scales: Sequence[float] = (1.0,), flip: bool = False, keep_examples: int = 0,
             desc: str = "val", context: DistributedContext | None = None, resize: int | None = None,
             loss: bool = True) -> dict[str, Any]:
    """Metrics of ``model`` on ``loader`` (see ``ConfusionMatrix.summary``) plus the mean loss and the
    confusion matrix; with ``keep_examples``, the first images with their ground truth and prediction
    (``examples``: (image, mask, prediction) CPU tensors). Leaves the model in eval mode. ``loss=False`` skips
    the loss (and, for a single pass, the softmax): the same confusion matrix, for scores that need nothing else.

    Under several processes each evaluates its own shard and the counts and losses are summed here."""
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)
    total_loss, batches, examples = 0.0, 0, []
    context = context or DistributedContext()
    for images, masks in tqdm(loader, desc=desc, leave=False, disable=None if context.is_main else True):
        images, masks = images.to(device), masks.to(device)
        probabilities = predict(model, images, scales, flip, resize, probabilities=loss)
        if loss and (masks != IGNORE_INDEX).any():  # no labelled pixel, no loss (the mean over none is NaN)
            log_probabilities = probabilities.clamp_min(PROBABILITY_FLOOR).log()
            total_loss += F.nll_loss(log_probabilities, masks, ignore_index=IGNORE_INDEX).item()
            batches += 1
        prediction = probabilities.argmax(dim=1).cpu()
        matrix.update(prediction, masks.cpu())
        for image, mask, predicted in zip(images.cpu(), masks.cpu(), prediction):
            if len(examples) < keep_examples:
                examples.append((image, mask, predicted))
    matrix = ConfusionMatrix.from_counts(all_reduce_sum(matrix.matrix.cpu(), context))
    loss_sum, batch_count = all_reduce_sum(torch.tensor([total_loss, batches], dtype=torch.float64), context).tolist()
    summary: dict[str, Any] = matrix.summary()
    if loss:
        summary["loss"] = loss_sum / max(batch_count, 1)
    summary["confusion_matrix"] = matrix.matrix.tolist()
    if keep_examples:
        summary["examples"] = examples
    return summary


class SemanticValidation:
    """An epoch's validation for the ``Validation`` hook: loss, mIoU, pixel accuracy and per-class IoU over
    the whole split (each rank evaluates its shard and the counts are summed, so the scores are exact), and
    on rank 0 the first images beside their ground truth and prediction in TensorBoard.

    ``denormalize`` turns a network input back into a [3, H, W] picture in [0, 1] (the data pipeline's)."""

    def __init__(self, model: nn.Module, loader: torch.utils.data.DataLoader, num_classes: int,
                 device: torch.device, context: DistributedContext, palette: np.ndarray,
                 denormalize: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.model, self.loader, self.num_classes, self.device = model, loader, num_classes, device
        self.context, self.palette, self.denormalize = context, palette, denormalize

    def __call__(self, epoch: int, writer: SummaryWriter | None) -> dict[str, Any]:
        broadcast_from_main(self.model, self.context)
        val = evaluate(self.model, self.loader, self.num_classes, self.device, keep_examples=TENSORBOARD_EXAMPLES,
                       context=self.context)
        for index, (image, mask, prediction) in enumerate(val["examples"] if writer is not None else []):
            panels = [self.denormalize(image)] + [
                torch.from_numpy(colorize(m.numpy(), self.palette)).permute(2, 0, 1).float() / 255
                for m in (mask, prediction)]
            writer.add_image(f"val_examples/{index} (image | ground truth | prediction)", torch.cat(panels, dim=2),
                             epoch)
        return {"val_loss": val["loss"], "val_miou": val["miou"], "val_pixel_accuracy": val["pixel_accuracy"],
                "val_per_class_iou": val["per_class_iou"]}


def semantic_table(summary: dict[str, Any], class_names: Sequence[str]) -> str:
    """Per-class IoU and accuracy, then the four overall scores, as a fixed-width text table."""
    matrix = ConfusionMatrix.from_counts(summary["confusion_matrix"])
    width = max(12, *(len(name) for name in class_names))
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'accuracy':>8}  {'pixels':>12}"]
    for name, iou, accuracy, pixels in zip(class_names, matrix.iou(), matrix.class_accuracy(),
                                           matrix.ground_truth_pixels()):
        lines.append(f"{name:<{width}}  {_percent(iou):>7}  {_percent(accuracy):>8}  {int(pixels):>12,}")
    lines.append("")
    for label, key in (("mIoU", "miou"), ("pixel accuracy", "pixel_accuracy"),
                       ("mean class accuracy", "mean_class_accuracy"), ("frequency-weighted IoU", "fw_iou")):
        lines.append(f"{label:<{width + 10}} {100 * summary[key]:6.2f}")
    return "\n".join(lines)


def write_semantic_report(summary: dict[str, Any], class_names: Sequence[str], out_dir: Path,
                 details: dict[str, Any] | None = None) -> str:
    """Write ``metrics.json``, ``per_class.csv`` and ``confusion_matrix.png`` to ``out_dir``; return the table."""
    from utils.plots import plot_confusion, save_figure  # matplotlib only where a report is written

    out_dir.mkdir(parents=True, exist_ok=True)
    matrix = ConfusionMatrix.from_counts(summary["confusion_matrix"])
    scores = {key: value for key, value in summary.items() if key != "examples"}
    record = {"class_names": list(class_names), **(details or {}), **scores}
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    with open(out_dir / "per_class.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class_id", "class", "iou", "accuracy", "ground_truth_pixels", "predicted_pixels"])
        for class_id, row in enumerate(zip(class_names, matrix.iou(), matrix.class_accuracy(),
                                           matrix.ground_truth_pixels(), matrix.predicted_pixels())):
            name, iou, accuracy, gt_pixels, predicted_pixels = row
            writer.writerow([class_id, name, _csv_float(iou), _csv_float(accuracy), int(gt_pixels),
                             int(predicted_pixels)])
    save_figure(plot_confusion(matrix.matrix.numpy(), class_names), out_dir / "confusion_matrix.png")
    return semantic_table(summary, class_names)


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.2f}"


def _csv_float(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6f}"
