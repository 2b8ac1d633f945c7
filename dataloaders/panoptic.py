"""Panoptic data for Auto-Panoptic: sources of (image, segment id map, segment records) and the targets of its
two heads.

A *panoptic source* yields one image with its COCO-panoptic ground truth: an id map (0 = VOID) and one record
per segment (``id``, ``category_id``, ``iscrowd``, ``bbox`` [x, y, w, h], ``area``), with the dataset's
``categories`` (``id``, ``name``, ``isthing``). From these, ``semantic_target`` and ``instance_targets`` build
what the semantic branch and Mask R-CNN train on (Auto-Panoptic, Wu et al., NeurIPS 2020, Sec. 3; the original's maskrcnn_benchmark COCO panoptic dataset):

- semantic labels: 0 = every thing category merged, 1..S = the stuff categories in the order the categories
  list gives them, 255 = VOID. A crowd region is a thing region and gets 0, as the usual panoptic-to-semantic
  conversion (detectron2's ``prepare_panoptic_fpn.py``) labels it: it is surely "some thing", just not one
  outlined instance.
- instances: the objects of an instances file where the source has one (COCO's ``instances_{split}2017.json``,
  which the original trains its detector on: whole masks, overlapping where the objects do, and the file's
  boxes), else the non-crowd thing segments of the panoptic map (which never overlap). Either way crowds are
  left out (Auto-Panoptic drops crowd annotations from its training targets) and the labels are 1..T in the
  categories' order (0 is torchvision's background).

``PanopticDataset`` resizes (short side ``min_size``, long side at most ``max_size``, as maskrcnn-benchmark
does) and, for training, flips with probability 0.5, seeded per sample by ``SeededSampler``'s seed. Targets are
computed from the transformed id map and instances, so boxes, masks and the semantic map agree with the image
by construction.

Input normalisation is left to the model. Images come out as RGB floats in 0..1, what torchvision's detection
models take; Auto-Panoptic's input (BGR 0..255 minus ``PIXEL_MEAN`` = [102.9801, 115.9465, 122.7717], std 1,
padded to a multiple of 32) is what ``GeneralizedRCNNTransform(image_mean=[122.7717/255, 115.9465/255,
102.9801/255], image_std=[1/255] * 3, size_divisible=32)`` computes from that, up to the channel order the
backbone's first convolution sees (which only matters with BGR-pretrained weights). The images are already
resized here, so the model must not resize again: torchvision's transform would not resize the semantic target,
and even given the same ``min_size``/``max_size`` it can move a side by a pixel where the long side was capped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from evaluation.panoptic_quality import VOID, rgb_to_id
from modeling.autopanoptic.merge import THINGS_LABEL
from utils.errors import UserError
from utils.labels import IGNORE_INDEX

TRAIN_FLIP_PROBABILITY = 0.5
MIN_BOX_SIDE = 1  # a training image needs a non-crowd instance whose box sides both exceed this (pixels)


class PanopticSource(Protocol):
    """One split of a panoptic dataset: raw arrays, no tensors, no augmentation.

    ``load(i)`` gives (image uint8 [H, W, 3] RGB, segment ids int32 [H, W] with 0 = VOID, segment records);
    ``ground_truth(i)`` the ids and records without the image (for scoring prediction files); ``segments(i)``
    the records alone, without reading pixels (for selecting training images); ``image_id(i)`` and
    ``png_name(i)`` the image's id and the name of its panoptic PNG, which a COCO-panoptic prediction of it
    carries; ``check(num_classes)`` validates the whole split (``num_classes``: the semantic classes, 1 + stuff
    count, or None); ``class_names`` are the semantic classes' names ("things", then each stuff category).
    """

    categories: Sequence[Mapping[str, Any]]
    class_names: Sequence[str]

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]: ...

    def ground_truth(self, index: int) -> tuple[np.ndarray, list[dict[str, Any]]]: ...

    def segments(self, index: int) -> list[dict[str, Any]]: ...

    def describe(self, index: int) -> str: ...

    def image_id(self, index: int) -> int: ...

    def png_name(self, index: int) -> str: ...

    def check(self, num_classes: int | None = None) -> None: ...


@dataclass(frozen=True)
class AnnotatedInstances:
    """One image's non-crowd objects as an instances file annotates them: ``boxes`` float32 [N, 4] x1, y1, x2, y2
    (x2 = x + w, one past the last column), ``category_ids`` int64 [N] and ``masks`` uint8 [N, H, W], which
    overlap where the objects do."""

    boxes: np.ndarray
    category_ids: np.ndarray
    masks: np.ndarray


@runtime_checkable
class InstanceAnnotatedSource(PanopticSource, Protocol):
    """A panoptic source whose boxes and masks come from an instances file: ``instance_records(i)`` are the
    image's object records (``category_id``, ``iscrowd``, ``bbox``, ``segmentation``), read without decoding any
    mask (for selecting training images); ``instances(i)`` decodes them (``annotated_instances``)."""

    def instance_records(self, index: int) -> list[dict[str, Any]]: ...

    def instances(self, index: int) -> AnnotatedInstances: ...


def check_categories(categories: Any, where: str) -> list[dict[str, Any]]:
    """The category records as ``{id, name, isthing}`` dicts (``isthing`` 0 or 1), or a UserError naming
    ``where`` and what a record must hold."""
    if not isinstance(categories, list) or not categories:
        raise UserError(f"{where}: 'categories' must be a non-empty list of {{\"id\": int, \"name\": str, "
                        "\"isthing\": 0 or 1}} objects")
    checked, seen = [], set()
    for category in categories:
        well_formed = (isinstance(category, dict) and isinstance(category.get("id"), int)
                       and isinstance(category.get("name"), str) and category.get("isthing") in (0, 1))
        if not well_formed:
            raise UserError(f"{where}: category {category!r} needs an int 'id', a str 'name' and 'isthing' 0 or 1")
        if category["id"] in seen:
            raise UserError(f"{where}: category id {category['id']} is listed twice")
        seen.add(category["id"])
        checked.append({"id": category["id"], "name": category["name"], "isthing": int(category["isthing"])})
    return checked


def thing_category_ids(categories: Sequence[Mapping[str, Any]]) -> list[int]:
    """Category ids of detection labels 1..T (list position + 1), in the categories' order."""
    return [category["id"] for category in categories if category["isthing"]]


def stuff_category_ids(categories: Sequence[Mapping[str, Any]]) -> list[int]:
    """Category ids of semantic labels 1..S (list position + 1), in the categories' order; label 0 is things."""
    return [category["id"] for category in categories if not category["isthing"]]


def semantic_class_names(categories: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """Names of the semantic labels 0..S: all things merged, then each stuff category."""
    return ("things",) + tuple(category["name"] for category in categories if not category["isthing"])


def _semantic_labels(categories: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    """Category id -> semantic label (things 0, stuff 1..S)."""
    stuff = {category_id: label for label, category_id in enumerate(stuff_category_ids(categories), start=1)}
    return {category["id"]: stuff.get(category["id"], THINGS_LABEL) for category in categories}


def _is_crowd(segment: Mapping[str, Any]) -> bool:
    return bool(segment.get("iscrowd", 0))


def semantic_target(ids: np.ndarray, segments: Sequence[Mapping[str, Any]],
                    categories: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The semantic branch's target (uint8 [H, W]): things (crowds included) 0, stuff 1..S, VOID 255.

    An id of the map that no record lists, or a record of an unknown category, is a ValueError: sources
    validate their files first, so reaching it here is a bug.
    """
    labels = _semantic_labels(categories)
    by_id = {int(segment["id"]): segment for segment in segments}
    present, inverse = np.unique(ids.ravel(), return_inverse=True)
    table = np.full(len(present), IGNORE_INDEX, dtype=np.uint8)
    for position, segment_id in enumerate(present.tolist()):
        if segment_id == VOID:
            continue
        if segment_id not in by_id:
            raise ValueError(f"segment id {segment_id} is in the id map but not in the segment records")
        category_id = by_id[segment_id]["category_id"]
        if category_id not in labels:
            raise ValueError(f"segment {segment_id} has unknown category id {category_id}")
        table[position] = labels[category_id]
    return table[inverse].reshape(ids.shape)


def instance_targets(ids: np.ndarray, segments: Sequence[Mapping[str, Any]],
                     categories: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Mask R-CNN's targets from the non-crowd thing segments present in ``ids``, in record order.

    ``boxes`` float32 [N, 4] x1, y1, x2, y2 with x2/y2 one past the mask's last column/row: the pixels' extent,
    as torchvision's detection references convert a COCO box (x2 = x + w; ``ops.masks_to_boxes`` would give
    one less, which a one-pixel-wide mask turns into an empty box); ``labels`` int64 [N] in 1..T; ``masks``
    uint8 [N, H, W].
    Crowd segments are left out, and so are segments without pixels here (e.g. lost in a resize).
    """
    things = {category_id: label for label, category_id in enumerate(thing_category_ids(categories), start=1)}
    known = {category["id"] for category in categories}
    present = set(np.unique(ids).tolist())
    chosen = []
    for segment in segments:
        if segment["category_id"] not in known:
            raise ValueError(f"segment {segment['id']} has unknown category id {segment['category_id']}")
        if segment["category_id"] in things and not _is_crowd(segment) and int(segment["id"]) in present:
            chosen.append(segment)
    height, width = ids.shape
    masks = np.stack([ids == int(segment["id"]) for segment in chosen]) if chosen \
        else np.zeros((0, height, width), dtype=bool)
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # [N, H], [N, W]
    boxes = np.stack([cols.argmax(axis=1), rows.argmax(axis=1),
                      width - cols[:, ::-1].argmax(axis=1), height - rows[:, ::-1].argmax(axis=1)], axis=1)
    return {"boxes": boxes.astype(np.float32).reshape(-1, 4),
            "labels": np.array([things[segment["category_id"]] for segment in chosen], dtype=np.int64),
            "masks": masks.astype(np.uint8)}


def annotated_instances(records: Sequence[Mapping[str, Any]], height: int, width: int,
                        decode: Callable[[Any, int, int], np.ndarray]) -> AnnotatedInstances:
    """The non-crowd objects of an instances file's ``records`` for one image, as the original's ``COCODataset``
    keeps them: boxes from the ``bbox`` [x, y, w, h] clipped to the image, an object kept only if both sides of
    its clipped box exceed one pixel (maskrcnn-benchmark's ``clip_to_image(remove_empty=True)`` with its
    x2 = x + w - 1), and each mask decoded whole by ``decode(segmentation, height, width)`` (bool [H, W])."""
    kept, boxes = [], []
    for record in records:
        if _is_crowd(record):
            continue
        x, y, w, h = (float(value) for value in record["bbox"])
        box = [min(max(x, 0.0), width), min(max(y, 0.0), height), min(max(x + w, 0.0), width),
               min(max(y + h, 0.0), height)]
        if box[2] - box[0] > MIN_BOX_SIDE and box[3] - box[1] > MIN_BOX_SIDE:
            kept.append(record)
            boxes.append(box)
    masks = [decode(record["segmentation"], height, width) for record in kept]
    return AnnotatedInstances(np.array(boxes, dtype=np.float32).reshape(-1, 4),
                              np.array([record["category_id"] for record in kept], dtype=np.int64),
                              np.stack(masks).astype(np.uint8) if masks else np.zeros((0, height, width), np.uint8))


def annotated_instance_targets(instances: AnnotatedInstances,
                               categories: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Mask R-CNN's targets from an instances file's objects (``instance_targets``' keys): the file's boxes and
    whole masks, labelled 1..T in the categories' order. An object whose category is not a thing is a
    ValueError: sources check their files first, so reaching it here is a bug."""
    things = {category_id: label for label, category_id in enumerate(thing_category_ids(categories), start=1)}
    unknown = sorted(set(instances.category_ids.tolist()) - set(things))
    if unknown:
        raise ValueError(f"instance category ids {unknown} are not thing categories")
    return {"boxes": instances.boxes.astype(np.float32).reshape(-1, 4),
            "labels": np.array([things[category] for category in instances.category_ids.tolist()], dtype=np.int64),
            "masks": instances.masks.astype(np.uint8)}


def segments_info(ids: np.ndarray, labels: Mapping[int, tuple[int, int]]) -> list[dict[str, Any]]:
    """COCO ``segments_info`` records of the ids present in ``ids`` (ascending): ``labels`` maps each id to
    (category_id, iscrowd); ``bbox`` is [x, y, width, height] of the pixels and ``area`` their count, as
    panopticapi's converters write them."""
    records = []
    for segment_id in np.unique(ids).tolist():
        if segment_id == VOID:
            continue
        ys, xs = np.nonzero(ids == segment_id)
        category_id, iscrowd = labels[segment_id]
        x, y = int(xs.min()), int(ys.min())
        records.append({"id": segment_id, "category_id": category_id, "iscrowd": iscrowd,
                        "bbox": [x, y, int(xs.max()) - x + 1, int(ys.max()) - y + 1], "area": len(xs)})
    return records


def has_trainable_instance(segments: Sequence[Mapping[str, Any]], categories: Sequence[Mapping[str, Any]]) -> bool:
    """Whether an image has a non-crowd thing segment whose ``bbox`` sides both exceed one pixel: Auto-Panoptic
    trains only on such images (no annotations, crowd-only and degenerate-box-only images are dropped)."""
    things = set(thing_category_ids(categories))
    return any(segment["category_id"] in things and not _is_crowd(segment)
               and min(segment["bbox"][2:]) > MIN_BOX_SIDE for segment in segments)


def trainable_indices(source: PanopticSource) -> list[int]:
    """The indices of ``source`` worth training on (``has_trainable_instance``), read without any pixels from the
    records its boxes come from: the instances file's where it has one (the original selects by those), else
    the panoptic segments. For the training split only: evaluation keeps every image."""
    records = source.instance_records if isinstance(source, InstanceAnnotatedSource) else source.segments
    return [index for index in range(len(source)) if has_trainable_instance(records(index), source.categories)]


def read_panoptic_png(path: Path) -> np.ndarray:
    """A COCO panoptic PNG as segment ids int32 [H, W] (id = R + 256 G + 256^2 B, 0 = VOID)."""
    if not path.is_file():
        raise UserError(f"{path}: panoptic PNG missing")
    try:
        with Image.open(path) as image:
            if image.mode != "RGB":
                raise UserError(f"{path}: a panoptic PNG must be RGB (id = R + 256 G + 256^2 B), this one has mode "
                                f"{image.mode}")
            return rgb_to_id(np.asarray(image))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f"{path}: cannot read this panoptic PNG ({error})") from None


def check_segment_ids(ids: np.ndarray, segments: Sequence[Mapping[str, Any]], where: str) -> None:
    """The ids of a map and its records must agree both ways (panopticapi's rule): one line naming ``where``."""
    in_map = set(np.unique(ids).tolist()) - {VOID}
    listed = {int(segment["id"]) for segment in segments}
    if unlisted := sorted(in_map - listed):
        raise UserError(f"{where}: segment ids {_shown(unlisted)} are in the PNG but not in its segments_info "
                        f"(which lists {_shown(sorted(listed))})")
    if absent := sorted(listed - in_map):
        raise UserError(f"{where}: segment ids {_shown(absent)} are in segments_info but not in the PNG")


def _shown(values: Sequence[int]) -> str:
    return ", ".join(str(value) for value in values[:10]) + (", ..." if len(values) > 10 else "")


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """maskrcnn-benchmark's resize: the short side becomes ``min_size`` unless the long side would then exceed
    ``max_size``, in which case the short side shrinks so that it does not (long side truncated, not rounded)."""
    short, long = min(height, width), max(height, width)
    size = min_size
    if long / short * size > max_size:
        size = int(round(max_size * short / long))
    if short == size:
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


@dataclass(frozen=True)
class PanopticTransform:
    """Resize (image bilinear; ids and instance masks nearest at pixel centres; boxes scaled) and, when ``train``,
    flip with p = 0.5.

    Works on numpy arrays so the ids stay exact integers; the flip is drawn from ``generator`` only.
    """

    min_size: int
    max_size: int
    train: bool

    def __call__(self, image: np.ndarray, ids: np.ndarray, generator: torch.Generator,
                 instances: AnnotatedInstances | None = None
                 ) -> tuple[np.ndarray, np.ndarray, AnnotatedInstances | None]:
        height, width = ids.shape
        out_height, out_width = resized_shape(height, width, self.min_size, self.max_size)
        if (out_height, out_width) != (height, width):
            image = np.asarray(Image.fromarray(image).resize((out_width, out_height), Image.Resampling.BILINEAR))
            rows = ((np.arange(out_height) + 0.5) * height / out_height).astype(np.int64)
            cols = ((np.arange(out_width) + 0.5) * width / out_width).astype(np.int64)
            ids = ids[rows[:, None], cols[None, :]]
            if instances is not None:
                scale = np.array([out_width / width, out_height / height] * 2, dtype=np.float32)
                instances = replace(instances, boxes=instances.boxes * scale,
                                    masks=instances.masks[:, rows[:, None], cols[None, :]])
        if self.train and float(torch.rand((), generator=generator)) < TRAIN_FLIP_PROBABILITY:
            image, ids = image[:, ::-1], ids[:, ::-1]
            if instances is not None:
                mirrored = instances.boxes[:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [out_width, 0, out_width, 0]
                instances = replace(instances, boxes=mirrored.astype(np.float32), masks=instances.masks[:, :, ::-1])
        if instances is not None:
            instances = replace(instances, masks=np.ascontiguousarray(instances.masks))
        return np.ascontiguousarray(image), np.ascontiguousarray(ids), instances


class PanopticDataset(Dataset):
    """A panoptic source plus a transform; keys are ``SeededSampler``'s ``(index, seed)`` pairs (a plain index
    means seed 0), and the seed alone drives the sample's random draws (a private generator, so the global RNG
    is never touched).

    A sample is (image float32 [3, H, W] RGB in 0..1, target) with target ``boxes``, ``labels``, ``masks``
    (``annotated_instance_targets`` of a source with an instances file, else ``instance_targets``), ``semantic``
    int64 [H, W] (255 = VOID), all at the transformed size; ``panoptic``
    int64 [H0, W0] and ``segments``: the untransformed ground truth, which PQ scores (predictions are brought
    back to ``orig_size`` = (H0, W0) as Auto-Panoptic does); ``image_id`` and ``file_name`` (``png_name``).
    """

    def __init__(self, source: PanopticSource, transform: PanopticTransform) -> None:
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]]:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        index = int(index)
        image, ids, segments = self.source.load(index)
        generator = torch.Generator().manual_seed(int(seed))
        annotated = self.source.instances(index) if isinstance(self.source, InstanceAnnotatedSource) else None
        resized_image, resized_ids, annotated = self.transform(image, ids, generator, annotated)
        categories = self.source.categories
        instances = (instance_targets(resized_ids, segments, categories) if annotated is None
                     else annotated_instance_targets(annotated, categories))
        target = {name: torch.from_numpy(array) for name, array in instances.items()}
        target["semantic"] = torch.from_numpy(semantic_target(resized_ids, segments, categories).astype(np.int64))
        target["panoptic"] = torch.from_numpy(ids.astype(np.int64))
        target["segments"] = [dict(segment) for segment in segments]
        target["image_id"] = self.source.image_id(index)
        target["file_name"] = self.source.png_name(index)
        target["orig_size"] = ids.shape
        return torch.from_numpy(np.ascontiguousarray(resized_image.transpose(2, 0, 1), dtype=np.float32) / 255), target


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """A batch as (images, targets) lists: sizes and instance counts differ between images, and torchvision's
    detection models take lists (they pad the batch themselves)."""
    return [image for image, _ in batch], [target for _, target in batch]
