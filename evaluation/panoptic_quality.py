"""Panoptic quality (PQ = SQ x RQ) with the exact rules of COCO's ``panopticapi`` evaluation.

Published panoptic numbers (Auto-Panoptic's included) come from ``panopticapi``, which is not installable
here, and small rule differences move PQ by points: the union leaves out predicted pixels on VOID, a match
needs IoU strictly above 0.5, crowd regions are never false negatives and excuse predictions lying mostly on
them, and the class means skip classes that never occur. This module reimplements those rules on id maps,
keeps integer-exact per-category counts that several processes can add up, and checks its inputs as
``panopticapi`` does, with one readable error per mistake.

One rule is easy to miss: ``pq_compute_single_core`` takes a ground-truth segment's area for the union from the
JSON record's ``area``, while intersections and predicted areas are PNG pixels. COCO's areas are pixel counts, so
the two agree there; where a record's ``area`` differs from its PNG, the JSON's is used here too (a record
without one takes the PNG's) and every such segment is counted (``area_mismatches``), so a report can say so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from utils.errors import UserError

VOID = 0
ID_LIMIT = 256**3  # segment ids are stored as RGB in panoptic PNGs, so they fit in 24 bits
MATCH_IOU = 0.5  # a (ground truth, prediction) pair matches when IoU is strictly above this
IGNORE_FRACTION = 0.5  # an unmatched prediction more than this much on VOID + crowd is not a false positive
STATE_COLUMNS = ("tp", "fp", "fn", "iou")


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids [H, W] (int32) of a COCO panoptic PNG array [H, W, 3]: id = R + 256 G + 256^2 B."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an RGB array [H, W, 3], got shape {rgb.shape}")
    if not np.issubdtype(rgb.dtype, np.integer) or rgb.min(initial=0) < 0 or rgb.max(initial=0) > 255:
        raise ValueError("expected RGB channel values in 0..255")
    channels = rgb.astype(np.int32)
    return channels[..., 0] + 256 * channels[..., 1] + 256 * 256 * channels[..., 2]


def id_to_rgb(segment_ids: np.ndarray) -> np.ndarray:
    """The COCO panoptic PNG colours [H, W, 3] (uint8) of segment ids [H, W]; inverse of ``rgb_to_id``."""
    segment_ids = np.asarray(segment_ids)
    if not np.issubdtype(segment_ids.dtype, np.integer):
        raise ValueError(f"expected integer segment ids, got dtype {segment_ids.dtype}")
    if segment_ids.min(initial=0) < 0 or segment_ids.max(initial=0) >= ID_LIMIT:
        raise ValueError(f"segment ids must lie in 0..{ID_LIMIT - 1} to be stored as RGB")
    segment_ids = segment_ids.astype(np.int64)
    channels = [segment_ids % 256, segment_ids // 256 % 256, segment_ids // (256 * 256)]
    return np.stack(channels, axis=-1).astype(np.uint8)


class PanopticQuality:
    """Per-category TP, FP, FN and summed IoU over the images seen, and the PQ/SQ/RQ scores they give.

    ``categories`` are the dataset's category records (as in a COCO panoptic JSON): each has an ``id`` and
    ``isthing`` (1 for things, 0 for stuff). The counts are a float64 array [categories, 4] in that order with
    the columns of ``STATE_COLUMNS``; TP, FP and FN stay integer-exact, so ``state()`` arrays of several
    processes can be summed (or ``merge``d) in any order before scoring.
    """

    def __init__(self, categories: Sequence[Mapping[str, Any]]) -> None:
        self.categories = [dict(category) for category in categories]
        self._row: dict[int, int] = {}
        for row, category in enumerate(self.categories):
            if "id" not in category or "isthing" not in category:
                raise UserError(f"category record {category} needs an 'id' and an 'isthing'")
            if category["id"] in self._row:
                raise UserError(f"category id {category['id']} is listed twice")
            self._row[category["id"]] = row
        self._counts = np.zeros((len(self.categories), len(STATE_COLUMNS)), dtype=np.float64)
        self.area_mismatches: list[tuple[str | int, int, int, int]] = []  # (image, segment id, JSON area, pixels)

    @classmethod
    def from_state(cls, categories: Sequence[Mapping[str, Any]], state: np.ndarray) -> PanopticQuality:
        """An accumulator holding saved or summed counts (``state()`` arrays) for the same categories."""
        accumulator = cls(categories)
        state = np.asarray(state, dtype=np.float64)
        if state.shape != accumulator._counts.shape:
            raise ValueError(f"state shape {state.shape} does not fit {len(accumulator.categories)} categories "
                             f"(expected {accumulator._counts.shape})")
        accumulator._counts += state
        return accumulator

    def state(self) -> np.ndarray:
        """A copy of the counts [categories, 4]: TP, FP, FN, summed IoU per category, in category order."""
        return self._counts.copy()

    def merge(self, other: PanopticQuality) -> None:
        """Add another accumulator's counts (e.g. another process's images) to this one."""
        if [c["id"] for c in other.categories] != [c["id"] for c in self.categories]:
            raise ValueError("cannot merge panoptic counts kept for different category lists")
        self._counts += other._counts

    def update(self, gt_ids: np.ndarray, gt_segments: Sequence[Mapping[str, Any]], pred_ids: np.ndarray,
               pred_segments: Sequence[Mapping[str, Any]], *, image: str | int) -> None:
        """Count one image: id maps [H, W] (0 = VOID) and their segment records (``id``, ``category_id``;
        ``iscrowd`` in the ground truth, 0 when absent). ``image`` names the image in error messages.

        A ground-truth segment's area in the union is its record's ``area``, as ``panopticapi`` takes it (the
        pixel count of ``gt_ids`` where the record has none; a difference is noted in ``area_mismatches``).
        Ground-truth ids missing from ``gt_segments`` are neither segments nor VOID, as in ``panopticapi``.
        """
        gt_ids = _id_map(gt_ids, "ground truth", image)
        pred_ids = _id_map(pred_ids, "prediction", image)
        if gt_ids.shape != pred_ids.shape:
            raise UserError(f"image {image}: the ground truth is {gt_ids.shape} but the prediction is "
                            f"{pred_ids.shape}")
        gt_by_id = self._segments_by_id(gt_segments, "ground truth", image)
        pred_by_id = self._segments_by_id(pred_segments, "prediction", image)

        pairs, pair_pixels = np.unique(gt_ids.astype(np.int64) * ID_LIMIT + pred_ids, return_counts=True)
        intersections = {(int(pair // ID_LIMIT), int(pair % ID_LIMIT)): int(pixels)
                         for pair, pixels in zip(pairs, pair_pixels)}
        gt_area: dict[int, int] = {}
        pred_area: dict[int, int] = {}
        for (gt_id, pred_id), pixels in intersections.items():
            gt_area[gt_id] = gt_area.get(gt_id, 0) + pixels
            pred_area[pred_id] = pred_area.get(pred_id, 0) + pixels
        _check_prediction_ids(set(pred_area) - {VOID}, set(pred_by_id), image)
        for gt_id, gt_segment in gt_by_id.items():
            pixels = gt_area.get(gt_id, 0)
            if "area" in gt_segment and int(gt_segment["area"]) != pixels:
                self.area_mismatches.append((image, gt_id, int(gt_segment["area"]), pixels))
            gt_area[gt_id] = int(gt_segment.get("area", pixels))

        gt_matched, pred_matched = set(), set()
        for (gt_id, pred_id), intersection in intersections.items():
            if gt_id not in gt_by_id or pred_id not in pred_by_id:
                continue
            gt_segment = gt_by_id[gt_id]
            if _is_crowd(gt_segment) or gt_segment["category_id"] != pred_by_id[pred_id]["category_id"]:
                continue
            union = (pred_area[pred_id] + gt_area[gt_id] - intersection
                     - intersections.get((VOID, pred_id), 0))
            iou = intersection / union
            if iou > MATCH_IOU:
                self._add(gt_segment["category_id"], "tp", 1)
                self._add(gt_segment["category_id"], "iou", iou)
                gt_matched.add(gt_id)
                pred_matched.add(pred_id)

        crowd_by_category = {}
        for gt_id, gt_segment in gt_by_id.items():
            if _is_crowd(gt_segment):
                crowd_by_category[gt_segment["category_id"]] = gt_id  # the last crowd region of a category wins
            elif gt_id not in gt_matched:
                self._add(gt_segment["category_id"], "fn", 1)

        for pred_id, pred_segment in pred_by_id.items():
            if pred_id in pred_matched:
                continue
            ignored = intersections.get((VOID, pred_id), 0)
            crowd_id = crowd_by_category.get(pred_segment["category_id"])
            if crowd_id is not None:
                ignored += intersections.get((crowd_id, pred_id), 0)
            if ignored / pred_area[pred_id] > IGNORE_FRACTION:
                continue
            self._add(pred_segment["category_id"], "fp", 1)

    def summary(self) -> dict[str, Any]:
        """``All``, ``Things`` and ``Stuff``: mean ``pq``, ``sq``, ``rq`` over the ``n`` categories of the group
        that occurred (TP + FP + FN > 0; a category without TP adds SQ 0); ``per_class``: category id ->
        ``pq``, ``sq``, ``rq``, ``tp``, ``fp``, ``fn`` (scores 0 for a category that never occurred).
        A group without occurring categories scores 0 with n = 0 (``panopticapi`` divides by zero there).
        """
        per_class = {}
        for category, (tp, fp, fn, iou) in zip(self.categories, self._counts.tolist()):
            denominator = tp + 0.5 * fp + 0.5 * fn
            per_class[category["id"]] = {
                "pq": iou / denominator if denominator else 0.0,
                "sq": iou / tp if tp else 0.0,
                "rq": tp / denominator if denominator else 0.0,
                "tp": int(tp), "fp": int(fp), "fn": int(fn),
            }
        groups = {"All": self.categories,
                  "Things": [c for c in self.categories if c["isthing"] == 1],
                  "Stuff": [c for c in self.categories if c["isthing"] != 1]}
        result: dict[str, Any] = {}
        for name, members in groups.items():
            occurred = [per_class[c["id"]] for c in members if self._counts[self._row[c["id"]], :3].sum() > 0]
            n = len(occurred)
            result[name] = {score: sum(values[score] for values in occurred) / n if n else 0.0
                            for score in ("pq", "sq", "rq")} | {"n": n}
        result["per_class"] = per_class
        return result

    def _add(self, category_id: int, column: str, value: float) -> None:
        self._counts[self._row[category_id], STATE_COLUMNS.index(column)] += value

    def _segments_by_id(self, segments: Sequence[Mapping[str, Any]], what: str,
                        image: str | int) -> dict[int, Mapping[str, Any]]:
        """The segment records by id, after checking each names a known category and no id repeats."""
        by_id: dict[int, Mapping[str, Any]] = {}
        for segment in segments:
            if "id" not in segment or "category_id" not in segment:
                raise UserError(f"image {image}: a {what} segment record lacks 'id' or 'category_id': {segment}")
            segment_id = int(segment["id"])
            if not VOID < segment_id < ID_LIMIT:
                raise UserError(f"image {image}: {what} segment id {segment_id} is outside 1..{ID_LIMIT - 1} "
                                f"(0 is VOID)")
            if segment_id in by_id:
                raise UserError(f"image {image}: {what} segment id {segment_id} is listed twice")
            if segment["category_id"] not in self._row:
                raise UserError(f"image {image}: {what} segment {segment_id} has unknown category id "
                                f"{segment['category_id']}")
            by_id[segment_id] = segment
        return by_id


def area_note(mismatches: Sequence[tuple[str | int, int, int, int]]) -> str | None:
    """One line saying which area PQ used where ground-truth JSON areas differ from their PNGs (None if none do)."""
    if not mismatches:
        return None
    image, segment_id, listed, pixels = mismatches[0]
    return (f"ground truth: {len(mismatches)} segment(s) have a JSON 'area' other than their PNG pixel count (first: "
            f"image {image}, segment {segment_id}: JSON {listed}, PNG {pixels}); PQ used the JSON area in the IoU's "
            "union, as panopticapi's pq_compute does (intersections are PNG pixels)")


def _id_map(segment_ids: np.ndarray, what: str, image: str | int) -> np.ndarray:
    """``segment_ids`` as an int64 array [H, W] of ids in 0..ID_LIMIT-1, or a UserError naming the image."""
    segment_ids = np.asarray(segment_ids)
    if segment_ids.ndim != 2 or not np.issubdtype(segment_ids.dtype, np.integer):
        raise UserError(f"image {image}: the {what} must be an integer id map [H, W], got "
                        f"{segment_ids.dtype} {segment_ids.shape}")
    if segment_ids.min(initial=0) < 0 or segment_ids.max(initial=0) >= ID_LIMIT:
        raise UserError(f"image {image}: the {what} holds segment ids outside 0..{ID_LIMIT - 1}")
    return segment_ids.astype(np.int64)


def _check_prediction_ids(ids_in_map: set[int], ids_listed: set[int], image: str | int) -> None:
    """Every non-VOID id of the prediction map must be listed, and every listed id must be in the map."""
    if unlisted := sorted(ids_in_map - ids_listed):
        raise UserError(f"image {image}: prediction segment ids {unlisted} are in the id map but not in the "
                        f"segment list")
    if absent := sorted(ids_listed - ids_in_map):
        raise UserError(f"image {image}: prediction segment ids {absent} are in the segment list but not in the "
                        f"id map")


def _is_crowd(gt_segment: Mapping[str, Any]) -> bool:
    return gt_segment.get("iscrowd", 0) == 1
