"""COCO read from a hand-written instances file in the official format, through the command-line path.

The expected masks are written out independently of the loader: rectangles as array slices (an
integer-cornered polygon covers rows y0..y1-1 and columns x0..x1-1), RLE objects as the arrays they
were encoded from, first-wins by painting the objects in reverse order.
"""

import json
import logging
import os
import pickle

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_api

import dataloaders.datasets.coco as coco_module  # registers "coco"; before any parser is built
from config_utils.recipes import recipe
from config_utils.search_args import search_parser
from dataloaders import get_dataset_info, resolve_num_classes
from utils.errors import UserError

# pycocotools' decode trips a NumPy 2 deprecation inside its compiled code; nothing to fix on this side.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")

HEIGHT, WIDTH = 48, 64
# The 80 thing categories of COCO 2017 (ids have gaps at 12, 26, 29, 30, 45, 66, 68, 69, 71, 83).
COCO_CATEGORIES = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"),
    (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"),
    (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"),
    (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"),
    (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)
PERSON, CAR, BUS, TRAFFIC_LIGHT, CAT, DOG, BOTTLE, BANANA, TV = 1, 3, 6, 10, 17, 18, 44, 52, 72
VOC_CLASS = {PERSON: 15, CAR: 7, BUS: 6, CAT: 8, DOG: 12, BOTTLE: 5, TV: 20}  # the VOC class list, by hand
ALL80_CLASS = {PERSON: 1, CAR: 3, BUS: 6, TRAFFIC_LIGHT: 10, CAT: 16, DOG: 17, BOTTLE: 40, BANANA: 47, TV: 63}


def box(y0, x0, y1, x1):
    """A bool [H, W] rectangle rows y0..y1-1, columns x0..x1-1."""
    region = np.zeros((HEIGHT, WIDTH), dtype=bool)
    region[y0:y1, x0:x1] = True
    return region


def disk(center_y, center_x, radius):
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    return (rows - center_y) ** 2 + (cols - center_x) ** 2 <= radius ** 2


def polygon(y0, x0, y1, x1):
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


def uncompressed_rle(region):
    """COCO's uncompressed RLE written out by hand: column-major run lengths, starting with a 0-run."""
    flat = region.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return {"size": [HEIGHT, WIDTH], "counts": ([0] if flat[0] else []) + runs}


def compressed_rle(region):
    rle = mask_api.encode(np.asfortranarray(region.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


# Per image: (id, file name, [(category, segmentation kind, region, iscrowd)]) in annotation order.
OBJECTS_IMAGE = (11, "objects.png", [
    (PERSON, "rle", box(25, 36, 48, 64), 1),  # a crowd listed FIRST: later objects still cover it
    (BANANA, "rle", box(0, 40, 10, 46), 1),  # a crowd of a category VOC does not keep
    (PERSON, "polygon", box(0, 0, 30, 40), 0),
    (CAR, "polygon", box(20, 30, 40, 50), 0),  # overlaps the person, which comes first and wins
    (DOG, "polygons", (box(42, 0, 46, 10), box(42, 50, 46, 60)), 0),  # one object in two parts
    (CAT, "compressed", disk(10, 52, 6), 0),
    (TRAFFIC_LIGHT, "polygon", box(32, 0, 40, 20), 0),  # not a VOC category: background there
])
OVERLAP_IMAGE = (12, "overlap.png", [
    (BUS, "polygon", box(0, 0, 30, 40), 0),  # first and lower class than the tv: first wins, not the max
    (TV, "polygon", box(10, 20, 48, 64), 0),
])
DROPPED_SMALL = (13, "nearly_empty.png", [(PERSON, "polygon", box(0, 0, 10, 10), 0)])
DROPPED_EXACTLY_1000 = (14, "exactly_1000.png", [(PERSON, "polygon", box(0, 0, 20, 50), 0)])
KEPT_1001 = (15, "kept_1001.png", [(PERSON, "polygon", box(0, 0, 20, 50), 0),
                                   (BOTTLE, "polygon", box(30, 60, 31, 61), 0)])
DROPPED_CROWD = (16, "mostly_crowd.png", [(PERSON, "rle", box(0, 0, 40, 64), 1),
                                          (PERSON, "polygon", box(40, 0, 48, 10), 0)])  # 80 labelled pixels
NON_VOC_ONLY = (17, "traffic_light.png", [(TRAFFIC_LIGHT, "polygon", box(0, 0, 40, 40), 0)])
UNANNOTATED = (18, "unannotated.png", [])
TRAIN_IMAGES = (OBJECTS_IMAGE, OVERLAP_IMAGE, DROPPED_SMALL, DROPPED_EXACTLY_1000, KEPT_1001, DROPPED_CROWD,
                NON_VOC_ONLY, UNANNOTATED)
VAL_IMAGES = ((21, "val.png", [(DOG, "polygon", box(8, 8, 40, 48), 0)]),)
# Kept: more than 1000 labelled pixels (exactly 1000 is dropped; crowd pixels are ignored, so they do not count).
KEPT_VOC21, KEPT_ALL80 = [11, 12, 15], [11, 12, 15, 17]


def segmentation(kind, region):
    if kind == "polygon":
        return [polygon(*bounds(region))]
    if kind == "polygons":
        return [polygon(*bounds(part)) for part in region]
    return uncompressed_rle(region) if kind == "rle" else compressed_rle(region)


def bounds(region):
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    return rows[0], cols[0], rows[-1] + 1, cols[-1] + 1


def object_region(kind, region):
    return region[0] | region[1] if kind == "polygons" else region


def instances_file(images, categories=COCO_CATEGORIES):
    annotations = []
    for image_id, _, objects in images:
        for category, kind, region, iscrowd in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "segmentation": segmentation(kind, region), "iscrowd": iscrowd,
                                "area": float(object_region(kind, region).sum()), "bbox": [0.0, 0.0, 1.0, 1.0]})
    return {"info": {"description": "test"}, "licenses": [],
            "images": [{"id": image_id, "file_name": name, "height": HEIGHT, "width": WIDTH}
                       for image_id, name, _ in images],
            "annotations": annotations,
            "categories": [{"id": cid, "name": name, "supercategory": "thing"} for cid, name in categories]}


def make_coco(root, layout="official"):
    """Write both splits; returns {(split, file name): image array}."""
    rng = np.random.default_rng(0)
    pixels = {}
    (root / "annotations").mkdir(parents=True)
    for split, images in (("train", TRAIN_IMAGES), ("val", VAL_IMAGES)):
        folder = root / f"{split}2017" if layout == "official" else root / "images" / f"{split}2017"
        folder.mkdir(parents=True)
        for _, name, _ in images:
            pixels[split, name] = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            Image.fromarray(pixels[split, name]).save(folder / name)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(instances_file(images)))
    return pixels


def expected_mask(objects, classes):
    """Crowd pixels 255, then objects painted last-to-first so that the first one ends on top."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    for category, kind, region, iscrowd in objects:
        if iscrowd and category in classes:
            mask[region] = 255
    for category, kind, region, iscrowd in reversed(objects):
        if not iscrowd and category in classes:
            mask[object_region(kind, region)] = classes[category]
    return mask


def parse(root, *extra):
    return search_parser().parse_args(["--dataset", "coco", "--data_root", str(root), *extra])


def source(root, split="train", *extra):
    return get_dataset_info("coco").make_source(split, parse(root, *extra))


def image_ids(src):
    return [src.image_ids[i] for i in range(len(src))]


def cache_file(root, split="train", classes="voc21"):
    return root / "annotations" / f"autodeeplab_{split}2017_{classes}_ids.json"


@pytest.fixture
def root(tmp_path):
    make_coco(tmp_path / "coco")
    return tmp_path / "coco"


@pytest.fixture
def autodeeplab_log(caplog, monkeypatch):
    """The loader's log lines, even after a test elsewhere set up run logging (propagate off)."""
    monkeypatch.setattr(logging.getLogger("autodeeplab"), "propagate", True)
    caplog.set_level(logging.INFO, logger="autodeeplab")
    return caplog


# ---------------------------------------------------------------- registration and flags


def test_registration_classes_and_defaults():
    info = get_dataset_info("coco")
    assert (info.num_classes, info.default_num_classes, info.splits) == (None, 21, ("train", "val"))
    assert recipe("autodeeplab", "search", "coco") == {"epochs": 30, "alpha_epoch": 15, "batch_size": 2,
                                                       "crop_size": 321, "resize": 321}
    assert recipe("autodeeplab", "retrain", "coco") == {"epochs": 30, "batch_size": 8, "crop_size": 513}
    assert coco_module.CAT_LIST == [0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72]
    assert coco_module.VOC_CLASS_NAMES == (
        "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
        "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def test_all_classes_flag_in_both_spellings(tmp_path):
    assert parse(tmp_path).coco_all_classes is False
    assert parse(tmp_path, "--coco_all_classes").coco_all_classes is True
    assert parse(tmp_path, "--coco-all-classes").coco_all_classes is True


@pytest.mark.parametrize("extra, count, message", [
    (("--num_classes", "81"), 21, "coco has exactly 21 classes here, got 81"),
    (("--coco_all_classes", "--num_classes", "21"), 81, "coco has exactly 81 classes here, got 21"),
])
def test_num_classes_must_match_the_mode(root, extra, count, message):
    with pytest.raises(UserError, match=message):
        resolve_num_classes(parse(root, *extra))
    assert resolve_num_classes(parse(root, *extra[:-2])) == count


def test_matching_num_classes_is_accepted(root):
    assert resolve_num_classes(parse(root, "--num_classes", "21")) == 21
    assert len(source(root, "train", "--num_classes", "21").class_names) == 21
    assert len(source(root, "train", "--coco_all_classes", "--num_classes", "81").class_names) == 81


# ---------------------------------------------------------------- masks


def test_voc_masks_pixel_by_pixel(tmp_path):
    pixels = make_coco(tmp_path)
    src = source(tmp_path)
    assert image_ids(src) == KEPT_VOC21 and len(src.class_names) == 21
    by_id = {image_id: (name, objects) for image_id, name, objects in TRAIN_IMAGES}
    for index, image_id in enumerate(KEPT_VOC21):
        name, objects = by_id[image_id]
        image, mask = src.load(index)
        assert image.dtype == np.uint8 and np.array_equal(image, pixels["train", name])
        assert mask.dtype == np.uint8 and mask.shape == (HEIGHT, WIDTH)
        np.testing.assert_array_equal(mask, expected_mask(objects, VOC_CLASS), err_msg=name)


def test_the_rules_on_the_objects_image(root):
    """The individual rules, spelled out on single pixels of the first image."""
    mask = source(root).load(0)[1]
    assert mask[25, 35] == VOC_CLASS[PERSON] and mask[35, 45] == VOC_CLASS[CAR]  # person ∩ car: person came first
    assert mask[30, 60] == 255  # crowd, nothing else: ignored, not background
    assert mask[27, 38] == VOC_CLASS[PERSON] and mask[38, 48] == VOC_CLASS[CAR]  # crowd under objects: the object
    assert mask[5, 42] == 0  # banana crowd: not a VOC category, so background
    assert mask[35, 5] == 0  # traffic light: background
    assert mask[43, 5] == mask[43, 55] == VOC_CLASS[DOG] and mask[43, 30] == 0  # both parts, not the gap
    assert mask[10, 52] == VOC_CLASS[CAT] and mask[10, 59] == 0  # the compressed-RLE disk (radius 6)


def test_first_annotation_wins_even_with_the_lower_class(root):
    mask = source(root).load(1)[1]
    assert mask[15, 30] == VOC_CLASS[BUS] < VOC_CLASS[TV]
    assert mask[40, 30] == VOC_CLASS[TV]


def test_all_80_classes(root):
    src = source(root, "train", "--coco_all_classes")
    assert image_ids(src) == KEPT_ALL80  # the traffic-light-only image now has labelled pixels
    assert len(src.class_names) == 81 and src.class_names[0] == "background"
    assert list(src.class_names[1:]) == [name for _, name in COCO_CATEGORIES]
    for category, class_index in ALL80_CLASS.items():
        assert src.class_names[class_index] == dict(COCO_CATEGORIES)[category]
    by_id = {image_id: objects for image_id, _, objects in TRAIN_IMAGES}
    for index, image_id in enumerate(KEPT_ALL80):
        np.testing.assert_array_equal(src.load(index)[1], expected_mask(by_id[image_id], ALL80_CLASS))
    mask = src.load(0)[1]
    assert mask[5, 42] == 255 and mask[35, 5] == ALL80_CLASS[TRAFFIC_LIGHT]


def test_val_split(root):
    src = source(root, "val")
    assert image_ids(src) == [21]
    np.testing.assert_array_equal(src.load(0)[1], np.where(box(8, 8, 40, 48), VOC_CLASS[DOG], 0))


@pytest.mark.parametrize("layout", ["official", "ports"])
def test_both_image_layouts(tmp_path, layout):
    pixels = make_coco(tmp_path, layout)
    src = source(tmp_path)
    folder = tmp_path / "train2017" if layout == "official" else tmp_path / "images" / "train2017"
    assert src.image_path(0) == folder / "objects.png"
    assert np.array_equal(src.load(0)[0], pixels["train", "objects.png"])
    assert str(folder / "objects.png") in src.describe(0)
    assert "instances_train2017.json" in src.describe(0)


def test_source_survives_pickling_for_worker_processes(root):
    src = source(root)
    copy = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(copy.load(2)[1], src.load(2)[1])


# ---------------------------------------------------------------- the image-id cache


def test_cache_written_with_its_key(root):
    annotation = root / "annotations" / "instances_train2017.json"
    source(root)
    cached = json.loads(cache_file(root).read_text())
    assert cached == {"format": "autodeeplab-coco-ids", "version": 1, "annotation_file": "instances_train2017.json",
                      "annotation_size": annotation.stat().st_size,
                      "annotation_mtime_ns": annotation.stat().st_mtime_ns, "min_pixels": 1000,
                      "classes": "voc21", "image_ids": KEPT_VOC21}
    assert not cache_file(root, classes="all80").exists()
    source(root, "train", "--coco_all_classes")
    assert json.loads(cache_file(root, classes="all80").read_text())["image_ids"] == KEPT_ALL80
    assert sorted(p.name for p in (root / "annotations").iterdir()) == [
        "autodeeplab_train2017_all80_ids.json", "autodeeplab_train2017_voc21_ids.json",
        "instances_train2017.json", "instances_val2017.json"]  # no temporary file left behind


def test_cache_is_reused(root, monkeypatch):
    source(root)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the images were selected again despite a current cache")

    monkeypatch.setattr(coco_module, "select_labelled_images", must_not_run)
    assert image_ids(source(root)) == KEPT_VOC21


def count_selections(monkeypatch):
    calls = []
    select = coco_module.select_labelled_images
    monkeypatch.setattr(coco_module, "select_labelled_images", lambda *a, **k: calls.append(1) or select(*a, **k))
    return calls


def test_changed_annotation_file_rebuilds_the_cache(root, monkeypatch, autodeeplab_log):
    source(root)
    calls = count_selections(monkeypatch)
    annotation = root / "annotations" / "instances_train2017.json"
    without_bottle = [OBJECTS_IMAGE, OVERLAP_IMAGE, (15, "kept_1001.png", KEPT_1001[2][:1])]  # 15 now has 1000
    annotation.write_text(json.dumps(instances_file(without_bottle)))
    assert image_ids(source(root)) == [11, 12] and len(calls) == 1
    assert "rebuilding" in autodeeplab_log.text
    assert json.loads(cache_file(root).read_text())["image_ids"] == [11, 12]


def test_same_size_new_mtime_rebuilds_the_cache(root, monkeypatch):
    source(root)
    calls = count_selections(monkeypatch)
    annotation = root / "annotations" / "instances_train2017.json"
    stat = annotation.stat()
    os.utime(annotation, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    source(root)
    assert len(calls) == 1
    assert json.loads(cache_file(root).read_text())["annotation_mtime_ns"] == stat.st_mtime_ns + 1_000_000_000


def test_other_threshold_rebuilds_the_cache(root, monkeypatch):
    source(root)
    monkeypatch.setattr(coco_module, "MIN_LABELLED_PIXELS", 999)
    assert image_ids(source(root)) == [11, 12, 14, 15]  # the 1000-pixel image passes now
    assert json.loads(cache_file(root).read_text())["min_pixels"] == 999


@pytest.mark.parametrize("content", [
    "{not json",
    json.dumps({"format": "something-else", "image_ids": [11]}),
    json.dumps([11, 12, 15]),
])
def test_unreadable_or_foreign_cache_is_rebuilt(root, autodeeplab_log, content):
    cache_file(root).write_text(content)
    assert image_ids(source(root)) == KEPT_VOC21
    assert "rebuilding" in autodeeplab_log.text
    assert json.loads(cache_file(root).read_text())["format"] == "autodeeplab-coco-ids"


def test_cache_naming_unknown_images_is_rebuilt(root, autodeeplab_log):
    source(root)
    cached = json.loads(cache_file(root).read_text())
    cache_file(root).write_text(json.dumps({**cached, "image_ids": [11, 999]}))
    assert image_ids(source(root)) == KEPT_VOC21
    assert "rebuilding" in autodeeplab_log.text


def test_read_only_annotations_folder_does_not_fail(root, autodeeplab_log):
    annotations = root / "annotations"
    annotations.chmod(0o555)
    try:
        if os.access(annotations, os.W_OK):
            pytest.skip("running as a user whom a read-only folder does not stop (root)")
        assert image_ids(source(root)) == KEPT_VOC21
    finally:
        annotations.chmod(0o755)
    assert not cache_file(root).exists()
    assert "cannot write" in autodeeplab_log.text


def test_failed_cache_write_warns_and_leaves_nothing(root, monkeypatch, autodeeplab_log):
    """The same path without chmod: the rename is refused, as in a folder the user may not write."""
    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", refuse)
        assert image_ids(source(root)) == KEPT_VOC21
    assert sorted(p.name for p in (root / "annotations").iterdir()) == [
        "instances_train2017.json", "instances_val2017.json"]
    warnings = [r for r in autodeeplab_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot write" in warnings[0].getMessage()


# ---------------------------------------------------------------- errors


def test_missing_root_names_the_layout(tmp_path):
    with pytest.raises(UserError, match=r"is not a folder; expected the layout <root>/annotations/instances_"):
        source(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"lacks annotations/instances_train2017.json; expected the layout"):
        source(tmp_path / "empty")


def test_missing_image_folder_names_both_places(root):
    (root / "val2017").rename(root / "elsewhere")
    with pytest.raises(UserError, match=r"neither .*val2017 nor .*images/val2017 exists"):
        source(root, "val")


def test_check_names_a_missing_image(root):
    src = source(root)
    src.check(21)
    (root / "train2017" / "overlap.png").unlink()
    with pytest.raises(UserError, match=r"1 image\(s\) missing: .*train2017/overlap.png$"):
        src.check(21)


def test_check_only_stats_the_images(root, monkeypatch):
    def must_not_decode(path):
        raise AssertionError(f"check decoded {path}")

    monkeypatch.setattr(coco_module, "read_image", must_not_decode)
    source(root).check(21)


def test_check_refuses_too_few_classes(root):
    with pytest.raises(UserError, match="--num_classes 20: coco has 21 classes"):
        source(root).check(20)


def test_image_of_another_size_fails_at_load(root):
    Image.fromarray(np.zeros((HEIGHT, WIDTH + 1, 3), dtype=np.uint8)).save(root / "train2017" / "overlap.png")
    src = source(root)
    with pytest.raises(UserError, match=r"overlap.png: image is 48x65 but instances_train2017.json says 48x64"):
        src.load(1)


def test_unreadable_annotation_file(root):
    (root / "annotations" / "instances_train2017.json").write_text("{truncated")
    with pytest.raises(UserError, match="instances_train2017.json: not a readable COCO instances file"):
        source(root)


def test_a_file_with_other_category_names_uses_its_own_categories(root, autodeeplab_log):
    renamed = [(cid, "zebra" if cid == PERSON else name) for cid, name in COCO_CATEGORIES]
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(instances_file(TRAIN_IMAGES, renamed)))
    src = source(root)
    assert len(src.class_names) == 81 and src.class_names[1] == "zebra"  # background, then the 80 in id order
    assert ("since its categories are not COCO 2017's (category 1 is 'zebra', COCO's is 'person')"
            in autodeeplab_log.text)
    with pytest.raises(UserError, match="--coco_all_classes applies to COCO 2017 files"):
        source(root, "train", "--coco_all_classes")


# A COCO-format export with categories of its own: ids with gaps, names not COCO's, a crowd, an image in a
# sub-folder, and the images under a folder of the user's choosing.
CUSTOM_CATEGORIES = ((3, "crack"), (7, "rust"), (8, "dent"))
CUSTOM_CLASS = {3: 1, 7: 2, 8: 3}
CUSTOM_TRAIN = (
    (101, "site_a/panel_1.png", [(7, "polygon", box(0, 0, 30, 40), 0), (3, "compressed", disk(30, 40, 9), 0),
                                 (8, "rle", box(36, 0, 48, 20), 1)]),  # the crowd: 255 where nothing else is
    (102, "panel_2.png", [(8, "polygon", box(10, 10, 48, 64), 0), (3, "polygon", box(0, 0, 20, 30), 0)]),
)
CUSTOM_VAL = ((201, "val/panel_3.png", [(3, "polygon", box(0, 0, 40, 40), 0)]),)


def make_custom_coco(root):
    rng = np.random.default_rng(5)
    (root / "coco" / "annotations").mkdir(parents=True)
    pixels = {}
    for split, images in (("train", CUSTOM_TRAIN), ("val", CUSTOM_VAL)):
        for _, name, _ in images:
            pixels[name] = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            (root / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[name]).save(root / "photos" / name)
        (root / "coco" / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps(instances_file(images, CUSTOM_CATEGORIES)))
    return pixels


def test_a_coco_format_export_with_its_own_categories_is_read_pixel_by_pixel(tmp_path, autodeeplab_log):
    pixels = make_custom_coco(tmp_path)
    args = parse(tmp_path / "coco", "--coco_image_root", str(tmp_path / "photos"))
    assert resolve_num_classes(args) == 4
    info = get_dataset_info("coco")
    train, val = info.make_source("train", args), info.make_source("val", args)
    assert train.class_names == ("background", "crack", "rust", "dent")
    assert "its categories are not COCO 2017's (it has no category 5 ('airplane' in COCO))" in autodeeplab_log.text
    assert image_ids(train) == [101, 102] and image_ids(val) == [201]
    for index, (_, name, objects) in enumerate(CUSTOM_TRAIN):
        image, mask = train.load(index)
        np.testing.assert_array_equal(image, pixels[name])
        np.testing.assert_array_equal(mask, expected_mask(objects, CUSTOM_CLASS))
    assert (train.load(0)[1] == 255).any() and set(np.unique(train.load(1)[1])) == {0, 1, 3}
    train.check(4)
    assert cache_file(tmp_path / "coco", "train", "custom3").is_file()
    with pytest.raises(UserError, match="--coco_image_root .*nowhere: not a folder"):
        info.make_source("train", parse(tmp_path / "coco", "--coco_image_root", str(tmp_path / "nowhere")))


def test_the_category_list_is_found_without_parsing_the_whole_file(tmp_path, monkeypatch):
    content = instances_file(TRAIN_IMAGES, CUSTOM_CATEGORIES)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"categories": content["categories"], **content}))  # first, as exporters put it
    monkeypatch.setattr(coco_module, "CATEGORY_SCAN_BYTES", 400)  # far smaller than the file
    assert coco_module.read_categories(path) == dict(CUSTOM_CATEGORIES)
    path.write_text(json.dumps(content))  # last, as COCO's own files do
    assert coco_module.read_categories(path) == dict(CUSTOM_CATEGORIES)
    middle = {"images": content["images"], "categories": content["categories"], "annotations": content["annotations"]}
    path.write_text(json.dumps(middle))  # elsewhere: the whole file is read
    assert coco_module.read_categories(path) == dict(CUSTOM_CATEGORIES)
    path.write_text(json.dumps({"categories": [{"id": "3", "name": "crack"}]}))
    with pytest.raises(UserError, match="'categories' must be a non-empty list"):
        coco_module.read_categories(path)


def test_all_classes_needs_the_80_categories(root):
    (root / "annotations" / "instances_train2017.json").write_text(
        json.dumps(instances_file(TRAIN_IMAGES, COCO_CATEGORIES[:79])))
    with pytest.raises(UserError, match="--coco_all_classes expects the 80 COCO thing categories, the file has 79"):
        source(root, "train", "--coco_all_classes")


def test_no_image_left_is_an_error(root):
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(instances_file([DROPPED_SMALL])))
    with pytest.raises(UserError, match="no image has more than 1000 pixels of the kept classes"):
        source(root)


def test_rle_of_another_size_names_the_annotation(root):
    content = instances_file([OVERLAP_IMAGE])
    content["annotations"][1]["segmentation"] = uncompressed_rle(box(0, 0, 10, 10)) | {"size": [HEIGHT, WIDTH + 1]}
    content["annotations"][1]["segmentation"]["counts"][-1] += HEIGHT  # one more column of zeros
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(content))
    with pytest.raises(UserError, match=r"instances_train2017.json: annotation 2 is 48x65 but its image is 48x64"):
        source(root)
