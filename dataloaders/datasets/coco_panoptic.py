"""COCO panoptic 2017, or any data in its format (Cityscapes converted by cityscapesScripts, a custom export).

Official layout: ``<root>/annotations/panoptic_{train,val}2017.json``, its PNGs in
``<root>/annotations/panoptic_{train,val}2017/`` and the images in ``<root>/{train,val}2017/``. Other data
names its files with ``--coco_panoptic_json``, ``--coco_panoptic_png_dir`` and ``--coco_panoptic_image_dir``:
paths relative to the data root (or absolute) in which ``{split}`` stands for train or val.

The JSON holds ``images`` (id, file_name, height, width), ``annotations`` (one per image: image_id, the PNG's
file_name, ``segments_info`` records of id, category_id, iscrowd, bbox, area) and ``categories`` (id, name,
isthing). A PNG stores segment ids as colours (id = R + 256 G + 256^2 B, 0 = VOID). The samples are the
annotations in file order; the semantic classes are the things merged and each stuff category in file order.

Detection targets (boxes and masks) come, as in the original (its ``paths_catalog.py`` and ``COCODataset``), from
COCO's instances file where the data has one: ``<root>/annotations/instances_{split}2017.json`` or
``--coco_instances_json``. Its objects are matched to the panoptic images by image id and keep their whole masks
(polygons or RLE, decoded by pycocotools), overlaps included, and their JSON boxes; its categories must be thing
categories of the panoptic JSON, with the same ids and names. Without one (``--coco_instances_json none``, or no
such file) the boxes and masks are derived from the panoptic segments, which never overlap. The log says which.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dataloaders.datasets.coco import decode_segmentation
from dataloaders.files import image_size, read_image
from dataloaders.panoptic import (AnnotatedInstances, annotated_instances, check_categories, check_segment_ids,
                                  read_panoptic_png, semantic_class_names)
from dataloaders.registry import DatasetInfo, dataset_root, register_dataset
from engine.run_dir import LOGGER_NAME
from utils.errors import UserError
from utils.flags import add_flag

SPLITS = ("train", "val")
DEFAULT_JSON = "annotations/panoptic_{split}2017.json"
DEFAULT_PNG_DIR = "annotations/panoptic_{split}2017"
DEFAULT_IMAGE_DIR = "{split}2017"
DEFAULT_INSTANCES_JSON = "annotations/instances_{split}2017.json"
NO_INSTANCES = "none"  # --coco_instances_json none: boxes and masks from the panoptic segments
LAYOUT = ("<root>/annotations/panoptic_{train,val}2017.json with the PNGs in <root>/annotations/"
          "panoptic_{train,val}2017/ and the images in <root>/{train,val}2017/")

log = logging.getLogger(LOGGER_NAME)


@functools.lru_cache(maxsize=4)
def _parsed_json(path: Path, size: int, mtime_ns: int, kind: str) -> dict[str, Any]:
    """The file's content, parsed once per version (the class count and the source both need it)."""
    log.info(f"coco_panoptic: reading {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not a readable COCO {kind} JSON ({error!r})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list)
                                             for key in ("images", "annotations", "categories")):
        raise UserError(f"{path}: a COCO {kind} JSON is an object with the lists 'images', 'annotations' and "
                        "'categories'")
    return data


def read_panoptic_json(path: Path, kind: str = "panoptic") -> dict[str, Any]:
    """A COCO JSON (``kind`` panoptic or instances, for messages), checked to hold its three lists."""
    stat = path.stat()
    return _parsed_json(path, stat.st_size, stat.st_mtime_ns, kind)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_image_record(image: Any, json_path: Path) -> None:
    if not (isinstance(image, dict) and _is_int(image.get("id")) and isinstance(image.get("file_name"), str)
            and _is_int(image.get("height")) and _is_int(image.get("width"))):
        raise UserError(f"{json_path}: image record {image!r} needs an int 'id', a str 'file_name' and int "
                        "'height' and 'width'")


def _check_segment_record(segment: Any, where: str) -> None:
    bbox = segment.get("bbox") if isinstance(segment, dict) else None
    if not (isinstance(segment, dict) and _is_int(segment.get("id")) and segment["id"] > 0
            and _is_int(segment.get("category_id")) and segment.get("iscrowd", 0) in (0, 1)
            and isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        raise UserError(f"{where}: segment record {segment!r} needs a positive int 'id', an int 'category_id', "
                        "'iscrowd' 0 or 1 and a 'bbox' [x, y, width, height]")


class CocoPanopticSource:
    """One split: its annotations (one image each) in file order, with the PNG and image read on ``load``."""

    def __init__(self, split: str, json_path: Path, png_dir: Path, image_dir: Path, data: dict[str, Any]) -> None:
        self.split = split
        self.json_path = json_path
        self.png_dir = png_dir
        self.image_dir = image_dir
        self.categories = check_categories(data["categories"], str(json_path))
        self.class_names = semantic_class_names(self.categories)
        for image in data["images"]:
            _check_image_record(image, json_path)
        images = {image["id"]: image for image in data["images"]}
        self.samples: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (image record, annotation)
        for annotation in data["annotations"]:
            well_formed = (isinstance(annotation, dict) and isinstance(annotation.get("file_name"), str)
                           and isinstance(annotation.get("segments_info"), list))
            if not well_formed:
                raise UserError(f"{json_path}: annotation {str(annotation)[:200]} needs a str 'file_name' (its PNG) "
                                "and a list 'segments_info'")
            if annotation.get("image_id") not in images:
                raise UserError(f"{json_path}: annotation {annotation['file_name']} is for image id "
                                f"{annotation.get('image_id')!r}, which 'images' does not list")
            self.samples.append((images[annotation["image_id"]], annotation))
        if not self.samples:
            raise UserError(f"{json_path}: no annotations")

    def __len__(self) -> int:
        return len(self.samples)

    def png_path(self, index: int) -> Path:
        return self.png_dir / self.samples[index][1]["file_name"]

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.samples[index][0]["file_name"]

    def image_id(self, index: int) -> int:
        return self.samples[index][0]["id"]

    def png_name(self, index: int) -> str:
        """The annotation's PNG file name, which panopticapi expects a prediction of the image under."""
        return self.samples[index][1]["file_name"]

    def describe(self, index: int) -> str:
        return f"{self.png_path(index)} (panoptic PNG of {self.image_path(index)}, image id {self.image_id(index)})"

    def segments(self, index: int) -> list[dict[str, Any]]:
        """The image's ``segments_info`` from the JSON (``iscrowd`` 0 where absent), checked: well-formed records,
        no repeated id, known categories."""
        where = f"{self.json_path}: segments_info of {self.samples[index][1]['file_name']}"
        known = {category["id"] for category in self.categories}
        records, seen = [], set()
        for segment in self.samples[index][1]["segments_info"]:
            _check_segment_record(segment, where)
            if segment["id"] in seen:
                raise UserError(f"{where}: segment id {segment['id']} is listed twice")
            if segment["category_id"] not in known:
                raise UserError(f"{where}: segment {segment['id']} has category_id {segment['category_id']}, which "
                                "is not in the JSON's categories")
            seen.add(segment["id"])
            records.append({**segment, "iscrowd": int(segment.get("iscrowd", 0))})
        return records

    def _checked_ids(self, index: int, segments: list[dict[str, Any]]) -> np.ndarray:
        """The PNG's ids, checked against the JSON: the image's size and the segment ids both ways."""
        png = self.png_path(index)
        ids = read_panoptic_png(png)
        image = self.samples[index][0]
        if ids.shape != (image["height"], image["width"]):
            raise UserError(f"{png}: PNG is {ids.shape[0]}x{ids.shape[1]} but {self.json_path.name} says image "
                            f"{image['id']} is {image['height']}x{image['width']}")
        check_segment_ids(ids, segments, f"{png} (image id {image['id']} of {self.json_path})")
        return ids

    def ground_truth(self, index: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The PNG's ids and the segment records, checked against each other, without reading the image."""
        segments = self.segments(index)
        return self._checked_ids(index, segments), segments

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
        ids, segments = self.ground_truth(index)
        image = read_image(self.image_path(index))
        if image.shape[:2] != ids.shape:
            raise UserError(f"{self.image_path(index)}: image is {image.shape[0]}x{image.shape[1]} but its panoptic "
                            f"PNG {self.png_path(index)} is {ids.shape[0]}x{ids.shape[1]}")
        return image, ids, segments

    def check(self, num_classes: int | None = None) -> None:
        """Read every PNG (ids against the JSON, size) and every image header (exists, same size)."""
        if num_classes not in (None, len(self.class_names)):
            raise UserError(f"--num_classes {num_classes}: {self.json_path} gives {len(self.class_names)} semantic "
                            f"classes (things and {len(self.class_names) - 1} stuff categories)")
        for index in tqdm(range(len(self)), desc=f"checking coco_panoptic {self.split}", leave=False, disable=None):
            ids = self._checked_ids(index, self.segments(index))
            if not self.image_path(index).is_file():
                raise UserError(f"{self.image_path(index)}: image missing (listed in {self.json_path})")
            if image_size(self.image_path(index)) != ids.shape:
                raise UserError(f"{self.image_path(index)}: image size differs from its panoptic PNG "
                                f"{self.png_path(index)} ({ids.shape[0]}x{ids.shape[1]})")


class CocoPanopticInstancesSource(CocoPanopticSource):
    """A split whose boxes and masks come from COCO's instances file (``instances_json``), matched by image id."""

    def __init__(self, split: str, json_path: Path, png_dir: Path, image_dir: Path, data: dict[str, Any],
                 instances_json: Path, instances: dict[str, Any]) -> None:
        super().__init__(split, json_path, png_dir, image_dir, data)
        self.instances_json = instances_json
        self._check_instance_categories(instances["categories"])
        images = {}
        for image in instances["images"]:
            _check_image_record(image, instances_json)
            images[image["id"]] = image
        things = {category["id"] for category in self.categories if category["isthing"]}
        by_image: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in images}
        for record in instances["annotations"]:
            _check_instance_record(record, instances_json)
            if record["image_id"] not in by_image:
                raise UserError(f"{instances_json}: annotation {record.get('id')!r} is for image id "
                                f"{record['image_id']!r}, which its 'images' does not list")
            if record["category_id"] not in things:
                raise UserError(f"{instances_json}: annotation {record.get('id')!r} has category_id "
                                f"{record['category_id']}, which is not a thing category of {json_path.name}")
            by_image[record["image_id"]].append(record)
        self.records: list[list[dict[str, Any]]] = []
        for image, annotation in self.samples:
            other = images.get(image["id"])
            if other is None:
                raise UserError(f"{instances_json}: has no image id {image['id']} ({annotation['file_name']} of "
                                f"{json_path.name}); an instances file for the same images is needed, or "
                                f"--coco_instances_json {NO_INSTANCES}")
            if (other["height"], other["width"]) != (image["height"], image["width"]):
                raise UserError(f"{instances_json}: image id {image['id']} is {other['height']}x{other['width']} "
                                f"but {json_path.name} says {image['height']}x{image['width']}")
            self.records.append(by_image[image["id"]])

    def _check_instance_categories(self, categories: Any) -> None:
        """Every category of the instances file must be a thing of the panoptic JSON, by id and by name."""
        things = {category["id"]: category["name"] for category in self.categories if category["isthing"]}
        for category in categories:
            if not (isinstance(category, dict) and category.get("id") in things):
                raise UserError(f"{self.instances_json}: category {category!r} is not a thing category of "
                                f"{self.json_path.name} (its things: ids {sorted(things)})")
            if category.get("name") != things[category["id"]]:
                raise UserError(f"{self.instances_json}: category {category['id']} is {category.get('name')!r} but "
                                f"{self.json_path.name} calls it {things[category['id']]!r}")

    def instance_records(self, index: int) -> list[dict[str, Any]]:
        return self.records[index]

    def instances(self, index: int) -> AnnotatedInstances:
        """The image's non-crowd objects with whole masks (``annotated_instances``), each mask checked to have the
        image's size."""
        image = self.samples[index][0]
        height, width = image["height"], image["width"]

        def decode(segmentation: Any, rows: int, cols: int) -> np.ndarray:
            mask = decode_segmentation(segmentation, rows, cols)
            if mask.shape != (rows, cols):
                raise UserError(f"{self.instances_json}: a mask of image id {image['id']} is "
                                f"{mask.shape[0]}x{mask.shape[1]} but the image is {rows}x{cols}")
            return mask

        return annotated_instances(self.records[index], height, width, decode)


def _check_instance_record(record: Any, where: Path) -> None:
    bbox = record.get("bbox") if isinstance(record, dict) else None
    if not (isinstance(record, dict) and _is_int(record.get("image_id")) and _is_int(record.get("category_id"))
            and record.get("iscrowd", 0) in (0, 1) and isinstance(record.get("segmentation"), (list, dict))
            and isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        raise UserError(f"{where}: annotation {str(record)[:200]} needs an int 'image_id' and 'category_id', "
                        "'iscrowd' 0 or 1, a 'segmentation' (polygons or RLE) and a 'bbox' [x, y, width, height]")


def split_paths(args: argparse.Namespace, split: str) -> tuple[Path, Path, Path]:
    """(JSON, PNG folder, image folder) of ``split``, each checked to exist, errors naming the data root."""
    relative = [template.format(split=split) for template in
                (args.coco_panoptic_json, args.coco_panoptic_png_dir, args.coco_panoptic_image_dir)]
    root = dataset_root(INFO, args, relative)
    return root / relative[0], root / relative[1], root / relative[2]


def instances_path(args: argparse.Namespace, split: str) -> Path | None:
    """The instances JSON of ``split`` the detection targets come from, or None: ``--coco_instances_json`` (which
    must exist; ``none`` turns it off), else COCO's standard file where the data root has it."""
    chosen = args.coco_instances_json
    if chosen == NO_INSTANCES:
        return None
    relative = (chosen or DEFAULT_INSTANCES_JSON).format(split=split)
    if chosen is None:
        root = dataset_root(INFO, args)
        return root / relative if (root / relative).is_file() else None
    root = dataset_root(INFO, args, [relative])
    return root / relative


def make_coco_panoptic_source(split: str, args: argparse.Namespace) -> CocoPanopticSource:
    json_path, png_dir, image_dir = split_paths(args, split)
    data = read_panoptic_json(json_path)
    instances_json = instances_path(args, split)
    if instances_json is None:
        why = ("--coco_instances_json none" if args.coco_instances_json == NO_INSTANCES
               else f"no {DEFAULT_INSTANCES_JSON.format(split=split)} under the data root")
        log.info(f"coco_panoptic {split}: boxes and masks from the panoptic segments ({why}); they never overlap")
        return CocoPanopticSource(split, json_path, png_dir, image_dir, data)
    log.info(f"coco_panoptic {split}: boxes and masks from the instances file {instances_json} (whole, overlapping "
             "masks and the file's boxes, as the original trains on)")
    return CocoPanopticInstancesSource(split, json_path, png_dir, image_dir, data, instances_json,
                                       read_panoptic_json(instances_json, "instances"))


def count_coco_panoptic_classes(args: argparse.Namespace) -> int:
    """Semantic classes of the train JSON: the things merged, plus one per stuff category (54 for COCO)."""
    json_path = split_paths(args, "train")[0]
    return len(semantic_class_names(check_categories(read_panoptic_json(json_path)["categories"], str(json_path))))


def add_coco_panoptic_arguments(group: argparse._ArgumentGroup) -> None:
    add_flag(group, "coco_panoptic_json", default=DEFAULT_JSON, metavar="PATH", locked=True,
             help="the panoptic JSON, relative to the data root, {split} standing for train or val "
                  "(default: %(default)s)")
    add_flag(group, "coco_panoptic_png_dir", default=DEFAULT_PNG_DIR, metavar="DIR",
             help="the folder of the panoptic PNGs, like --coco_panoptic_json (default: %(default)s)")
    add_flag(group, "coco_panoptic_image_dir", default=DEFAULT_IMAGE_DIR, metavar="DIR",
             help="the folder of the images, like --coco_panoptic_json (default: %(default)s)")
    add_flag(group, "coco_instances_json", default=None, metavar="PATH", locked=True,
             help="COCO's instances JSON that the detection boxes and masks come from, like --coco_panoptic_json "
                  f"('{NO_INSTANCES}': derive them from the panoptic segments instead; default: "
                  f"{DEFAULT_INSTANCES_JSON} where it exists)")


INFO = register_dataset(DatasetInfo(
    name="coco_panoptic",
    num_classes=None,
    default_num_classes=54,  # COCO: things merged + 53 stuff categories
    make_source=make_coco_panoptic_source,
    count_classes=count_coco_panoptic_classes,
    layout=LAYOUT,
    splits=SPLITS,
    tasks=("panoptic",),
    add_arguments=add_coco_panoptic_arguments,
))
