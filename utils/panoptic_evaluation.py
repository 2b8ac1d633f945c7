"""Panoptic evaluation: a panoptic network's outputs turned into a panoptic map and scored.

Per image, as the original's evaluation (shared/reference/autopanoptic.md §1.4, §1.5, §7): instance masks
pasted at the original image size and thresholded at 0.5, the semantic argmax resized to it with nearest
neighbours, the two merged by the original's heuristic, and the result scored by PQ/SQ/RQ against the
ground truth at its own size; the semantic branch is also scored by mIoU over its 1 + S labels at the
network's input size. Every rank scores its shard and the counts are summed, so the scores are exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.distributed import DistributedContext, all_reduce_sum
from utils.labels import IGNORE_INDEX
from utils.metrics import ConfusionMatrix
from utils.panoptic_merge import STUFF_AREA_LIMIT, merge_panoptic
from utils.panoptic_quality import PanopticQuality

MASK_THRESHOLD = 0.5  # the original's Masker threshold


def panoptic_prediction(output: dict[str, torch.Tensor], thing_ids: Sequence[int], stuff_ids: Sequence[int],
                        size: tuple[int, int], stuff_area_limit: int = STUFF_AREA_LIMIT
                        ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The panoptic map [H, W] (``size``) and its segments from one image's network output (``boxes``,
    ``labels`` 1..T, ``scores``, ``masks`` [N, 1, h, w] probabilities and ``semantic`` logits [1 + S, h, w]
    at the input size); detection label k is category ``thing_ids[k - 1]``, semantic label k stuff category
    ``stuff_ids[k - 1]``. A stuff segment smaller than ``stuff_area_limit`` pixels is left void (the original's
    4096 suits COCO's images of about 640×480; smaller images need a proportionally smaller limit)."""
    masks = output["masks"]
    if masks is not None and len(masks) and tuple(masks.shape[-2:]) != tuple(size):
        masks = F.interpolate(masks.float(), size=size, mode="bilinear", align_corners=False)
    masks = (masks[:, 0] > MASK_THRESHOLD).cpu().numpy() if masks is not None and len(masks) else np.zeros(
        (0, *size), dtype=bool)
    semantic = output["semantic"].argmax(0)
    if tuple(semantic.shape) != tuple(size):
        semantic = F.interpolate(semantic[None, None].float(), size=size, mode="nearest")[0, 0].long()
    categories = [thing_ids[int(label) - 1] for label in output["labels"].tolist()]
    return merge_panoptic(masks, output["scores"].cpu().numpy(), categories, semantic.cpu().numpy(),
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
    supernet on its path, say); by default ``model(images)``. With ``keep_predictions``, this rank's
    panoptic maps and segments per image id (``predictions``). Leaves the model in eval mode."""
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
                              "panoptic": summary, "semantic_miou": semantic["miou"]}
    if keep_predictions:
        result["predictions"] = predictions
    return result
