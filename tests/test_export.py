"""export.py: a self-contained ONNX file that onnxruntime runs like PyTorch at any batch size."""

import contextlib
import io
import json
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import export as export_script
from dataloaders.transforms import IMAGENET_MEAN, IMAGENET_STD
from engine.checkpoint import save_checkpoint
from modeling.autodeeplab.genotype import Architecture, paper_architecture
from modeling.autodeeplab.model_retrain import AutoDeepLab
from utils.errors import UserError

CLASS_NAMES = ["background", "cat", "dog"]
PALETTE = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
HEIGHT, WIDTH = 33, 47  # not multiples of the network's stride 32


def short_architecture() -> Architecture:
    """The paper's cell on a 7-layer path that still stays on a level, goes down to the coarsest and back up:
    every kind of cell the paper's 12-layer path has, at about half its export time."""
    paper = paper_architecture(4)
    return Architecture((0, 0, 1, 2, 3, 2, 1), paper.cell, 4, paper.block_multiplier)


def small_checkpoint(path, seed=0):
    """A retrain checkpoint with 3 classes at F = 4, as train_new_model.py writes it; returns its network."""
    torch.manual_seed(seed)
    arch = short_architecture()
    model = AutoDeepLab(arch, 3, 4)
    save_checkpoint({"stage": "retrain", "args": {"dataset": "folder", "num_classes": 3, "filter_multiplier": 4},
                     "architecture": arch.to_json_dict(), "model": model.state_dict(), "epoch": 3,
                     "classes": {"names": CLASS_NAMES, "palette": PALETTE}}, path)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export shared by the tests below (it takes several seconds): the ONNX path, the PyTorch network
    and what main printed."""
    folder = tmp_path_factory.mktemp("export")
    model = small_checkpoint(folder / "model_best.pth.tar")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        path = export_script.main(["--ckpt", str(folder / "model_best.pth.tar"), "--format", "onnx",
                                   "--input-size", str(HEIGHT), str(WIDTH)])
    return path, model, printed.getvalue()


@pytest.fixture(scope="module")
def session(exported):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(exported[0]), options, providers=["CPUExecutionProvider"])


@pytest.mark.slow
def test_export_writes_one_self_contained_file_beside_the_checkpoint(exported):
    path, _, printed = exported
    assert path == path.parent / "model_best.onnx"
    assert sorted(p.name for p in path.parent.iterdir()) == ["model_best.onnx", "model_best.pth.tar"]
    onnx.checker.check_model(onnx.load(path))
    assert "max difference" in printed
    assert str(path) in printed


@pytest.mark.slow
def test_the_batch_dimension_is_free_and_the_image_size_fixed(session):
    (image,), (logits,) = session.get_inputs(), session.get_outputs()
    assert (image.name, image.type, logits.name) == ("image", "tensor(float)", "logits")
    assert isinstance(image.shape[0], str)
    assert image.shape[1:] == [3, HEIGHT, WIDTH]


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_pytorch(exported, session, batch):
    model = exported[1]
    image = torch.randn(batch, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = model(image).numpy()
    (logits,) = session.run(["logits"], {"image": image.numpy()})
    assert logits.shape == (batch, len(CLASS_NAMES), HEIGHT, WIDTH)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_metadata_tells_how_to_preprocess_and_colour(exported):
    metadata = {prop.key: prop.value for prop in onnx.load(exported[0]).metadata_props}
    assert json.loads(metadata["class_names"]) == CLASS_NAMES
    assert json.loads(metadata["palette"]) == PALETTE
    assert json.loads(metadata["input_size"]) == [HEIGHT, WIDTH]
    assert json.loads(metadata["mean"]) == list(IMAGENET_MEAN)
    assert json.loads(metadata["std"]) == list(IMAGENET_STD)
    assert json.loads(metadata["architecture"]) == short_architecture().to_json_dict()
    assert metadata["filter_multiplier"] == "4"


@pytest.mark.slow
def test_the_check_against_pytorch_detects_different_weights(exported):
    path, model, _ = exported
    assert export_script.max_difference_to_pytorch(path, model, (HEIGHT, WIDTH)) <= 1e-4
    torch.manual_seed(1)
    other = AutoDeepLab(short_architecture(), 3, 4).eval()
    assert export_script.max_difference_to_pytorch(path, other, (HEIGHT, WIDTH)) > 1e-4


def test_default_output_name_drops_the_checkpoint_suffixes(tmp_path):
    assert export_script.default_output_path(tmp_path / "checkpoint.pth.tar") == tmp_path / "checkpoint.onnx"
    assert export_script.default_output_path(tmp_path / "net.pt") == tmp_path / "net.onnx"


def test_a_search_checkpoint_is_refused(tmp_path):
    save_checkpoint({"stage": "search", "args": {}}, tmp_path / "search.pth.tar")
    with pytest.raises(UserError, match="is a 'search' checkpoint"):
        export_script.main(["--ckpt", str(tmp_path / "search.pth.tar"), "--input-size", "32", "32"])
    assert list(tmp_path.iterdir()) == [tmp_path / "search.pth.tar"]


def test_a_missing_checkpoint_is_refused(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        export_script.main(["--ckpt", str(tmp_path / "none.pth.tar"), "--input-size", "32", "32"])


@pytest.mark.parametrize("size", [["0", "32"], ["32", "-4"], ["32"], ["32", "x"]])
def test_a_bad_input_size_is_rejected(tmp_path, size, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_script.main(["--ckpt", str(tmp_path / "model.pth.tar"), "--input-size", *size])
    assert exit_info.value.code == 2
    assert "--input-size" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [(["--opset", "17"], "opset 18 or newer"),
                                            (["--out", "."], "is a folder")])
def test_bad_output_options_are_refused(tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        export_script.main(["--ckpt", str(tmp_path / "model.pth.tar"), "--input-size", "32", "32", *flags])


def test_missing_export_packages_name_the_requirements_file(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError, match=r"onnxruntime is not installed.*pip install -r requirements-export\.txt"):
        export_script.main(["--ckpt", str(tmp_path / "model.pth.tar"), "--input-size", "32", "32"])
