"""COCO 2017, or any COCO-format instances file, its instance annotations rasterised into semantic masks as
the public DeepLab ports do.

``<root>/annotations/instances_{train,val}2017.json`` with the images in ``<root>/{train,val}2017/``
(the official archives) or ``<root>/images/{train,val}2017/`` (the layout the public DeepLab ports use),
or under ``--coco_image_root`` at the path each image's ``file_name`` gives (sub-folders included).

Classes of a COCO 2017 file (one naming the 20 PASCAL VOC categories as COCO does): by default the 20
VOC classes (``CAT_LIST``: the COCO category at position k is class k, every other category is
background); with ``--coco_all_classes`` the 80 COCO thing categories in ascending id order as classes
1..80. Any other file (what CVAT, Label Studio, Roboflow or labelme export): background plus the file's
own categories in ascending id order, named as the file names them. The log says which and why.

Where objects overlap the first annotation wins. A crowd region (``iscrowd=1``) is an unlabelled
mix of instances of its category, whose outlines nobody drew: its pixels are neither surely that
class nor background, so where no ordinary object covers them they get the ignore label 255. Crowds of a category that is not
kept are background, like the category's objects.

Images with at most ``MIN_LABELLED_PIXELS`` labelled pixels (not background, not ignore) are
dropped, as in the public ports. Selecting them means rasterising every mask of the split, so
the kept image ids are cached beside the annotations, keyed by the annotation file's size and
modification time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dataloaders.files import read_image
from dataloaders.registry import DatasetInfo, dataset_root, register_dataset
from engine.run_dir import LOGGER_NAME
from utils.atomic import atomic_path
from utils.errors import UserError
from utils.flags import add_flag
from utils.labels import IGNORE_INDEX

# (COCO category id, its COCO name, the VOC class it becomes), in VOC class order 1..20.
VOC_CATEGORIES = (
    (5, "airplane", "aeroplane"), (2, "bicycle", "bicycle"), (16, "bird", "bird"), (9, "boat", "boat"),
    (44, "bottle", "bottle"), (6, "bus", "bus"), (3, "car", "car"), (17, "cat", "cat"), (62, "chair", "chair"),
    (21, "cow", "cow"), (67, "dining table", "diningtable"), (18, "dog", "dog"), (19, "horse", "horse"),
    (4, "motorcycle", "motorbike"), (1, "person", "person"), (64, "potted plant", "pottedplant"),
    (20, "sheep", "sheep"), (63, "couch", "sofa"), (7, "train", "train"), (72, "tv", "tvmonitor"),
)
CAT_LIST = [0] + [category_id for category_id, _, _ in VOC_CATEGORIES]  # the public ports' list; 0: background
VOC_CLASS_NAMES = ("background",) + tuple(voc_name for _, _, voc_name in VOC_CATEGORIES)
NUM_THING_CATEGORIES = 80
MIN_LABELLED_PIXELS = 1000  # an image is kept when MORE than this many pixels are labelled
ID_CACHE_FORMAT, ID_CACHE_VERSION = "autodeeplab-coco-ids", 1
SPLITS = ("train", "val")
LAYOUT = ("<root>/annotations/instances_{train,val}2017.json with the images in <root>/{train,val}2017/ "
          "or <root>/images/{train,val}2017/")

log = logging.getLogger(LOGGER_NAME)


def _mask_api() -> Any:
    """pycocotools.mask, imported on first use so the other datasets work without pycocotools."""
    try:
        from pycocotools import mask
    except ImportError:
        raise UserError("--dataset coco needs pycocotools: pip install pycocotools") from None
    return mask


def load_annotations(annotation_file: Path) -> Any:
    """The annotation file as a ``pycocotools.coco.COCO`` index (its progress prints are silenced)."""
    _mask_api()  # a missing pycocotools is reported as a UserError
    from pycocotools.coco import COCO

    log.info(f"coco: reading {annotation_file}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(annotation_file))
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as error:
        raise UserError(f"{annotation_file}: not a readable COCO instances file ({error!r})") from None


CATEGORY_SCAN_BYTES = 1 << 20  # where a file's "categories" list is looked for first: its first and last MiB


def read_categories(annotation_file: Path) -> dict[int, str]:
    """The file's categories (id → name), read without parsing its images and annotations where the list
    stands in the file's first or last MiB (COCO's own files end with it; exporters put it first or last)."""
    try:
        size = annotation_file.stat().st_size
        with open(annotation_file, "rb") as file:
            chunks = [file.read(CATEGORY_SCAN_BYTES)]
            if size > CATEGORY_SCAN_BYTES:
                file.seek(max(CATEGORY_SCAN_BYTES, size - CATEGORY_SCAN_BYTES))
                chunks.append(file.read())
    except OSError as error:
        raise UserError(f"{annotation_file}: cannot read it ({error})") from None
    decoder = json.JSONDecoder()
    for chunk in chunks:
        text = chunk.decode("utf-8", errors="replace")
        for match in re.finditer(r'"categories"\s*:\s*\[', text):
            try:
                return _category_names(decoder.raw_decode(text, match.end() - 1)[0], annotation_file)
            except ValueError:
                continue  # the list runs past the chunk
    try:
        data = json.loads(annotation_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{annotation_file}: not a readable COCO instances file ({error!r})") from None
    return _category_names(data.get("categories") if isinstance(data, dict) else None, annotation_file)


def _category_names(categories: Any, annotation_file: Path) -> dict[int, str]:
    well_formed = isinstance(categories, list) and all(
        isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str) for c in categories)
    if not well_formed or not categories:
        raise UserError(f"{annotation_file}: its 'categories' must be a non-empty list of {{\"id\": int, "
                        "\"name\": str}} objects")
    return {category["id"]: category["name"] for category in categories}


def is_coco2017(categories: dict[int, str]) -> bool:
    """Whether a file numbers its categories as COCO 2017 does: it names every VOC category by COCO's id."""
    return all(categories.get(category_id) == coco_name for category_id, coco_name, _ in VOC_CATEGORIES)


def count_classes_of(categories: dict[int, str], all_classes: bool) -> int:
    if not is_coco2017(categories):
        return 1 + len(categories)
    return NUM_THING_CATEGORIES + 1 if all_classes else len(CAT_LIST)


def category_classes(categories: dict[int, str], annotation_file: Path,
                     all_classes: bool) -> tuple[dict[int, int], tuple[str, ...], str]:
    """COCO category id → class index for the kept categories, the class names (background first), and the
    tag of this mapping (``voc21``, ``all80`` or ``custom<N>``), saying in the log which and why."""
    if not is_coco2017(categories):
        if all_classes:
            raise UserError(f"{annotation_file}: --coco_all_classes applies to COCO 2017 files; this file's categories "
                            "are its own, and all of them are classes already: drop the flag")
        ids = sorted(categories)
        differs = next(((cid, categories.get(cid), name) for cid, name, _ in VOC_CATEGORIES
                        if categories.get(cid) != name), None)
        why = (f"category {differs[0]} is {differs[1]!r}, COCO's is {differs[2]!r}" if differs[1] is not None
               else f"it has no category {differs[0]} ({differs[2]!r} in COCO)")
        log.info(f"coco: {annotation_file.name}: classes are background and the file's {len(ids)} categories in id "
                 f"order, since its categories are not COCO 2017's ({why})")
        return ({category_id: index + 1 for index, category_id in enumerate(ids)},
                ("background",) + tuple(categories[category_id] for category_id in ids), f"custom{len(ids)}")
    log.info(f"coco: {annotation_file.name}: COCO 2017 categories: "
             + ("all 80 thing categories (--coco_all_classes)" if all_classes
                else "the 20 PASCAL VOC ones (--coco_all_classes for all 80)"))
    if all_classes:
        if len(categories) != NUM_THING_CATEGORIES:
            raise UserError(f"{annotation_file}: --coco_all_classes expects the {NUM_THING_CATEGORIES} COCO thing "
                            f"categories, the file has {len(categories)}")
        ids = sorted(categories)
        return ({category_id: index + 1 for index, category_id in enumerate(ids)},
                ("background",) + tuple(categories[category_id] for category_id in ids), "all80")
    return ({category_id: index for index, category_id in enumerate(CAT_LIST) if index > 0}, VOC_CLASS_NAMES,
            "voc21")


def decode_segmentation(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """One annotation's region as bool [H, W]: polygons, uncompressed RLE or compressed RLE."""
    mask_api = _mask_api()
    if isinstance(segmentation, list):  # polygons; an object split by occlusion has several
        return mask_api.decode(mask_api.frPyObjects(segmentation, height, width)).any(axis=2)
    if isinstance(segmentation["counts"], list):  # uncompressed RLE, how crowd regions are stored
        return mask_api.decode(mask_api.frPyObjects(segmentation, height, width)).astype(bool)
    return mask_api.decode(segmentation).astype(bool)  # compressed RLE (frPyObjects refuses it)


def annotations_to_mask(annotations: Sequence[dict], height: int, width: int, classes: dict[int, int],
                        where: str) -> np.ndarray:
    """The semantic mask (uint8 [H, W]) of one image: first annotation wins, uncovered crowd pixels → 255."""
    mask = np.zeros((height, width), dtype=np.uint8)
    crowd = np.zeros((height, width), dtype=bool)
    for annotation in annotations:
        label = classes.get(annotation["category_id"])
        if label is None:
            continue
        region = decode_segmentation(annotation["segmentation"], height, width)
        if region.shape != (height, width):
            raise UserError(f"{where}: annotation {annotation['id']} is {region.shape[0]}x{region.shape[1]} but its "
                            f"image is {height}x{width}")
        if annotation.get("iscrowd"):
            crowd |= region
        else:
            mask[region & (mask == 0)] = label  # class indices start at 1, so 0 means unclaimed
    mask[crowd & (mask == 0)] = IGNORE_INDEX
    return mask


def select_labelled_images(coco: Any, classes: dict[int, int], annotation_file: Path, desc: str) -> list[int]:
    """Ids of the images (in file order) with more than ``MIN_LABELLED_PIXELS`` labelled pixels."""
    kept = []
    for image_id in tqdm(list(coco.imgs), desc=desc, leave=False, disable=None):
        image = coco.imgs[image_id]
        mask = annotations_to_mask(coco.loadAnns(coco.getAnnIds(imgIds=image_id)), image["height"],
                                   image["width"], classes, str(annotation_file))
        if np.count_nonzero((mask != 0) & (mask != IGNORE_INDEX)) > MIN_LABELLED_PIXELS:
            kept.append(image_id)
    return kept


def _cache_key(annotation_file: Path, classes_tag: str, stat: os.stat_result) -> dict[str, Any]:
    """What the id cache depends on; ``stat`` is taken before the file was read, so a file replaced while it was
    being read leaves a cache that the next run finds stale."""
    return {"format": ID_CACHE_FORMAT, "version": ID_CACHE_VERSION, "annotation_file": annotation_file.name,
            "annotation_size": stat.st_size, "annotation_mtime_ns": stat.st_mtime_ns,
            "min_pixels": MIN_LABELLED_PIXELS, "classes": classes_tag}


def _read_id_cache(cache_file: Path, key: dict[str, Any], known_ids: Any) -> list[int] | None:
    """The cached ids if the cache matches ``key`` and names only known images, else None (logged)."""
    if not cache_file.exists():
        return None
    try:
        cached = json.loads(cache_file.read_text())
    except (OSError, ValueError) as error:
        log.info(f"coco: {cache_file} is unreadable ({error}); rebuilding it")
        return None
    if not isinstance(cached, dict) or {name: cached.get(name) for name in key} != key:
        log.info(f"coco: {cache_file} does not match {key['annotation_file']} as it is now (changed file, "
                 f"threshold or format); rebuilding it")
        return None
    image_ids = cached.get("image_ids")
    if not isinstance(image_ids, list) or not all(isinstance(i, int) and i in known_ids for i in image_ids):
        log.info(f"coco: {cache_file} lists images the annotation file does not have; rebuilding it")
        return None
    return image_ids


def _write_id_cache(cache_file: Path, content: dict[str, Any]) -> None:
    """Write atomically (temporary file, fsync, rename); an unwritable folder only costs the cache."""
    try:
        with atomic_path(cache_file) as temporary:
            temporary.write_text(json.dumps(content))
    except OSError as error:
        log.warning(f"coco: cannot write {cache_file} ({error}); the images will be selected again next time")


def kept_image_ids(coco: Any, classes: dict[int, int], annotation_file: Path, split: str,
                   cache_key: dict[str, Any]) -> list[int]:
    """The ids of the images worth training on, from the cache when it is current, else computed and cached.

    ``cache_key`` describes the annotation file as it was BEFORE it was read, so a file replaced while
    it was being read leaves a cache that the next run finds stale.
    """
    cache_file = annotation_file.with_name(f"autodeeplab_{split}2017_{cache_key['classes']}_ids.json")
    image_ids = _read_id_cache(cache_file, cache_key, coco.imgs)
    if image_ids is None:
        image_ids = select_labelled_images(coco, classes, annotation_file,
                                           f"coco {split}: images with > {MIN_LABELLED_PIXELS} labelled pixels")
        _write_id_cache(cache_file, {**cache_key, "image_ids": image_ids})
    return image_ids


class CocoSource:
    """One split of COCO: the kept images and masks rasterised from their annotations on load."""

    def __init__(self, split: str, coco: Any, annotation_file: Path, image_folder: Path,
                 classes: dict[int, int], class_names: Sequence[str], image_ids: Sequence[int]) -> None:
        self.split = split
        self.coco = coco
        self.annotation_file = annotation_file
        self.image_folder = image_folder
        self.classes = classes
        self.class_names = tuple(class_names)
        self.image_ids = list(image_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, index: int) -> Path:
        return self.image_folder / self.coco.imgs[self.image_ids[index]]["file_name"]

    def describe(self, index: int) -> str:
        return f"{self.image_path(index)} (mask from {self.annotation_file}, image id {self.image_ids[index]})"

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_path(index)
        image = read_image(path)
        if image.shape[:2] != (info["height"], info["width"]):
            raise UserError(f"{path}: image is {image.shape[0]}x{image.shape[1]} but {self.annotation_file.name} "
                            f"says {info['height']}x{info['width']}")
        annotations = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
        return image, annotations_to_mask(annotations, info["height"], info["width"], self.classes,
                                          str(self.annotation_file))

    def check(self, num_classes: int) -> None:
        """Every image file exists (stat only); the masks are generated, so valid by construction."""
        if num_classes < len(self.class_names):
            raise UserError(f"--num_classes {num_classes}: coco has {len(self.class_names)} classes here")
        paths = (self.image_path(index) for index in tqdm(range(len(self)), desc=f"checking coco {self.split}",
                                                          leave=False, disable=None))
        missing = [path for path in paths if not path.is_file()]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            shown = ", ".join(str(path) for path in missing[:3]) + more
            raise UserError(f"coco {self.split}: {len(missing)} image(s) missing: {shown}")


def image_folder(root: Path, split: str, image_root: str | None) -> Path:
    """``--coco_image_root`` when given, else ``<root>/<split>2017`` (official archives) or
    ``<root>/images/<split>2017`` (DeepLab ports)."""
    if image_root is not None:
        folder = Path(image_root).expanduser()
        if not folder.is_dir():
            raise UserError(f"--coco_image_root {folder}: not a folder")
        return folder
    candidates = [root / f"{split}2017", root / "images" / f"{split}2017"]
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise UserError(f"coco: no image folder for {split}: neither {candidates[0]} nor {candidates[1]} exists; "
                    f"expected the layout {LAYOUT}")


def count_coco_classes(args: argparse.Namespace) -> int:
    """For COCO 2017: 81 with --coco_all_classes (80 things and background), else the 21 VOC classes. For a file
    with categories of its own: background and each of them (read from the train file)."""
    annotation_file = dataset_root(INFO, args, [annotation_name("train")]) / annotation_name("train")
    return count_classes_of(read_categories(annotation_file), args.coco_all_classes)


def annotation_name(split: str) -> str:
    return f"annotations/instances_{split}2017.json"


def make_coco_source(split: str, args: argparse.Namespace) -> CocoSource:
    root = dataset_root(INFO, args, [annotation_name(split)])
    annotation_file = root / annotation_name(split)
    images = image_folder(root, split, args.coco_image_root)
    before_reading = annotation_file.stat()
    coco = load_annotations(annotation_file)
    categories = {int(category["id"]): str(category["name"]) for category in coco.loadCats(coco.getCatIds())}
    classes, class_names, classes_tag = category_classes(categories, annotation_file, args.coco_all_classes)
    cache_key = _cache_key(annotation_file, classes_tag, before_reading)
    image_ids = kept_image_ids(coco, classes, annotation_file, split, cache_key)
    if not image_ids:
        raise UserError(f"{annotation_file}: no image has more than {MIN_LABELLED_PIXELS} pixels of the kept classes")
    return CocoSource(split, coco, annotation_file, images, classes, class_names, image_ids)


def add_coco_arguments(group: argparse._ArgumentGroup) -> None:
    add_flag(group, "coco_all_classes", action="store_true", locked=True,
             help="train on all 80 COCO thing categories (81 classes with background) instead of the 20 "
                  "PASCAL VOC ones (21 classes); a file with categories of its own always uses all of them")
    add_flag(group, "coco_image_root", default=None, metavar="DIR",
             help="read each image at DIR/<its file_name> (for COCO-format exports whose images are not in "
                  "{train,val}2017/)")


INFO = register_dataset(DatasetInfo(
    name="coco",
    num_classes=None,
    default_num_classes=len(CAT_LIST),
    count_classes=count_coco_classes,  # 21 or 81, chosen by --coco_all_classes
    make_source=make_coco_source,
    layout=LAYOUT,
    splits=SPLITS,
    add_arguments=add_coco_arguments,
))
