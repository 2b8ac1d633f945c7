"""The DeepLabV3+ baseline through the same retrain, evaluation and inference scripts."""

import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import evaluate as evaluate_script
import export as export_script
import inference as inference_script
import train_new_model
from engine.checkpoint import load_checkpoint
from retrain import semantic as semantic_retrain
from utils.errors import UserError
from utils.torchvision_compat import import_torchvision

DATA = ["--synthetic_train_samples", "8", "--synthetic_val_samples", "2", "--synthetic_size", "36",
        "--batch_size", "2", "--crop_size", "32", "--epochs", "1"]
BASELINE = ["--model", "deeplabv3plus", "--backbone", "resnet50", "--output_stride", "16"]


@pytest.mark.slow
def test_baseline_trains_evaluates_and_segments(tmp_path):
    torch.manual_seed(3)
    resnet = import_torchvision().models.resnet50()
    torch.save(resnet.state_dict(), tmp_path / "resnet50.pth")
    run_dir = train_new_model.main(DATA + BASELINE + ["--backbone-weights", str(tmp_path / "resnet50.pth"),
                                                      "--lr", "0", "--out-dir", str(tmp_path / "run")])
    state = load_checkpoint(run_dir / "checkpoint.pth.tar", stage="retrain")
    assert state["args"]["model"] == "deeplabv3plus" and state["architecture"] is None
    assert not (run_dir / "architecture.json").exists()
    assert "DeepLabV3+ resnet50 at output stride 16" in (run_dir / "log.txt").read_text()
    # With a zero learning rate the convolutions are still the given backbone weights.
    assert torch.equal(state["model"]["backbone.conv1.weight"], resnet.state_dict()["conv1.weight"])
    assert torch.equal(state["model"]["backbone.layer4.2.conv3.weight"], resnet.state_dict()["layer4.2.conv3.weight"])

    out_dir = evaluate_script.main(["--ckpt", str(run_dir / "model_best.pth.tar"), "--flip"])
    assert json.loads((out_dir / "metrics.json").read_text())["dataset"] == "synthetic"
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "photos" / "a.png")
    inference_script.main(["--ckpt", str(run_dir / "model_best.pth.tar"), "--in-path", str(tmp_path / "photos"),
                           "--out-path", str(tmp_path / "out")])
    assert Image.open(tmp_path / "out" / "masks" / "a.png").size == (30, 20)
    export_script.main(["--ckpt", str(run_dir / "model_best.pth.tar"), "--format", "onnx", "--input-size", "32", "40"])
    metadata = {p.key: p.value for p in onnx.load(str(run_dir / "model_best.onnx")).metadata_props}
    assert (metadata["model"], metadata["backbone"], metadata["output_stride"]) == ("deeplabv3plus", "resnet50", "16")

    with pytest.raises(UserError, match="--backbone 'resnet101' \\(checkpoint has 'resnet50'\\)"):
        train_new_model.main(["--resume", str(run_dir / "checkpoint.pth.tar"), "--backbone", "resnet101"])


@pytest.mark.parametrize("extra, message", [
    (["--drop_path_prob", "0.1"], "--drop_path_prob: does not apply to --model deeplabv3plus; it applies to "
                                  "autodeeplab architectures"),
    (["--summary"], "--summary: does not apply to --model deeplabv3plus; it applies to autodeeplab architectures"),
])
def test_options_that_only_searched_networks_have(extra, message):
    with pytest.raises(UserError, match=message):
        semantic_retrain.parse_args(BASELINE + extra)


def test_bad_backbone_file_is_one_line(tmp_path):
    (tmp_path / "weights.pth").write_bytes(b"not a state dict")
    with pytest.raises(UserError, match="weights.pth"):
        train_new_model.main(DATA + BASELINE + ["--backbone-weights", str(tmp_path / "weights.pth"),
                                                "--out-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()
