"""PASCAL VOC 2012 (+ SBD trainaug) read from tiny trees in the exact on-disk formats, through the CLI's path."""

import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from config_utils.recipes import recipe
from config_utils.search_args import search_parser
from dataloaders import get_dataset_info, voc_palette
from dataloaders.datasets import pascal  # registers the dataset before a parser lists the --dataset choices
from utils.errors import UserError

NUM_CLASSES = 21
PALETTE_BYTES = voc_palette(256).tobytes()


@pytest.fixture(autouse=True)
def no_root_variables(monkeypatch):
    for variable in ("AUTODEEPLAB_SBD_ROOT", "AUTODEEPLAB_PASCAL_ROOT", "AUTODEEPLAB_DATA_ROOT"):
        monkeypatch.delenv(variable, raising=False)


def voc_mask(seed: int, height: int = 20, width: int = 28) -> np.ndarray:
    """Background with one object of a class 1..20 outlined by a 255 border, like VOC's SegmentationClass."""
    mask = np.zeros((height, width), dtype=np.uint8)
    top, left = 2 + seed % 5, 3 + seed % 7
    mask[top:top + 10, left:left + 12] = 255
    mask[top + 1:top + 9, left + 1:left + 11] = 1 + seed % 20
    return mask


def sbd_mask(seed: int, height: int = 20, width: int = 28) -> np.ndarray:
    """Class ids with no border, like SBD's GTcls.Segmentation."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[seed % 6:, : width // 2] = 1 + (seed * 7) % 20
    return mask


def write_image(path: Path, height: int, width: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_palette_png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask, mode="P")
    image.putpalette(PALETTE_BYTES)
    image.save(path)


def write_sbd_mat(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    present = np.unique(mask[mask > 0]).astype(np.uint8)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": mask, "Boundaries": np.zeros(len(present), dtype=object),
                                      "CategoriesPresent": present}})


def write_split(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{image_id}\n" for image_id in ids))


def make_voc(voc: Path, train: list[str], val: list[str]) -> dict[str, np.ndarray]:
    """A VOC2012 folder with one image and palette mask per id (sizes vary); returns the masks written."""
    masks = {}
    for seed, image_id in enumerate(train + val):
        mask = voc_mask(seed, height=18 + seed, width=26 + 2 * seed)
        write_image(voc / "JPEGImages" / f"{image_id}.jpg", *mask.shape)
        write_palette_png(voc / "SegmentationClass" / f"{image_id}.png", mask)
        masks[image_id] = mask
    write_split(voc / "ImageSets" / "Segmentation" / "train.txt", train)
    write_split(voc / "ImageSets" / "Segmentation" / "val.txt", val)
    return masks


def make_sbd(sbd: Path, train: list[str], val: list[str], seed_offset: int = 100) -> dict[str, np.ndarray]:
    """A benchmark_RELEASE folder with one image and .mat per id; returns the Segmentation arrays written."""
    masks = {}
    for seed, image_id in enumerate(dict.fromkeys(train + val), start=seed_offset):
        mask = sbd_mask(seed, height=18 + seed % 9, width=26 + seed % 5)
        write_image(sbd / "dataset" / "img" / f"{image_id}.jpg", *mask.shape)
        write_sbd_mat(sbd / "dataset" / "cls" / f"{image_id}.mat", mask)
        masks[image_id] = mask
    write_split(sbd / "dataset" / "train.txt", train)
    write_split(sbd / "dataset" / "val.txt", val)
    return masks


def pascal_source(root: Path, split: str, *flags: str):
    args = search_parser().parse_args(["--dataset", "pascal", "--data_root", str(root), *flags])
    args.num_classes = NUM_CLASSES
    return get_dataset_info("pascal").make_source(split, args)


def source_ids(source) -> list[str]:
    return [Path(image).stem for image, _ in source.pairs]


@pytest.mark.parametrize("nested", [False, True], ids=["VOC2012-root", "VOCdevkit-parent-root"])
def test_voc_masks_are_the_palette_indices_written(tmp_path, nested):
    voc = tmp_path / "VOCdevkit" / "VOC2012" if nested else tmp_path / "VOC2012"
    masks = make_voc(voc, train=["2007_000032", "2007_000039", "2008_000002"], val=["2007_000033", "2009_000001"])
    root = tmp_path if nested else voc
    for split, expected_ids in (("train", ["2007_000032", "2007_000039", "2008_000002"]),
                                ("val", ["2007_000033", "2009_000001"])):
        source = pascal_source(root, split)
        assert source_ids(source) == expected_ids
        assert len(source.class_names) == NUM_CLASSES
        source.check(NUM_CLASSES)
        for index, image_id in enumerate(expected_ids):
            image, mask = source.load(index)
            assert image.dtype == np.uint8 and image.shape == (*masks[image_id].shape, 3)
            np.testing.assert_array_equal(mask, masks[image_id])
            assert (mask == 255).any() and mask.max() == 255


def test_trainaug_is_the_union_without_voc_val(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    voc_masks = make_voc(voc, train=["a", "b", "c"], val=["d", "e"])
    # b and a are in VOC train too (their VOC annotation, with borders, wins); d is VOC val (excluded);
    # f is listed in both SBD splits.
    sbd_masks = make_sbd(tmp_path / "benchmark_RELEASE", train=["b", "d", "f"], val=["g", "f", "a"])

    source = pascal_source(tmp_path, "train", "--use_sbd")
    assert source_ids(source) == ["a", "b", "c", "f", "g"]
    source.check(NUM_CLASSES)
    for index, image_id in enumerate(source_ids(source)):
        image, mask = source.load(index)
        expected = voc_masks[image_id] if image_id in ("a", "b", "c") else sbd_masks[image_id]
        assert image.shape == (*expected.shape, 3)
        np.testing.assert_array_equal(mask, expected)
    assert [label.suffix for _, label in source.pairs] == [".png", ".png", ".png", ".mat", ".mat"]

    val = pascal_source(tmp_path, "val", "--use_sbd")
    assert source_ids(val) == ["d", "e"]


def test_sbd_root_from_the_variable_and_the_flag_winning(tmp_path, monkeypatch):
    voc = tmp_path / "VOC2012"
    make_voc(voc, train=["a"], val=["b"])
    sbd_masks = make_sbd(tmp_path / "elsewhere" / "benchmark_RELEASE", train=["c"], val=[])
    monkeypatch.setenv("AUTODEEPLAB_SBD_ROOT", str(tmp_path / "elsewhere" / "benchmark_RELEASE"))

    source = pascal_source(voc, "train", "--use-sbd")
    assert source_ids(source) == ["a", "c"]
    np.testing.assert_array_equal(source.load(1)[1], sbd_masks["c"])

    flag_root = tmp_path / "flag_sbd"
    with pytest.raises(UserError, match=re.escape(f"{flag_root} (from --sbd_root)")):
        pascal_source(voc, "train", "--use_sbd", "--sbd-root", str(flag_root))


def test_use_sbd_without_sbd_names_the_path_and_layout(tmp_path):
    voc = tmp_path / "VOC2012"
    make_voc(voc, train=["a"], val=["b"])
    expected = re.escape(str(voc / "benchmark_RELEASE")) + " .*lacks dataset/img.*dataset/cls/<id>.mat"
    with pytest.raises(UserError, match=expected):
        pascal_source(voc, "train", "--use_sbd")
    assert source_ids(pascal_source(voc, "val", "--use_sbd")) == ["b"]  # val never needs SBD


@pytest.mark.parametrize("root_kind", ["absent", "empty"])
def test_a_bad_root_names_the_layout(tmp_path, root_kind):
    root = tmp_path / "VOC2012"
    if root_kind == "empty":
        root.mkdir()
    with pytest.raises(UserError, match=r"pascal: data root .*VOC2012 \(from --data_root\).*"
                                        r"JPEGImages/<id>.jpg.*VOCdevkit/VOC2012"):
        pascal_source(root, "train")


@pytest.mark.parametrize("missing", ["JPEGImages/b.jpg", "SegmentationClass/b.png"])
def test_a_listed_id_without_its_file_is_named(tmp_path, missing):
    voc = tmp_path / "VOC2012"
    make_voc(voc, train=["a", "b"], val=["c"])
    (voc / missing).unlink()
    with pytest.raises(UserError, match=re.escape(f"pascal train: 1 listed file(s) missing: {voc / missing}") + "$"):
        pascal_source(voc, "train")


def test_an_empty_split_file_gives_an_empty_source(tmp_path):
    voc = tmp_path / "VOC2012"
    make_voc(voc, train=["a"], val=[])
    assert len(pascal_source(voc, "val")) == 0


def corrupt_mat_contents(path: Path) -> None:
    path.write_bytes(b"not a MATLAB file at all")


def truncated_mat_contents(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def mat_without_gtcls(path: Path) -> None:
    scipy.io.savemat(path, {"GTinst": {"Segmentation": np.zeros((18, 26), dtype=np.uint8)}})


def mat_without_segmentation(path: Path) -> None:
    scipy.io.savemat(path, {"GTcls": {"Boundaries": np.zeros(1, dtype=object)}})


@pytest.mark.parametrize("damage", [corrupt_mat_contents, truncated_mat_contents, mat_without_gtcls,
                                    mat_without_segmentation])
def test_a_bad_sbd_mat_is_named(tmp_path, damage):
    make_voc(tmp_path / "VOC2012", train=["a"], val=["b"])
    make_sbd(tmp_path / "VOC2012" / "benchmark_RELEASE", train=["c"], val=[])
    mat = tmp_path / "VOC2012" / "benchmark_RELEASE" / "dataset" / "cls" / "c.mat"
    damage(mat)
    source = pascal_source(tmp_path / "VOC2012", "train", "--use_sbd")
    with pytest.raises(UserError, match=f"^{re.escape(str(mat))}: "):
        source.load(1)
    with pytest.raises(UserError, match=f"^{re.escape(str(mat))}: "):
        source.check(NUM_CLASSES)


def test_an_rgb_mask_is_refused(tmp_path):
    voc = tmp_path / "VOC2012"
    masks = make_voc(voc, train=["a"], val=["b"])
    png = voc / "SegmentationClass" / "a.png"
    Image.fromarray(voc_palette(256)[masks["a"]]).save(png)  # the colours, not the indices
    with pytest.raises(UserError, match=f"^{re.escape(str(png))}: .*mode RGB"):
        pascal_source(voc, "train").load(0)


def test_an_unknown_label_value_is_named_by_the_check(tmp_path):
    voc = tmp_path / "VOC2012"
    masks = make_voc(voc, train=["a", "b"], val=["c"])
    png = voc / "SegmentationClass" / "b.png"
    bad = masks["b"].copy()
    bad[0, 0] = 30
    write_palette_png(png, bad)
    with pytest.raises(UserError, match=f"^{re.escape(str(png))} .*label values 30 are outside 0..20"):
        pascal_source(voc, "train").check(NUM_CLASSES)


def test_registered_with_the_voc_classes_and_paper_retrain_crop():
    info = get_dataset_info("pascal")
    assert info is pascal.INFO and pascal.CLASS_NAMES[15] == "person"
    assert info.num_classes == NUM_CLASSES and info.palette is voc_palette
    assert recipe("autodeeplab", "retrain", "pascal")["crop_size"] == 513
