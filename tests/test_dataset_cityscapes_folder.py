"""Cityscapes and the custom folder dataset, read from fixture trees in their on-disk formats."""

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from config_utils.search_args import search_parser
from dataloaders import check_split, get_dataset_info, resolve_num_classes, source_palette
from dataloaders.datasets.cityscapes import TRAIN_CLASSES, VOID_IDS
from dataloaders.datasets.folder import flat_split
from utils.errors import UserError


def save_png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def parse(dataset, root, *extra):
    args = search_parser().parse_args(["--dataset", dataset, "--data_root", str(root), *extra])
    args.num_classes = resolve_num_classes(args)
    return args


def random_image(rng, height, width):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------- cityscapes


def make_cityscapes(root, split, names, label_ids):
    rng = np.random.default_rng(0)
    for (city, frame), ids in zip(names, label_ids):
        save_png(root / "leftImg8bit" / split / city / f"{city}_{frame}_leftImg8bit.png",
                 random_image(rng, *ids.shape))
        save_png(root / "gtFine" / split / city / f"{city}_{frame}_gtFine_labelIds.png", ids, mode="L")
        # The archives also hold colour, instance and polygon files beside each label file.
        save_png(root / "gtFine" / split / city / f"{city}_{frame}_gtFine_color.png", random_image(rng, *ids.shape))


def expected_train_ids(label_ids):
    """The official mapping written out independently: id → position among the evaluated ids."""
    evaluated = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
    out = np.full(label_ids.shape, 255, dtype=np.uint8)
    for train_id, label_id in enumerate(evaluated):
        out[label_ids == label_id] = train_id
    return out


def test_cityscapes_maps_all_34_label_ids_pixel_by_pixel(tmp_path):
    every_id = np.array(list(range(34)) + [255] * 2, dtype=np.uint8).reshape(4, 9)
    other = np.random.default_rng(1).choice(np.array(list(range(34)) + [255], dtype=np.uint8), (6, 7))
    make_cityscapes(tmp_path, "train", [("aachen", "000000_000019"), ("bochum", "000001_000019")], [every_id, other])
    args = parse("cityscapes", tmp_path)
    source = get_dataset_info("cityscapes").make_source("train", args)
    assert len(source) == 2 and len(source.class_names) == 19 == args.num_classes
    for index, label_ids in enumerate([every_id, other]):
        image, mask = source.load(index)
        assert image.shape == (*label_ids.shape, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(mask, expected_train_ids(label_ids))
    source.check(19)
    assert [name for _, name, _ in TRAIN_CLASSES][:3] == ["road", "sidewalk", "building"]
    assert len(VOID_IDS) + len(TRAIN_CLASSES) == 35  # 34 ids plus license plate's -1
    palette = source_palette(get_dataset_info("cityscapes"), source, 19)
    np.testing.assert_array_equal(palette[0], [128, 64, 128])
    np.testing.assert_array_equal(palette[18], [119, 11, 32])


def test_cityscapes_unknown_label_id_names_the_file(tmp_path):
    make_cityscapes(tmp_path, "val", [("lindau", "000000_000019")], [np.array([[7, 40]], dtype=np.uint8)])
    source = get_dataset_info("cityscapes").make_source("val", parse("cityscapes", tmp_path))
    with pytest.raises(UserError, match=r"lindau_000000_000019_gtFine_labelIds\.png: label values 40 are not "
                                        r"cityscapes label ids"):
        source.check(19)


def test_cityscapes_image_without_label_is_named(tmp_path):
    make_cityscapes(tmp_path, "train", [("aachen", "000000_000019")], [np.zeros((2, 2), dtype=np.uint8)])
    save_png(tmp_path / "leftImg8bit" / "train" / "aachen" / "aachen_000009_000019_leftImg8bit.png",
             np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(UserError, match="1 image.*without a mask.*aachen_000009_000019_leftImg8bit"):
        get_dataset_info("cityscapes").make_source("train", parse("cityscapes", tmp_path))


def test_cityscapes_missing_folder_names_the_layout_and_the_origin(tmp_path, monkeypatch):
    (tmp_path / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match=r"data root .* \(from --data_root\) lacks gtFine/train; expected the "
                                        r"layout .*_gtFine_labelIds\.png"):
        get_dataset_info("cityscapes").make_source("train", parse("cityscapes", tmp_path))
    monkeypatch.setenv("AUTODEEPLAB_CITYSCAPES_ROOT", str(tmp_path / "nowhere"))
    args = search_parser().parse_args(["--dataset", "cityscapes"])
    with pytest.raises(UserError, match="nowhere \\(from AUTODEEPLAB_CITYSCAPES_ROOT\\) is not a folder"):
        get_dataset_info("cityscapes").make_source("train", args)


def test_mask_of_another_size_names_both_files(tmp_path):
    make_cityscapes(tmp_path, "val", [("lindau", "000000_000019")], [np.zeros((4, 4), dtype=np.uint8)])
    save_png(tmp_path / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png",
             np.zeros((4, 5, 3), dtype=np.uint8))
    source = get_dataset_info("cityscapes").make_source("val", parse("cityscapes", tmp_path))
    with pytest.raises(UserError, match=r"gtFine_labelIds\.png: mask is 4x4 but its image .*leftImg8bit\.png "
                                        r"is 4x5"):
        source.load(0)
    with pytest.raises(UserError, match="mask is 4x4"):
        source.check(19)


# ---------------------------------------------------------------- folder


def make_folder(root, flat=False, classes="background 0 0 0\ncat 255 0 0\ndog 0 0 255\n"):
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text(classes)
    rng = np.random.default_rng(2)
    masks = {}
    for split, stems in (("train", ["a", "b", "c"]), ("val", ["d"])):
        for stem in stems:
            mask = rng.choice(np.array([0, 1, 2, 255], dtype=np.uint8), (6, 8))
            sub = "" if flat else split
            image_path = root / "images" / sub / f"{stem}.jpg"
            image_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(random_image(rng, 6, 8)).save(image_path)
            palette_mask = Image.fromarray(mask, mode="P")
            palette_mask.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [255] * 759)
            (root / "masks" / sub).mkdir(parents=True, exist_ok=True)
            palette_mask.save(root / "masks" / sub / f"{stem}.png")
            masks[stem] = mask
        if flat:
            (root / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return masks


@pytest.mark.parametrize("flat", [False, True])
def test_folder_reads_both_layouts_pixel_by_pixel(tmp_path, flat):
    masks = make_folder(tmp_path, flat=flat)
    args = parse("folder", tmp_path)
    assert args.num_classes == 3
    info = get_dataset_info("folder")
    train, val = info.make_source("train", args), info.make_source("val", args)
    assert (len(train), len(val)) == (3, 1) and train.class_names == ("background", "cat", "dog")
    for index, stem in enumerate(["a", "b", "c"]):
        np.testing.assert_array_equal(train.load(index)[1], masks[stem])
    np.testing.assert_array_equal(val.load(0)[1], masks["d"])
    np.testing.assert_array_equal(source_palette(info, train, 3), [[0, 0, 0], [255, 0, 0], [0, 0, 255]])
    train.check(3)


def test_folder_class_file_fixes_the_class_count(tmp_path):
    make_folder(tmp_path, classes="# my classes\nbackground\n\nroad\n")
    with pytest.raises(UserError, match="--num_classes: dataset folder has exactly 2 classes here, got 5"):
        parse("folder", tmp_path, "--num_classes", "5")
    args = parse("folder", tmp_path)
    source = get_dataset_info("folder").make_source("train", args)
    assert source.class_names == ("background", "road")
    assert source_palette(get_dataset_info("folder"), source, 2).shape == (2, 3)  # VOC colours: none given
    with pytest.raises(UserError, match=r"a\.png \(mask of a\.jpg\): label values 2 are outside 0\.\.1"):
        check_split(source, "train", args)
    args.skip_data_check = True
    check_split(source, "train", args)  # the user asked not to read every mask


def test_folder_errors_name_the_file(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "masks" / "train" / "b.png").unlink()
    with pytest.raises(UserError, match=r"1 image\(s\) without a mask: .*b\.jpg"):
        get_dataset_info("folder").make_source("train", parse("folder", tmp_path))
    Image.fromarray(np.zeros((6, 8, 3), dtype=np.uint8)).save(tmp_path / "masks" / "train" / "b.png")
    source = get_dataset_info("folder").make_source("train", parse("folder", tmp_path))
    with pytest.raises(UserError, match=r"b\.png: a label image must hold one class index per pixel .* mode RGB"):
        source.load(1)
    (tmp_path / "images" / "train" / "c.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"c\.jpg: cannot read this image"):
        source.load(2)


def test_folder_missing_pieces(tmp_path):
    with pytest.raises(UserError, match="lacks classes.txt, images, masks; expected the layout"):
        get_dataset_info("folder").make_source("train", argparse.Namespace(data_root=str(tmp_path)))
    make_folder(tmp_path, flat=True)
    (tmp_path / "val.txt").write_text("d\nzz\n")
    with pytest.raises(UserError, match=r"val\.txt: 1 stem\(s\) without an image .*'zz'"):
        get_dataset_info("folder").make_source("val", parse("folder", tmp_path))
    (tmp_path / "classes.txt").write_text("only\n")
    with pytest.raises(UserError, match="needs at least 2"):
        parse("folder", tmp_path)


def test_empty_split_is_refused_before_training(tmp_path):
    make_folder(tmp_path, flat=True)
    (tmp_path / "val.txt").write_text("\n")
    args = parse("folder", tmp_path)
    source = get_dataset_info("folder").make_source("val", args)
    with pytest.raises(UserError, match="the val split of folder is empty"):
        check_split(source, "val", args)


# ---------------------------------------------------------------- flat folders split for you


def make_flat_folder(root, stems):
    """images/<stem>.png and masks/<stem>.png with no split lists or split folders, as users export them."""
    rng = np.random.default_rng(3)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\nthing\n")
    for stem in stems:
        Image.fromarray(random_image(rng, 36, 36)).save(root / "images" / f"{stem}.png")
        Image.fromarray(rng.integers(0, 2, (36, 36), dtype=np.uint8), mode="L").save(root / "masks" / f"{stem}.png")


def test_a_flat_folder_is_split_by_seed_with_every_image_in_exactly_one_split(tmp_path):
    stems = [f"img{i:02d}" for i in range(20)]
    make_flat_folder(tmp_path, stems)

    def split(*flags):
        args = parse("folder", tmp_path, *flags)
        train, val = (get_dataset_info("folder").make_source(name, args) for name in ("train", "val"))
        assert train.data_split == val.data_split
        return [p[0].stem for p in train.pairs], [p[0].stem for p in val.pairs]

    train, val = split()
    assert len(val) == 2 and sorted(train + val) == stems and not set(train) & set(val)  # 10% of 20
    assert split() == (train, val)  # the same seed, the same split
    assert split("--split_seed", "1")[1] != val
    assert len(split("--val_fraction", "0.25")[1]) == 5
    assert flat_split(["b", "a"], 0, 0.1, "x") == flat_split(["a", "b"], 0, 0.9, "x")  # one each, order-free
    with pytest.raises(UserError, match="there is no test split"):
        get_dataset_info("folder").make_source("test", parse("folder", tmp_path))
    with pytest.raises(UserError, match=r"holds 1 image\(s\); splitting into train and val needs at least 2"):
        flat_split(["a"], 0, 0.1, "folder: x")
    with pytest.raises(SystemExit):
        parse("folder", tmp_path, "--val_fraction", "1.5")


@pytest.mark.slow
def test_the_split_is_recorded_kept_on_resume_and_used_by_evaluate(tmp_path):
    import evaluate as evaluate_script
    import train_new_model
    from engine.checkpoint import load_checkpoint
    from tests.conftest import PreemptBeforeEpoch, Preempted

    make_flat_folder(tmp_path / "data", [f"img{i:02d}" for i in range(10)])
    flags = ["--dataset", "folder", "--data_root", str(tmp_path / "data"), "--batch_size", "2", "--crop_size", "32",
             "--filter_multiplier", "2", "--epochs", "2", "--val_fraction", "0.2"]
    with pytest.raises(Preempted):
        train_new_model.main(flags + ["--out-dir", str(tmp_path / "run")], hooks=[PreemptBeforeEpoch(1)])
    recorded = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(recorded["val"]) == 2
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pth.tar")["data_split"] == recorded

    (tmp_path / "data" / "images" / "img03.png").rename(tmp_path / "data" / "images" / "img99.png")
    (tmp_path / "data" / "masks" / "img03.png").rename(tmp_path / "data" / "masks" / "img99.png")
    with pytest.raises(UserError, match="the folder's images changed since the run split them"):
        train_new_model.main(["--resume", str(tmp_path / "run" / "checkpoint.pth.tar")])
    (tmp_path / "data" / "images" / "img99.png").rename(tmp_path / "data" / "images" / "img03.png")
    (tmp_path / "data" / "masks" / "img99.png").rename(tmp_path / "data" / "masks" / "img03.png")
    train_new_model.main(["--resume", str(tmp_path / "run" / "checkpoint.pth.tar")])

    report = evaluate_script.main(["--ckpt", str(tmp_path / "run" / "model_best.pth.tar")])
    assert json.loads((report / "metrics.json").read_text())["images"] == 2  # the recorded val images
    (tmp_path / "data" / "images" / "img00.png").unlink()
    with pytest.raises(UserError, match="changed since the run split them"):
        evaluate_script.main(["--ckpt", str(tmp_path / "run" / "model_best.pth.tar")])
