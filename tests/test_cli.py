"""The three stage scripts as a user runs them: end to end, and one clear line for bad input."""

import json
import os
import time

import pytest

import decode_autodeeplab
import train_autodeeplab
from dataloaders import get_dataset_info
from engine.checkpoint import load_checkpoint
from modeling.autodeeplab.genotype import Architecture
from tests.conftest import run_script
from utils.errors import UserError

TINY_DATA = ["--synthetic-train-samples", "8", "--synthetic_val_samples", "2", "--synthetic_size", "52",
             "--batch-size", "2", "--crop_size", "48"]


@pytest.mark.slow
def test_search_decode_retrain_end_to_end(tmp_path, run_in_process):
    search_dir, retrain_dir = tmp_path / "search", tmp_path / "retrain"
    result = run_script("train_autodeeplab.py", *TINY_DATA, "--filter_multiplier", "2", "--epochs", "2",
                        "--alpha_epoch", "1", "--out-dir", str(search_dir))
    assert result.returncode == 0, result.stderr
    metrics = [json.loads(line) for line in (search_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1] and "arch_loss" in metrics[1] and "arch_loss" not in metrics[0]
    history = (search_dir / "architecture_history.jsonl").read_text().splitlines()
    assert len(history) == 2 and len(json.loads(history[1])["network_path"]) == 12
    for name in ("checkpoint.pth.tar", "model_best.pth.tar", "args.json", "versions.json", "log.txt",
                 "alphas.png", "betas.png", "search_curves.png"):
        assert (search_dir / name).is_file(), name
    assert list((search_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((search_dir / "args.json").read_text())["batch_size"] == 2

    result = run_in_process("decode_autodeeplab.py", "--dataset", "synthetic", "--resume",
                            str(search_dir / "checkpoint.pth.tar"))
    assert result.returncode == 0, result.stderr
    arch = Architecture.load(search_dir / "architecture.json")
    assert arch.num_layers == 12 and arch.filter_multiplier == 2
    assert arch.source["epoch"] == 1 and arch.source["checkpoint"].endswith("checkpoint.pth.tar")
    assert (search_dir / "architecture.png").is_file()
    assert str(list(arch.network_path)) in result.stdout

    result = run_in_process("train_new_model.py", *TINY_DATA, "--saved-arch-path", str(search_dir),
                            "--filter_multiplier", "4", "--epochs", "1", "--out-dir", str(retrain_dir))
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(retrain_dir / "checkpoint.pth.tar", stage="retrain")
    assert state["system"] == "autodeeplab" and state["architecture"]["system"] == "autodeeplab"
    assert state["architecture"]["genotype"]["network_path"] == list(arch.network_path)
    record = json.loads((retrain_dir / "metrics.jsonl").read_text())
    assert 0.0 <= record["val_miou"] <= 1.0
    assert len(record["val_per_class_iou"]) == get_dataset_info("synthetic").default_num_classes
    assert (retrain_dir / "retrain_curves.png").is_file() and (retrain_dir / "model_best.pth.tar").is_file()
    report = json.loads((retrain_dir / "report_val" / "metrics.json").read_text())
    assert report["miou"] == pytest.approx(record["val_miou"])  # one epoch: the best is the last
    assert (retrain_dir / "report_val" / "per_class.csv").is_file()

    result = run_in_process("evaluate.py", "--ckpt", str(retrain_dir / "model_best.pth.tar"), *TINY_DATA[:6], "--flip")
    assert result.returncode == 0, result.stderr
    assert (retrain_dir / "eval_val_flip" / "confusion_matrix.png").is_file() and "mIoU" in result.stdout
    result = run_in_process("inference.py", "--ckpt", str(retrain_dir / "model_best.pth.tar"), "--in-path",
                            str(retrain_dir / "report_val"), "--out-path", str(tmp_path / "predictions"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "predictions" / "masks" / "confusion_matrix.png").is_file()


def test_summary_prints_the_paper_parameter_count(run_in_process):
    result = run_in_process("train_new_model.py", "--filter_multiplier", "20", "--num_classes", "19", "--summary")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "10147427"


@pytest.mark.parametrize("script,args,expected", [
    ("train_autodeeplab.py", ["--resume", "no/such/checkpoint.pth.tar"], "no/such/checkpoint.pth.tar: checkpoint not found"),
    ("decode_autodeeplab.py", ["--resume", "no/such/checkpoint.pth.tar"], "no/such/checkpoint.pth.tar: checkpoint not found"),
    ("train_new_model.py", ["--resume", "missing.pth.tar"], "missing.pth.tar: checkpoint not found"),
    ("train_autodeeplab.py", ["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    ("train_new_model.py", ["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    ("train_autodeeplab.py", ["--synthetic_size", "40", "--crop_size", "64"],
     "--crop_size 64 is larger than the train images (40x40)"),
    ("train_autodeeplab.py", ["--batch_size", "1"], "--batch_size 1: training needs at least 2"),
    ("train_new_model.py", ["--saved_arch_path", "nowhere.json"], "nowhere.json: architecture file not found"),
    ("train_autodeeplab.py", ["--epochs", "zero"], "invalid positive_int value: 'zero'"),
    ("train_autodeeplab.py", ["--dataset", "cityscapes", "--data_root", "nowhere"],
     "cityscapes: data root nowhere (from --data_root) is not a folder; expected the layout"),
    ("evaluate.py", ["--ckpt", "missing.pth.tar"], "missing.pth.tar: checkpoint not found"),
    ("inference.py", ["--ckpt", "missing.pth.tar", "--in-path", ".", "--out-path", "out"], "holds no images"),
])
def test_bad_input_gives_one_clear_line(tmp_path, run_in_process, script, args, expected):
    result = run_in_process(script, *args, "--out-dir", str(tmp_path / "run"), cwd=tmp_path) \
        if script.startswith("train") else run_in_process(script, *args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0] and lines[0].startswith(f"{script}: error: ")
    assert not (tmp_path / "run").exists()  # a run that cannot start leaves no run directory behind


def test_search_with_no_arguments_takes_architecture_steps():
    args, resumed = train_autodeeplab.parse_args([])
    assert resumed is None and args.dataset == "synthetic"
    assert 0 < args.alpha_epoch < args.epochs  # otherwise α and β would never be trained
    assert train_autodeeplab.parse_args(["--alpha_epoch", "0"])[0].alpha_epoch == 0


def test_decode_without_resume_takes_the_newest_search_run(tmp_path):
    with pytest.raises(UserError, match="no search checkpoint given and none found"):
        decode_autodeeplab.find_latest_checkpoint("synthetic", root=str(tmp_path))
    search_old, search_new, retrain = (tmp_path / "synthetic" / name / "experiment_0"
                                       for name in ("old", "search", "retrain"))
    for run_dir in (search_old, search_new, retrain):
        run_dir.mkdir(parents=True)
        (run_dir / "checkpoint.pth.tar").write_bytes(b"")
    for run_dir in (search_old, search_new):
        (run_dir / "architecture_history.jsonl").write_text("")
    now = time.time()
    for age, run_dir in ((30, search_old), (20, search_new), (10, retrain)):  # the retrain run is newest
        os.utime(run_dir / "checkpoint.pth.tar", (now - age, now - age))
    found = decode_autodeeplab.find_latest_checkpoint("synthetic", root=str(tmp_path))
    assert found == search_new / "checkpoint.pth.tar"
    for system, age in (("nas-segm", 5), ("autopanoptic", 1)):  # every system's search runs are found
        run_dir = tmp_path / "synthetic" / system / "experiment_0"
        run_dir.mkdir(parents=True)
        (run_dir / "checkpoint.pth.tar").write_bytes(b"")
        (run_dir / "args.json").write_text(json.dumps({"system": system, "stage": "search"}))
        os.utime(run_dir / "checkpoint.pth.tar", (now - age, now - age))
        assert decode_autodeeplab.find_latest_checkpoint("synthetic", root=str(tmp_path)) == \
            run_dir / "checkpoint.pth.tar"


def test_partial_channels_that_do_not_divide_the_width_are_refused():
    with pytest.raises(UserError, match="^--partial_channels 3: must divide --filter_multiplier 8"):
        train_autodeeplab.parse_args(["--partial_channels", "3", "--filter_multiplier", "8"])
    assert train_autodeeplab.parse_args(["--partial_channels", "4", "--filter_multiplier", "8"])[0].partial_channels == 4
