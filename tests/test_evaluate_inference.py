"""Test-time prediction (multi-scale, flip), the evaluation report, evaluate.py and inference.py."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import evaluate as evaluate_script
import inference as inference_script
from dataloaders.transforms import image_to_input
from engine.checkpoint import save_checkpoint
from evaluation.metrics import ConfusionMatrix
from evaluation.semantic import evaluate, predict, semantic_table, write_semantic_report
from modeling.autodeeplab.genotype import paper_architecture
from modeling.autodeeplab.model_retrain import AutoDeepLab
from modeling.registry import load_trained_model
from utils.errors import UserError

CLASS_NAMES = ["background", "cat", "dog"]
PALETTE = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]


class ConstantLogits(nn.Module):
    """Logits that ignore the image: the same class scores at every pixel."""

    def __init__(self, scores):
        super().__init__()
        self.scores = torch.tensor(scores, dtype=torch.float32)

    def forward(self, x):
        return self.scores.reshape(1, -1, 1, 1).expand(x.shape[0], -1, *x.shape[-2:])


def tiny_checkpoint(path, data_root=None, seed=0):
    """A retrain checkpoint of a small paper network with 3 classes, as train_new_model.py writes it."""
    torch.manual_seed(seed)
    arch = paper_architecture(4)
    model = AutoDeepLab(arch, 3, 4)
    args = {"dataset": "folder", "data_root": str(data_root), "num_classes": 3, "filter_multiplier": 4,
            "skip_data_check": False}
    save_checkpoint({"stage": "retrain", "args": args, "architecture": arch.to_json_dict(),
                     "model": model.state_dict(), "epoch": 3, "classes": {"names": CLASS_NAMES, "palette": PALETTE}},
                    path)
    return model.eval()


def make_folder_dataset(root, sizes=((20, 28), (24, 16))):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"{name} {r} {g} {b}\n" for name, (r, g, b) in zip(CLASS_NAMES, PALETTE)))
    for split in ("train", "val"):
        for index, (height, width) in enumerate(sizes):
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
                root / "images" / split / f"{index}.png")
            Image.fromarray(rng.choice(np.array([0, 1, 2, 255], dtype=np.uint8), (height, width)), mode="L").save(
                root / "masks" / split / f"{index}.png")


# ---------------------------------------------------------------- predict


def test_flip_testing_makes_predictions_mirror_symmetric():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 3, padding=1)  # an asymmetric kernel: mirroring the input changes the output
    image = torch.randn(1, 3, 9, 11)
    plain = predict(model, image)
    assert not torch.allclose(predict(model, image.flip(-1)), plain.flip(-1), atol=1e-4)
    flipped = predict(model, image, flip=True)
    assert torch.allclose(predict(model, image.flip(-1), flip=True), flipped.flip(-1), atol=1e-6)
    expected = (plain + predict(model, image.flip(-1)).flip(-1)) / 2
    assert torch.allclose(flipped, expected, atol=1e-6)


def test_multi_scale_prediction_keeps_the_input_size_and_averages_probabilities():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 1)  # per pixel: a constant image gives the same answer at every scale
    constant = torch.full((2, 3, 7, 9), 0.3)
    expected = model(constant[:, :, :1, :1]).softmax(dim=1)
    result = predict(model, constant, scales=(0.5, 0.75, 1.75), flip=True)
    assert result.shape == (2, 4, 7, 9)
    assert torch.allclose(result, expected.expand_as(result), atol=1e-6)
    assert torch.allclose(result.sum(dim=1), torch.ones(2, 7, 9), atol=1e-6)


def test_evaluate_matches_hand_computed_scores():
    # Ground truth [[0, 1], [1, 255]] twice; the model says class 0 everywhere.
    mask = torch.tensor([[0, 1], [1, 255]])
    loader = [(torch.zeros(1, 3, 2, 2), mask[None])] * 2
    summary = evaluate(ConstantLogits([2.0, 0.0, 0.0]), loader, 3, torch.device("cpu"), keep_examples=1)
    assert summary["confusion_matrix"] == [[2, 0, 0], [4, 0, 0], [0, 0, 0]]
    assert summary["per_class_iou"][:2] == pytest.approx([1 / 3, 0.0]) and summary["per_class_iou"][2] is None
    assert summary["miou"] == pytest.approx(1 / 6)
    assert summary["pixel_accuracy"] == pytest.approx(1 / 3)
    assert summary["mean_class_accuracy"] == pytest.approx(0.5)
    assert summary["fw_iou"] == pytest.approx(1 / 3 * 1 / 3)
    p_class0 = math.exp(2) / (math.exp(2) + 2)
    p_other = 1 / (math.exp(2) + 2)
    assert summary["loss"] == pytest.approx(-(math.log(p_class0) + 2 * math.log(p_other)) / 3, rel=1e-5)
    (image, kept_mask, prediction), = summary["examples"]
    assert torch.equal(kept_mask, mask) and torch.equal(prediction, torch.zeros(2, 2, dtype=torch.int64))


@pytest.mark.parametrize("scales, flip", [((1.0,), False), ((0.5, 1.0), True)])
def test_evaluate_without_the_loss_counts_the_same_predictions(scales, flip):
    """``loss=False`` (the decoder search's reward, the supernet's estimates) skips the loss and, for one pass, the
    softmax: the same confusion matrix as the full evaluation, on a network whose logits come out at half the
    input size (so they are resized first), and no loss in the summary."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 1))
    generator = torch.Generator().manual_seed(2)
    loader = [(torch.randn(2, 3, 10, 14, generator=generator), torch.randint(0, 4, (2, 10, 14), generator=generator))
              for _ in range(3)]
    full = evaluate(model, loader, 4, torch.device("cpu"), scales=scales, flip=flip)
    light = evaluate(model, loader, 4, torch.device("cpu"), scales=scales, flip=flip, loss=False)
    assert light["confusion_matrix"] == full["confusion_matrix"] and light["miou"] == full["miou"]
    assert sum(map(sum, light["confusion_matrix"])) == 3 * 2 * 10 * 14
    assert "loss" in full and "loss" not in light


def test_report_files_hold_the_hand_computed_values(tmp_path):
    counts = [[6, 2, 0], [1, 3, 0], [0, 0, 0]]  # class 2 never appears
    matrix = ConfusionMatrix.from_counts(counts)
    summary = matrix.summary() | {"loss": 0.5, "confusion_matrix": counts}
    table = write_semantic_report(summary, CLASS_NAMES, tmp_path / "report", {"split": "val"})
    rows = list(csv.DictReader(open(tmp_path / "report" / "per_class.csv")))
    assert [row["class"] for row in rows] == CLASS_NAMES
    assert float(rows[0]["iou"]) == pytest.approx(6 / 9) and float(rows[1]["iou"]) == pytest.approx(3 / 6)
    assert float(rows[0]["accuracy"]) == pytest.approx(6 / 8) and float(rows[1]["accuracy"]) == pytest.approx(3 / 4)
    assert rows[2]["iou"] == "" and rows[2]["accuracy"] == ""
    assert [int(row["ground_truth_pixels"]) for row in rows] == [8, 4, 0]
    assert [int(row["predicted_pixels"]) for row in rows] == [7, 5, 0]
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["class_names"] == CLASS_NAMES
    assert metrics["miou"] == pytest.approx((6 / 9 + 3 / 6) / 2)
    assert metrics["fw_iou"] == pytest.approx(8 / 12 * 6 / 9 + 4 / 12 * 3 / 6)
    assert (tmp_path / "report" / "confusion_matrix.png").stat().st_size > 1000
    assert table == semantic_table(summary, CLASS_NAMES)
    assert "cat" in table and "66.67" in table and "58.33" in table  # IoU of background, mIoU


# ---------------------------------------------------------------- evaluate.py


def direct_scores(model, root, split="val"):
    """mIoU computed without the script: the model on every image, argmax, one confusion matrix."""
    matrix = ConfusionMatrix(3)
    for image_path in sorted((root / "images" / split).iterdir()):
        image = np.asarray(Image.open(image_path).convert("RGB"))
        mask = np.asarray(Image.open(root / "masks" / split / image_path.name))
        with torch.no_grad():
            prediction = model(image_to_input(image)[None]).argmax(dim=1)[0]
        matrix.update(prediction, torch.from_numpy(mask.astype(np.int64)))
    return matrix.summary()


def test_evaluate_script_reports_what_the_model_predicts(tmp_path, capsys):
    make_folder_dataset(tmp_path / "data")
    model = tiny_checkpoint(tmp_path / "run" / "model_best.pth.tar", tmp_path / "data")
    out_dir = evaluate_script.main(["--ckpt", str(tmp_path / "run" / "model_best.pth.tar"), "--device", "cpu"])
    assert out_dir == (tmp_path / "run" / "eval_val").resolve()
    metrics = json.loads((out_dir / "metrics.json").read_text())
    expected = direct_scores(model, tmp_path / "data")
    assert metrics["miou"] == pytest.approx(expected["miou"], abs=1e-9)
    assert metrics["per_class_iou"] == pytest.approx(expected["per_class_iou"], abs=1e-9)
    assert metrics["images"] == 2 and metrics["epoch"] == 3 and metrics["dataset"] == "folder"
    assert (out_dir / "per_class.csv").is_file() and (out_dir / "confusion_matrix.png").is_file()
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "dog" in printed and str(out_dir) in printed

    ms_dir = evaluate_script.main(["--ckpt", str(tmp_path / "run" / "model_best.pth.tar"), "--eval-scales", "0.75",
                                   "1.25", "--flip"])
    assert ms_dir.name == "eval_val_ms_flip"
    ms_metrics = json.loads((ms_dir / "metrics.json").read_text())
    assert ms_metrics["eval_scales"] == [0.75, 1.25] and ms_metrics["flip"] is True
    assert sum(map(sum, ms_metrics["confusion_matrix"])) == sum(map(sum, metrics["confusion_matrix"]))


def test_evaluate_resize_shrinks_the_input_only_and_scores_at_the_labels_own_size(tmp_path):
    """Scores stay comparable with the official evaluations: every labelled pixel of the full-size masks counts."""
    make_folder_dataset(tmp_path / "data", sizes=((40, 56), (48, 32)))
    model = tiny_checkpoint(tmp_path / "run" / "model_best.pth.tar", tmp_path / "data")
    out_dir = evaluate_script.main(["--ckpt", str(tmp_path / "run" / "model_best.pth.tar"), "--resize", "20",
                                    "--out-dir", str(tmp_path / "small")])
    metrics = json.loads((out_dir / "metrics.json").read_text())
    masks = [np.array(Image.open(tmp_path / "data" / "masks" / "val" / f"{i}.png")) for i in range(2)]
    assert sum(map(sum, metrics["confusion_matrix"])) == sum(int((mask != 255).sum()) for mask in masks)
    assert metrics["resize"] == 20
    # and exactly what predicting on the resized image, then bilinearly back at each label's size, gives
    matrix = ConfusionMatrix(3)
    with torch.no_grad():
        for index, mask in enumerate(masks):
            image = image_to_input(np.array(Image.open(tmp_path / "data" / "images" / "val" / f"{index}.png")))[None]
            factor = 20 / min(mask.shape)
            small = torch.nn.functional.interpolate(image, size=(round(mask.shape[0] * factor),
                                                                 round(mask.shape[1] * factor)), mode="bilinear")
            logits = torch.nn.functional.interpolate(model(small), size=mask.shape, mode="bilinear")
            matrix.update(logits.argmax(1), torch.from_numpy(mask.astype(np.int64))[None])
    assert metrics["miou"] == pytest.approx(matrix.summary()["miou"], abs=1e-9)


@pytest.mark.parametrize("extra, message", [
    (["--dataset", "synthetic", "--num_classes", "5"], "--dataset synthetic: has 5 classes, but .* predicts 3"),
    (["--split", "bogus"], "--split bogus: dataset folder has the splits train, val, test"),
])
def test_evaluate_script_bad_input(tmp_path, extra, message):
    make_folder_dataset(tmp_path / "data")
    tiny_checkpoint(tmp_path / "model.pth.tar", tmp_path / "data")
    with pytest.raises(UserError, match=message):
        evaluate_script.main(["--ckpt", str(tmp_path / "model.pth.tar"), *extra])


def test_a_search_checkpoint_is_refused(tmp_path):
    save_checkpoint({"stage": "search", "args": {}}, tmp_path / "search.pth.tar")
    with pytest.raises(UserError, match="is a 'search' checkpoint, expected a 'retrain' one"):
        load_trained_model(tmp_path / "search.pth.tar")


def test_a_picture_given_as_checkpoint_is_called_what_it_is(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "cat.png")
    with pytest.raises(UserError, match=r"cat.png: is not a checkpoint \(a PNG image\); expected a checkpoint.pth.tar"):
        evaluate_script.main(["--ckpt", str(tmp_path / "cat.png")])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match=r"notes.txt: is not a checkpoint \(not a PyTorch file\)"):
        load_trained_model(tmp_path / "notes.txt")


# ---------------------------------------------------------------- inference.py


def test_inference_writes_palette_masks_and_overlays(tmp_path, capsys):
    model = tiny_checkpoint(tmp_path / "model.pth.tar")
    rng = np.random.default_rng(1)
    photos = {"a.jpg": (30, 22), "sub/b.png": (17, 25), "sub/deeper/c.bmp": (16, 16)}
    for name, (height, width) in photos.items():
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(tmp_path / "in" / name)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    inference_script.main(["--ckpt", str(tmp_path / "model.pth.tar"), "--in-path", str(tmp_path / "in"),
                           "--out-path", str(tmp_path / "out")])
    for name, (height, width) in photos.items():
        stem = name.rsplit(".", 1)[0]
        mask_image = Image.open(tmp_path / "out" / "masks" / f"{stem}.png")
        assert mask_image.mode == "P" and mask_image.size == (width, height)
        assert mask_image.getpalette()[:9] == sum(PALETTE, [])
        image = np.asarray(Image.open(tmp_path / "in" / name).convert("RGB"))
        with torch.no_grad():
            expected = model(image_to_input(image)[None]).argmax(dim=1)[0].numpy()
        np.testing.assert_array_equal(np.asarray(mask_image), expected)
        assert Image.open(tmp_path / "out" / "overlays" / f"{stem}.jpg").size == (width, height)
    assert not list((tmp_path / "out").rglob("notes*"))
    assert "segmented 3 image(s)" in capsys.readouterr().out


def test_inference_resize_still_writes_masks_at_the_input_size(tmp_path):
    tiny_checkpoint(tmp_path / "model.pth.tar")
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8)).save(tmp_path / "in" / "x.png")
    inference_script.main(["--ckpt", str(tmp_path / "model.pth.tar"), "--in-path", str(tmp_path / "in" / "x.png"),
                           "--out-path", str(tmp_path / "out"), "--resize", "20", "--flip"])
    assert Image.open(tmp_path / "out" / "masks" / "x.png").size == (60, 40)


def test_inference_bad_input(tmp_path):
    tiny_checkpoint(tmp_path / "model.pth.tar")
    base = ["--ckpt", str(tmp_path / "model.pth.tar"), "--out-path", str(tmp_path / "out")]
    with pytest.raises(UserError, match="--in-path .*nowhere: no such file or folder"):
        inference_script.main(base + ["--in-path", str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        inference_script.main(base + ["--in-path", str(tmp_path / "empty")])
    (tmp_path / "twins").mkdir()
    for name in ("p.jpg", "p.png"):
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "twins" / name)
    with pytest.raises(UserError, match="p.jpg and p.png would write the same mask"):
        inference_script.main(base + ["--in-path", str(tmp_path / "twins")])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(UserError, match="bad.png: cannot read this image"):
        inference_script.main(base + ["--in-path", str(tmp_path / "broken")])


# ---------------------------------------------------------------- prediction files: evaluate.py --pred-dir


def test_index_png_predictions_score_as_the_checkpoint_does_in_process(tmp_path, capsys):
    make_folder_dataset(tmp_path / "data")
    tiny_checkpoint(tmp_path / "model.pth.tar", tmp_path / "data")
    in_process = evaluate_script.main(["--ckpt", str(tmp_path / "model.pth.tar"), "--out-dir", str(tmp_path / "a")])
    inference_script.main(["--ckpt", str(tmp_path / "model.pth.tar"), "--in-path",
                           str(tmp_path / "data" / "images" / "val"), "--out-path", str(tmp_path / "out")])
    scored = evaluate_script.main(["--dataset", "folder", "--data_root", str(tmp_path / "data"), "--pred-dir",
                                   str(tmp_path / "out" / "masks")])
    assert scored == tmp_path / "out" / "eval_val"
    expected, metrics = (json.loads((folder / "metrics.json").read_text()) for folder in (in_process, scored))
    assert metrics["confusion_matrix"] == expected["confusion_matrix"] and metrics["miou"] == expected["miou"]
    assert metrics["class_names"] == CLASS_NAMES and (scored / "per_class.csv").is_file()
    assert "mIoU" in capsys.readouterr().out


def test_bad_index_png_predictions_are_one_line_naming_the_file(tmp_path):
    make_folder_dataset(tmp_path / "data")
    masks = tmp_path / "pred"
    masks.mkdir()
    for index, (height, width) in enumerate(((20, 28), (24, 16))):
        Image.fromarray(np.zeros((height, width), dtype=np.uint8), mode="L").save(masks / f"{index}.png")
    score = ["--dataset", "folder", "--data_root", str(tmp_path / "data"), "--pred-dir", str(masks)]
    evaluate_script.main(score)
    Image.fromarray(np.full((24, 16), 3, dtype=np.uint8), mode="L").save(masks / "1.png")
    with pytest.raises(UserError, match=r"pred/1\.png: values 3 are not classes of folder \(0\.\.2\)"):
        evaluate_script.main(score)
    Image.fromarray(np.zeros((24, 17), dtype=np.uint8), mode="L").save(masks / "1.png")
    with pytest.raises(UserError, match=r"pred/1\.png: prediction is 24x17 but the labels of 1\.png are 24x16"):
        evaluate_script.main(score)
    (masks / "1.png").unlink()
    with pytest.raises(UserError, match=r"--pred-dir .*pred: no prediction 1\.png for .*images/val/1\.png"):
        evaluate_script.main(score)
    with pytest.raises(UserError, match="--ckpt: required"):
        evaluate_script.main(["--dataset", "folder", "--data_root", str(tmp_path / "data")])


PANOPTIC_CATEGORIES = [{"id": 1, "name": "person", "isthing": 1}, {"id": 40, "name": "sky", "isthing": 0},
                       {"id": 50, "name": "grass", "isthing": 0}]


def make_coco_panoptic(root, count=2, height=40, width=56):
    """A COCO-panoptic dataset (official layout, both splits): mostly sky, over a strip of grass, with a person;
    ids needing two colour channels, image ids that are not positions."""
    from dataloaders.panoptic import segments_info
    from evaluation.panoptic_quality import id_to_rgb

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "annotations" / f"panoptic_{split}2017").mkdir(parents=True, exist_ok=True)
        (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image_id = 139 + 1000 * index
            ids = np.full((height, width), 300 + index, dtype=np.int32)  # sky
            ids[height - 6:] = 70_000  # grass
            ids[5:15, 10 + index:20] = 2 + index  # a person
            ids[0, :] = 0  # void
            labels = {300 + index: (40, 0), 70_000: (50, 0), 2 + index: (1, 0)}
            name = f"{image_id:012d}"
            Image.fromarray(id_to_rgb(ids)).save(root / "annotations" / f"panoptic_{split}2017" / f"{name}.png")
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
                root / f"{split}2017" / f"{name}.jpg")
            images.append({"id": image_id, "file_name": f"{name}.jpg", "height": height, "width": width})
            annotations.append({"image_id": image_id, "file_name": f"{name}.png",
                                "segments_info": segments_info(ids, labels)})
        (root / "annotations" / f"panoptic_{split}2017.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": PANOPTIC_CATEGORIES}))


def panoptic_checkpoint(path, data_root):
    """A small retrained Auto-Panoptic network whose semantic branch says 'sky' everywhere and whose box head detects
    nothing (so no random detection covers the sky, whatever the initial weights), as train_new_model.py saves it."""
    from modeling.architecture_file import architecture_to_json
    from modeling.autopanoptic.genotype import PanopticGenotype, layer_choices
    from modeling.autopanoptic.network import build

    repeats = (2, 2, 4, 2)
    genotype = PanopticGenotype.from_path([choice - 1 for choice in layer_choices(repeats)], repeats)
    args = {"model": "autopanoptic", "dataset": "coco_panoptic", "data_root": str(data_root), "num_classes": None,
            "thing_classes": 1, "stuff_classes": 2, "widths": [16, 32, 64, 128, 256], "stage_repeats": list(repeats),
            "fpn_channels": 32, "subnet_channels": 32, "rpn_pre_nms_train": 50, "rpn_post_nms_train": 50,
            "rpn_pre_nms_test": 50, "rpn_post_nms_test": 50, "rois_per_image": 32, "detections_per_image": 10,
            "min_size": 32, "max_size": 64, "stuff_area_limit": 16}
    torch.manual_seed(0)
    model = build(args, genotype, None)
    with torch.no_grad():
        model.semantic_score.bias.copy_(torch.tensor([0.0, 50.0, 0.0]))  # label 1: sky
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([50.0, 0.0]))  # no thing detected
    save_checkpoint({"system": "autopanoptic", "stage": "retrain", "args": args, "categories": PANOPTIC_CATEGORIES,
                     "architecture": architecture_to_json(genotype), "model": model.state_dict(), "epoch": 1},
                    path)


@pytest.fixture(scope="module")
def panoptic_predictions(tmp_path_factory):
    """A COCO-panoptic dataset, a checkpoint, its in-process evaluation and its predictions of the val split."""
    root = tmp_path_factory.mktemp("panoptic")
    make_coco_panoptic(root / "coco")
    panoptic_checkpoint(root / "run" / "model_best.pth.tar", root / "coco")
    in_process = evaluate_script.main(["--ckpt", str(root / "run" / "model_best.pth.tar")])
    out = inference_script.main(["--ckpt", str(root / "run" / "model_best.pth.tar"), "--split", "val",
                                 "--out-path", str(root / "predicted")])
    return root, json.loads((in_process / "metrics.json").read_text()), out


def test_inference_on_a_split_names_each_prediction_as_the_ground_truth_does(panoptic_predictions):
    root, _, out = panoptic_predictions
    ground_truth = json.loads((root / "coco" / "annotations" / "panoptic_val2017.json").read_text())
    written = json.loads((out / "panoptic.json").read_text())
    assert [(a["image_id"], a["file_name"]) for a in written["annotations"]] == [
        (a["image_id"], a["file_name"]) for a in ground_truth["annotations"]] == [
        (139, "000000000139.png"), (1139, "000000001139.png")]
    for annotation in written["annotations"]:
        ids = np.asarray(Image.open(out / "panoptic" / annotation["file_name"]))
        assert ids.shape == (40, 56, 3) and (out / "overlays" / annotation["file_name"]).with_suffix(".jpg").is_file()
    photos = inference_script.main(["--ckpt", str(root / "run" / "model_best.pth.tar"), "--in-path",
                                    str(root / "coco" / "val2017"), "--out-path", str(root / "photos")])
    from_photos = json.loads((photos / "panoptic.json").read_text())["annotations"]
    assert [(a["image_id"], a["file_name"]) for a in from_photos] == [("000000000139", "000000000139.png"),
                                                                       ("000000001139", "000000001139.png")]
    for ours, theirs in zip(written["annotations"], from_photos):  # the same pixels either way
        assert ours["segments_info"] == theirs["segments_info"]
        assert np.array_equal(np.asarray(Image.open(out / "panoptic" / ours["file_name"])),
                              np.asarray(Image.open(photos / "panoptic" / theirs["file_name"])))


def test_panoptic_predictions_score_exactly_as_the_checkpoint_scores_in_process(panoptic_predictions, capsys):
    root, in_process, out = panoptic_predictions
    scored = evaluate_script.main(["--dataset", "coco_panoptic", "--data_root", str(root / "coco"), "--pred-json",
                                   str(out / "panoptic.json"), "--pred-dir", str(out / "panoptic")])
    metrics = json.loads((scored / "metrics.json").read_text())
    assert in_process["pq"] > 0 and in_process["panoptic"]["per_class"]["40"]["tp"] == 2  # the sky is found
    for key in ("pq", "sq", "rq", "pq_things", "pq_stuff", "panoptic"):
        assert metrics[key] == in_process[key], key
    printed = capsys.readouterr().out
    assert "sky" in printed and "PQ" in printed and "semantic mIoU" not in printed
    assert evaluate_script.main(["--dataset", "coco_panoptic", "--data_root", str(root / "coco"), "--pred-dir",
                                 str(out / "panoptic"), "--out-dir", str(root / "again")])  # <pred-dir>.json


def test_a_ground_truth_area_other_than_its_png_is_used_and_said(panoptic_predictions, tmp_path, capsys):
    import shutil

    root, in_process, out = panoptic_predictions
    shutil.copytree(root / "coco", tmp_path / "coco")
    path = tmp_path / "coco" / "annotations" / "panoptic_val2017.json"
    content = json.loads(path.read_text())
    sky = next(s for s in content["annotations"][0]["segments_info"] if s["category_id"] == 40)
    pixels, sky["area"] = sky["area"], sky["area"] + 400  # a bigger union: a smaller IoU for the sky
    path.write_text(json.dumps(content))
    scored = evaluate_script.main(["--dataset", "coco_panoptic", "--data_root", str(tmp_path / "coco"),
                                   "--pred-dir", str(out / "panoptic"), "--out-dir", str(tmp_path / "report")])
    metrics = json.loads((scored / "metrics.json").read_text())
    assert metrics["gt_area_mismatches"] == 1 and metrics["panoptic"]["per_class"]["40"]["pq"] < \
        in_process["panoptic"]["per_class"]["40"]["pq"]
    assert (f"segment {sky['id']}: JSON {pixels + 400}, PNG {pixels}); PQ used the JSON area in the IoU's union, "
            "as panopticapi's pq_compute does") in capsys.readouterr().out


def test_bad_panoptic_predictions_are_one_line_naming_the_file(panoptic_predictions, tmp_path):
    import shutil

    root, _, out = panoptic_predictions
    shutil.copytree(out, tmp_path / "out")
    pred_json, pred_dir = tmp_path / "out" / "panoptic.json", tmp_path / "out" / "panoptic"
    score = ["--dataset", "coco_panoptic", "--data_root", str(root / "coco"), "--pred-json", str(pred_json),
             "--pred-dir", str(pred_dir)]
    content = json.loads(pred_json.read_text())
    first = content["annotations"][0]
    pred_json.write_text(json.dumps({**content, "annotations": content["annotations"][1:]}))
    with pytest.raises(UserError, match=r"panoptic\.json: no prediction for the image with id 139 \("):
        evaluate_script.main(score)
    listed = {**first, "segments_info": first["segments_info"][1:]}
    pred_json.write_text(json.dumps({**content, "annotations": [listed] + content["annotations"][1:]}))
    with pytest.raises(UserError, match=rf"000000000139\.png \(image id 139\): prediction segment ids "
                                        rf"\[{first['segments_info'][0]['id']}\] are in the id map but not in the "
                                        "segment list"):
        evaluate_script.main(score)
    pred_json.write_text(json.dumps(content))
    Image.fromarray(np.zeros((40, 57, 3), dtype=np.uint8)).save(pred_dir / "000000001139.png")
    with pytest.raises(UserError, match=r"000000001139\.png \(image id 1139\): the ground truth is \(40, 56\) but the "
                                        r"prediction is \(40, 57\)"):
        evaluate_script.main(score)
    (pred_dir / "000000001139.png").unlink()
    with pytest.raises(UserError, match=r"000000001139\.png: panoptic PNG missing"):
        evaluate_script.main(score)
