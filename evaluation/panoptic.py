"""Panoptic evaluation: a panoptic network's outputs turned into a panoptic map and scored.

Per image, as the original's evaluation does (maskrcnn-benchmark's ``Masker`` in
``coco_eval.py:prepare_for_coco_segmentation``, ``seg_branch.py``, panopticapi's ``combine`` and
``pq_compute``): the boxes are scaled to the original image size and each instance's mask (the mask head's
M×M probabilities) is pasted into its box there and thresholded at 0.5; the semantic argmax is resized to
that size with PIL's nearest neighbour; the two are merged by the original's heuristic, and the result is
scored by PQ/SQ/RQ against the ground truth at its own size. The semantic branch is also scored by mIoU over
its 1 + S labels at the network's input size. Every rank scores its shard and the counts are summed, so the
scores are exact.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from engine.distributed import DistributedContext, all_reduce_sum, broadcast_from_main
from evaluation.metrics import ConfusionMatrix
from evaluation.panoptic_quality import PanopticQuality
from modeling.autopanoptic.merge import STUFF_AREA_LIMIT, merge_panoptic
from modeling.detection_ops import install as install_detection_ops
from utils.labels import IGNORE_INDEX
from utils.torchvision_compat import import_torchvision

import_torchvision()
install_detection_ops()
from torchvision.models.detection.roi_heads import paste_masks_in_image  # noqa: E402

MASK_THRESHOLD = 0.5  # the original's Masker threshold
MASK_PADDING = 1  # the original's Masker padding: the M×M mask is padded by a pixel and its box widened to match


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A label map [h, w] resized to ``size`` (H, W) with PIL's nearest neighbour, as the original resizes its
    semantic argmax. torch's ``nearest`` takes other source pixels (it drops the half-pixel offset), and even
    ``nearest-exact`` picks another one where a pixel centre falls on a source boundary and the two round the
    position differently (392 of 4,800 pixels from 64×96 to 60×80)."""
    if tuple(labels.shape) == tuple(size):
        return labels
    resized = Image.fromarray(labels.astype(np.int32)).resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(resized).astype(labels.dtype)


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, input_size: tuple[int, int],
                size: tuple[int, int]) -> np.ndarray:
    """Boolean instance masks [N, H, W] at the original image size ``size``: the boxes (x1, y1, x2, y2 at the
    network's ``input_size``) scaled to it, and each M×M mask probability map [N, 1, M, M] pasted into its box
    there and thresholded at 0.5, as the original's ``Masker`` does. Pasting at the input size and resizing the
    result would blur the masks twice and misplace their edges by up to a resize step."""
    if not len(masks):
        return np.zeros((0, *size), dtype=bool)
    scale = boxes.new_tensor([size[1] / input_size[1], size[0] / input_size[0]] * 2)
    pasted = paste_masks_in_image(masks.float(), boxes.float() * scale, size, padding=MASK_PADDING)
    return (pasted[:, 0] > MASK_THRESHOLD).cpu().numpy()


def panoptic_prediction(output: dict[str, torch.Tensor], thing_ids: Sequence[int], stuff_ids: Sequence[int],
                        size: tuple[int, int], stuff_area_limit: int = STUFF_AREA_LIMIT
                        ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The panoptic map [H, W] (``size``, the original image's) and its segments from one image's network
    output at the input size: ``boxes``, ``labels`` 1..T, ``scores``, ``masks`` [N, 1, M, M] probabilities in
    box coordinates (what the mask head gives) and ``semantic`` logits [1 + S, h, w]. Detection label k is
    category ``thing_ids[k - 1]``, semantic label k stuff category ``stuff_ids[k - 1]``. A stuff segment smaller
    than ``stuff_area_limit`` pixels is left void (the original's 4096 suits COCO's images of about 640×480;
    smaller images need a proportionally smaller limit)."""
    semantic = output["semantic"].argmax(0).cpu().numpy()
    masks = paste_masks(output["masks"], output["boxes"], semantic.shape, size)
    categories = [thing_ids[int(label) - 1] for label in output["labels"].tolist()]
    return merge_panoptic(masks, output["scores"].cpu().numpy(), categories, resize_labels(semantic, size),
                          {label: category for label, category in enumerate(stuff_ids, start=1)},
                          stuff_area_limit=stuff_area_limit)


@torch.no_grad()
def evaluate_panoptic(model: torch.nn.Module, loader: torch.utils.data.DataLoader,
                      categories: Sequence[dict[str, Any]], device: torch.device,
                      forward: Callable[[torch.nn.Module, list[torch.Tensor]], list[dict[str, Any]]] | None = None,
                      context: DistributedContext | None = None, desc: str = "val",
                      stuff_area_limit: int = STUFF_AREA_LIMIT, keep_predictions: bool = False) -> dict[str, Any]:
    """PQ/SQ/RQ (all, things, stuff, per category) and the semantic mIoU of ``model`` on ``loader`` (batches
    of images and targets from ``dataloaders.panoptic``). ``forward(model, images)`` runs the network (a
    supernet on its path, say); by default ``model(images)``. ``gt_area_mismatches``: this rank's ground-truth
    segments whose JSON area differs from their pixels (``PanopticQuality.area_mismatches``). With
    ``keep_predictions``, this rank's panoptic maps and segments per image id (``predictions``). Leaves the model
    in eval mode."""
    model.eval()
    context = context or DistributedContext()
    things = [c["id"] for c in categories if c["isthing"]]
    stuff = [c["id"] for c in categories if not c["isthing"]]
    quality = PanopticQuality(categories)
    matrix = ConfusionMatrix(1 + len(stuff), ignore_index=IGNORE_INDEX)
    predictions: dict[int, tuple[np.ndarray, list[dict[str, Any]]]] = {}
    for images, targets in tqdm(loader, desc=desc, leave=False, disable=None if context.is_main else True):
        images = [image.to(device) for image in images]
        outputs = forward(model, images) if forward is not None else model(images)
        for output, target in zip(outputs, targets):
            matrix.update(output["semantic"].argmax(0)[None].cpu(), target["semantic"][None])
            ids, segments = panoptic_prediction(output, things, stuff, tuple(target["orig_size"]), stuff_area_limit)
            quality.update(target["panoptic"].numpy(), target["segments"], ids, segments, image=target["image_id"])
            if keep_predictions:
                predictions[target["image_id"]] = (ids, segments)
    state = all_reduce_sum(torch.from_numpy(quality.state()), context).numpy()
    summary = PanopticQuality.from_state(categories, state).summary()
    semantic = ConfusionMatrix.from_counts(all_reduce_sum(matrix.matrix.cpu(), context)).summary()
    result: dict[str, Any] = {"pq": summary["All"]["pq"], "sq": summary["All"]["sq"], "rq": summary["All"]["rq"],
                              "pq_things": summary["Things"]["pq"], "pq_stuff": summary["Stuff"]["pq"],
                              "panoptic": summary, "semantic_miou": semantic["miou"],
                              "gt_area_mismatches": quality.area_mismatches}
    if keep_predictions:
        result["predictions"] = predictions
    return result


VALIDATION_KEYS = ("pq", "sq", "rq", "pq_things", "pq_stuff", "semantic_miou")  # what a validation records


class PanopticValidation:
    """An epoch's validation for the ``Validation`` hook: PQ/SQ/RQ and the semantic mIoU on the whole split."""

    def __init__(self, model: torch.nn.Module, loader: torch.utils.data.DataLoader, categories: list[dict[str, Any]],
                 device: torch.device, context: DistributedContext, stuff_area_limit: int) -> None:
        self.model, self.loader, self.categories, self.device = model, loader, categories, device
        self.context, self.stuff_area_limit = context, stuff_area_limit

    def __call__(self, epoch: int, writer: SummaryWriter | None) -> dict[str, Any]:
        broadcast_from_main(self.model, self.context)
        scores = evaluate_panoptic(self.model, self.loader, self.categories, self.device, context=self.context,
                                   stuff_area_limit=self.stuff_area_limit)
        return {key: scores[key] for key in VALIDATION_KEYS}


def pq_table(summary: dict[str, Any], names: dict[int, str]) -> str:
    """PQ, SQ and RQ for all categories, things and stuff, then per category, as a fixed-width table."""
    width = max(12, *(len(name) for name in names.values()))
    lines = [f"{'':<{width}}  {'PQ':>6}  {'SQ':>6}  {'RQ':>6}  {'n':>4}"]
    for group in ("All", "Things", "Stuff"):
        scores = summary[group]
        lines.append(f"{group:<{width}}  {100 * scores['pq']:6.2f}  {100 * scores['sq']:6.2f}  "
                     f"{100 * scores['rq']:6.2f}  {scores['n']:>4}")
    lines.append("")
    for category, scores in summary["per_class"].items():
        lines.append(f"{names.get(int(category), str(category)):<{width}}  {100 * scores['pq']:6.2f}  "
                     f"{100 * scores['sq']:6.2f}  {100 * scores['rq']:6.2f}")
    return "\n".join(lines)


def write_panoptic_report(scores: dict[str, Any], categories: list[dict[str, Any]], out_dir: Path,
                 details: dict[str, Any]) -> str:
    """``metrics.json`` (PQ per group and per category, and the semantic mIoU where ``scores`` has one: a network's,
    not a prediction folder's) in ``out_dir``; returns the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {**details, "categories": categories, **{key: scores[key] for key in VALIDATION_KEYS if key in scores},
              "panoptic": scores["panoptic"]}
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    table = pq_table(scores["panoptic"], {category["id"]: category["name"] for category in categories})
    if "semantic_miou" not in scores:
        return table
    return f"{table}\n\nsemantic mIoU (things merged, stuff) {100 * scores['semantic_miou']:.2f}"
