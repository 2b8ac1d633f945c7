"""ADE20K and CamVid read from tiny trees in their on-disk formats, through the command-line flags."""

import re

import numpy as np
import pytest
from PIL import Image

import dataloaders.datasets.ade20k  # noqa: F401 - registers the dataset before any parser is built
import dataloaders.datasets.camvid  # noqa: F401 - registers the dataset before any parser is built
from config_utils.retrain_args import retrain_parser
from config_utils.recipes import RECIPES, fill_recipe_defaults
from config_utils.search_args import search_parser
from dataloaders import get_dataset_info
from utils.errors import UserError

HEIGHT, WIDTH = 10, 16  # 160 pixels: room for every raw label value of either dataset in one mask
NUM_CLASSES = {"ade20k": 150, "camvid": 11}
DATASET_FOLDERS = {"ade20k": "ADEChallengeData2016", "camvid": "CamVid"}
ADE_SPLIT_FOLDERS = {"train": "training", "val": "validation"}
SPLITS = [("ade20k", "train"), ("ade20k", "val"), ("camvid", "train"), ("camvid", "val"), ("camvid", "test")]


def sample_paths(name, data_dir, split, stem):
    """(image, label) paths of one sample, spelled out per dataset as the archives have them."""
    if name == "ade20k":
        folder = ADE_SPLIT_FOLDERS[split]
        return data_dir / "images" / folder / f"{stem}.jpg", data_dir / "annotations" / folder / f"{stem}.png"
    return data_dir / split / f"{stem}.png", data_dir / f"{split}annot" / f"{stem}.png"


def stem_of(name, split):
    return f"ADE_{split}_00000001" if name == "ade20k" else f"0001TP_{split}_006690"


def gradient_image(height=HEIGHT, width=WIDTH):
    """A smooth RGB image (JPEG keeps it close to the original)."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([cols * 15, rows * 25, np.full_like(rows, 100)], axis=-1).astype(np.uint8)


def write_sample(name, data_dir, split, stem, mask, image=None):
    """Write one image (JPEG for ADE20K, PNG for CamVid) and its 8-bit greyscale mask."""
    image_path, label_path = sample_paths(name, data_dir, split, stem)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(gradient_image(*mask.shape) if image is None else image).save(image_path, quality=95)
    Image.fromarray(mask.astype(np.uint8), mode="L").save(label_path)
    return image_path, label_path


def every_raw_value(name):
    """A mask holding each raw label value of the dataset (ADE20K 0..150, CamVid 0..11) at least once."""
    top = NUM_CLASSES[name]  # ADE20K's largest value is 150, CamVid's 11 (Unlabelled)
    return (np.arange(HEIGHT * WIDTH) % (top + 1)).reshape(HEIGHT, WIDTH).astype(np.uint8)


def expected_classes(name, raw):
    """The documented mapping: ADE20K 0 → ignore, k → k-1; CamVid 11 → ignore, others unchanged."""
    if name == "ade20k":
        return np.where(raw == 0, 255, raw.astype(np.int64) - 1)
    return np.where(raw == 11, 255, raw)


def plain_mask():
    """A valid mask of one class."""
    return np.full((HEIGHT, WIDTH), 3, dtype=np.uint8)


def dataset_tree(name, base, nested):
    """(folder that holds the data, root to pass): the dataset folder itself, or its parent."""
    if nested:
        return base / DATASET_FOLDERS[name], base
    return base / "data", base / "data"


def assert_load_and_check_fail(source, name, message):
    """Both the loader and the pre-training check stop with the same one-line error."""
    with pytest.raises(UserError, match=message):
        source.load(0)
    with pytest.raises(UserError, match=message):
        source.check(NUM_CLASSES[name])


def make_source(name, root, split="train"):
    args = search_parser().parse_args(["--dataset", name, "--data_root", str(root)])
    args.num_classes = NUM_CLASSES[name]
    return get_dataset_info(name).make_source(split, args)


@pytest.mark.parametrize("nested", [False, True], ids=["dataset-folder-root", "parent-folder-root"])
@pytest.mark.parametrize("name, split", SPLITS)
def test_reads_the_split_and_maps_every_label_value(tmp_path, name, split, nested):
    data_dir, root = dataset_tree(name, tmp_path, nested)
    for other_split in {s for n, s in SPLITS if n == name and s != split}:  # the source must pick its own split
        write_sample(name, data_dir, other_split, stem_of(name, other_split), plain_mask())
    image_path, label_path = write_sample(name, data_dir, split, stem_of(name, split), every_raw_value(name))

    source = make_source(name, root, split)
    assert len(source) == 1
    assert str(label_path) in source.describe(0)
    image, mask = source.load(0)
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, expected_classes(name, every_raw_value(name)))
    if image_path.suffix == ".png":
        np.testing.assert_array_equal(image, gradient_image())
    else:  # JPEG is lossy, but the decoded pixels stay near the written ones
        assert np.abs(image.astype(int) - gradient_image().astype(int)).mean() < 4
    source.check(NUM_CLASSES[name])


def test_pairs_several_images_by_file_name(tmp_path):
    stems_and_classes = [("0001TP_006690", 1), ("0006R0_f00930", 7), ("Seq05VD_f00000", 10)]
    for stem, class_id in reversed(stems_and_classes):
        write_sample("camvid", tmp_path, "train", stem, np.full((HEIGHT, WIDTH), class_id))
    source = make_source("camvid", tmp_path)
    assert len(source) == len(stems_and_classes)
    for index, (stem, class_id) in enumerate(stems_and_classes):
        assert f"{stem}.png" in source.describe(index)
        assert (source.load(index)[1] == class_id).all()


@pytest.mark.parametrize("name, layout_fragment", [
    ("ade20k", "images/{training,validation}/ADE_*.jpg"),
    ("camvid", "{trainannot,valannot,testannot}/*.png"),
])
def test_missing_root_names_the_layout(tmp_path, name, layout_fragment):
    absent = tmp_path / "absent"
    with pytest.raises(UserError, match=rf"{re.escape(str(absent))}.*not a folder.*{re.escape(layout_fragment)}"):
        make_source(name, absent)


@pytest.mark.parametrize("name, nested, missing", [
    ("ade20k", False, "images/validation, annotations/validation"),
    ("ade20k", True, "images/validation, annotations/validation"),
    ("camvid", False, "val, valannot"),
    ("camvid", True, "val, valannot"),
])
def test_root_without_the_split_names_the_missing_folders(tmp_path, name, nested, missing):
    data_dir, root = dataset_tree(name, tmp_path, nested)
    write_sample(name, data_dir, "train", stem_of(name, "train"), plain_mask())
    # The archive folder inside the given root stands for the root, and the message names it.
    with pytest.raises(UserError, match=rf"data root {re.escape(str(data_dir))} \(from --data_root\) lacks "
                                        rf"{re.escape(missing)}; expected the layout"):
        make_source(name, root, "val")


@pytest.mark.parametrize("name", ["ade20k", "camvid"])
def test_image_without_mask_is_named(tmp_path, name):
    write_sample(name, tmp_path, "train", stem_of(name, "train"), plain_mask())
    orphan_image, orphan_label = write_sample(name, tmp_path, "train", "orphan", plain_mask())
    orphan_label.unlink()
    with pytest.raises(UserError, match=rf"1 image\(s\) without a mask: {re.escape(str(orphan_image))}"):
        make_source(name, tmp_path)


@pytest.mark.parametrize("name, unknown_value", [("ade20k", 151), ("camvid", 12)])
def test_unknown_label_value_is_named_with_the_file(tmp_path, name, unknown_value):
    mask = plain_mask()
    mask[4, 5] = unknown_value
    _, label_path = write_sample(name, tmp_path, "train", stem_of(name, "train"), mask)
    source = make_source(name, tmp_path)
    message = rf"{re.escape(str(label_path))}: label values {unknown_value} are not {name} label ids"
    assert_load_and_check_fail(source, name, message)


@pytest.mark.parametrize("name", ["ade20k", "camvid"])
def test_mask_of_another_size_names_both_files(tmp_path, name):
    image_path, label_path = write_sample(name, tmp_path, "train", stem_of(name, "train"),
                                          np.full((8, 8), 2, dtype=np.uint8), image=gradient_image())
    source = make_source(name, tmp_path)
    message = rf"{re.escape(str(label_path))}: mask is 8x8 but its image {re.escape(str(image_path))} is 10x16"
    assert_load_and_check_fail(source, name, message)


@pytest.mark.parametrize("name", ["ade20k", "camvid"])
def test_corrupt_image_is_named(tmp_path, name):
    image_path, _ = write_sample(name, tmp_path, "train", stem_of(name, "train"), plain_mask())
    image_path.write_bytes(b"these bytes are not an image")
    source = make_source(name, tmp_path)
    message = rf"{re.escape(str(image_path))}: cannot read this image"
    assert_load_and_check_fail(source, name, message)


@pytest.mark.parametrize("name, first, last", [("ade20k", "wall", "flag"), ("camvid", "Sky", "Bicyclist")])
def test_class_names_and_palette(tmp_path, name, first, last):
    info = get_dataset_info(name)
    count = NUM_CLASSES[name]
    assert info.num_classes == info.default_num_classes == count
    write_sample(name, tmp_path, "train", stem_of(name, "train"), plain_mask())
    names = make_source(name, tmp_path).class_names
    assert len(names) == len(set(names)) == count
    assert (names[0], names[-1]) == (first, last)
    palette = info.palette(count)
    assert palette.shape == (count, 3) and palette.dtype == np.uint8
    assert len({tuple(colour) for colour in palette}) == count


def test_camvid_palette_is_the_segnet_one():
    palette = get_dataset_info("camvid").palette(11)
    assert tuple(palette[0]) == (128, 128, 128)  # Sky
    assert tuple(palette[3]) == (128, 64, 128)  # Road
    assert tuple(palette[4]) == (60, 40, 222)  # Pavement
    assert tuple(palette[10]) == (0, 128, 192)  # Bicyclist


@pytest.mark.parametrize("name, stage, expected", [
    ("ade20k", "search", {"epochs": 40, "alpha_epoch": 20, "batch_size": 2, "crop_size": 321, "resize": 321}),
    ("ade20k", "retrain", {"epochs": 200, "batch_size": 8, "crop_size": 513}),
    ("camvid", "search", {"epochs": 40, "alpha_epoch": 20, "batch_size": 2, "crop_size": 321, "resize": 360}),
    ("camvid", "retrain", {"epochs": 200, "batch_size": 8, "crop_size": 360}),
])
def test_stage_flags_default_to_the_dataset_recipe(name, stage, expected):
    parser = search_parser() if stage == "search" else retrain_parser()
    args = parser.parse_args(["--dataset", name])
    fill_recipe_defaults(args, "autodeeplab", stage, required=tuple(expected))
    assert {flag: getattr(args, flag) for flag in expected} == expected
    given = parser.parse_args(["--dataset", name, "--epochs", "3"])  # a flag on the command line wins
    fill_recipe_defaults(given, "autodeeplab", stage, required=("epochs",))
    assert given.epochs == 3


def test_a_dataset_without_a_recipe_needs_its_flags_given(monkeypatch):
    monkeypatch.delitem(RECIPES, ("autodeeplab", "search", "camvid"))  # as a dataset registered by a user
    args = search_parser().parse_args(["--dataset", "camvid", "--batch_size", "4"])
    with pytest.raises(UserError, match="no autodeeplab search recipe gives --epochs, --crop_size; give them"):
        fill_recipe_defaults(args, "autodeeplab", "search", required=("epochs", "batch_size", "crop_size"))
