"""One panoptic id map from instance masks and a semantic label map, as Auto-Panoptic builds it.

Auto-Panoptic turns its two heads' outputs into a panoptic prediction with panopticapi's combine heuristic,
changed in one place: the order in which instances claim pixels (``pancmp``: among confident instances the
smaller mask goes first). Its PQ depends on that order and on the thresholds, so both are reproduced here
exactly: instances scoring under 0.5 are dropped, an instance more than half covered by earlier ones is
dropped, the others paint only unclaimed pixels; then each stuff label paints its unclaimed pixels if at least
4096 of them are left; the rest is VOID (0). Segment ids are 1, 2, 3, ... in placement order (the original
draws jittered colours instead).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cmp_to_key
from typing import Any

import numpy as np
import torch

VOID = 0
THINGS_LABEL = 0  # the semantic label of every thing pixel: never a stuff segment
IGNORE_LABEL = 255
CONFIDENCE_THRESHOLD = 0.5  # instances scoring below it are dropped
OVERLAP_THRESHOLD = 0.5  # an instance whose share already claimed exceeds it is dropped
STUFF_AREA_LIMIT = 64 * 64  # a stuff label with fewer unclaimed pixels is dropped
SMALLER_FIRST_SCORE = 0.725  # two instances both scoring above it are ordered by mask area, smaller first


def compare_instances(first: tuple[float, int], second: tuple[float, int]) -> int:
    """Auto-Panoptic's ``pancmp`` on (score, mask area) pairs: negative when ``first`` is placed earlier.

    If both scores exceed 0.725 the smaller mask comes first, otherwise the higher score; 0 means a tie, which a
    stable sort leaves in input order.
    """
    (first_score, first_area), (second_score, second_area) = first, second
    if first_score > SMALLER_FIRST_SCORE and second_score > SMALLER_FIRST_SCORE:
        if first_area < second_area:
            return -1
        if first_area > second_area:
            return 1
    else:
        if first_score < second_score:
            return 1
        if first_score > second_score:
            return -1
    return 0


def placement_order(scores: Sequence[float], areas: Sequence[int],
                    confidence_threshold: float = CONFIDENCE_THRESHOLD) -> list[int]:
    """Indices of the instances scoring at least ``confidence_threshold``, in the order they claim pixels."""
    kept = [index for index, score in enumerate(scores) if score >= confidence_threshold]
    key = cmp_to_key(compare_instances)
    return sorted(kept, key=lambda index: key((scores[index], areas[index])))


def merge_panoptic(masks: np.ndarray | torch.Tensor, scores: Sequence[float] | np.ndarray | torch.Tensor,
                   category_ids: Sequence[int] | np.ndarray | torch.Tensor, semantic: np.ndarray | torch.Tensor,
                   stuff_categories: Mapping[int, int], *, confidence_threshold: float = CONFIDENCE_THRESHOLD,
                   overlap_threshold: float = OVERLAP_THRESHOLD,
                   stuff_area_limit: int = STUFF_AREA_LIMIT) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The panoptic id map [H, W] (int32, 0 = VOID) and its segment records, in placement order.

    ``masks`` are boolean instance masks [N, H, W] with their ``scores`` and ``category_ids``; ``semantic`` is
    the label map [H, W] whose labels other than 0 (things) and 255 (void) are keys of ``stuff_categories``
    (label -> stuff category id). Records hold ``id``, ``category_id``, ``isthing``, ``area`` (pixels painted)
    and, for things, ``score``.
    """
    masks = _to_numpy(masks)
    semantic = _to_numpy(semantic)
    scores = [float(score) for score in _to_numpy(scores).reshape(-1)]
    category_ids = [int(category) for category in _to_numpy(category_ids).reshape(-1)]
    if masks.dtype != np.bool_:
        raise TypeError(f"instance masks must be boolean (threshold them first), got {masks.dtype}")
    if masks.ndim != 3 or semantic.ndim != 2 or masks.shape[1:] != semantic.shape:
        raise ValueError(f"expected masks [N, H, W] and a semantic map [H, W], got {masks.shape} and "
                         f"{semantic.shape}")
    if not len(scores) == len(category_ids) == len(masks):
        raise ValueError(f"{len(masks)} masks need as many scores and category ids, got {len(scores)} and "
                         f"{len(category_ids)}")
    if reserved := {THINGS_LABEL, IGNORE_LABEL} & set(stuff_categories):
        raise ValueError(f"semantic labels {sorted(reserved)} are reserved (0 = things, 255 = void), not stuff")

    segment_ids = np.zeros(semantic.shape, dtype=np.int32)
    claimed = np.zeros(semantic.shape, dtype=bool)
    segments: list[dict[str, Any]] = []

    areas = [int(area) for area in masks.sum(axis=(1, 2))]
    for index in placement_order(scores, areas, confidence_threshold):
        if areas[index] == 0:
            continue
        overlap = int(np.count_nonzero(masks[index] & claimed))
        if overlap / areas[index] > overlap_threshold:
            continue
        painted = masks[index] & ~claimed
        segments.append({"id": len(segments) + 1, "category_id": category_ids[index], "isthing": True,
                         "area": int(np.count_nonzero(painted)), "score": scores[index]})
        segment_ids[painted] = len(segments)
        claimed |= painted

    for label in np.unique(semantic).tolist():
        if label in (THINGS_LABEL, IGNORE_LABEL):
            continue
        if label not in stuff_categories:
            raise ValueError(f"semantic label {label} has no stuff category")
        painted = (semantic == label) & (segment_ids == VOID)
        area = int(np.count_nonzero(painted))
        if area < stuff_area_limit:
            continue
        segments.append({"id": len(segments) + 1, "category_id": stuff_categories[label], "isthing": False,
                         "area": area})
        segment_ids[painted] = len(segments)
    return segment_ids, segments


def _to_numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
