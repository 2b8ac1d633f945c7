import argparse
import re

import pytest
import torch

from engine import checkpoint as ckpt
from engine.run_dir import new_run_dir
from utils.errors import UserError


def test_round_trip_keeps_tensors_and_plain_values(tmp_path):
    path = tmp_path / "checkpoint.pth.tar"
    state = {"stage": "search", "epoch": 3, "best_miou": 0.5, "args": {"seed": 1, "resize": None},
             "model": {"w": torch.arange(4.0)}, "split": {"a": [0, 2], "b": [1, 3]}}
    ckpt.save_checkpoint(state, path)
    loaded = ckpt.load_checkpoint(path, stage="search")
    assert loaded["epoch"] == 3 and loaded["args"] == state["args"] and loaded["split"] == state["split"]
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth.tar"
    ckpt.save_checkpoint({"stage": "search", "epoch": 1}, path)

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", dies_halfway)
    with pytest.raises(OSError):
        ckpt.save_checkpoint({"stage": "search", "epoch": 2}, path)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["epoch"] == 1
    assert list(tmp_path.iterdir()) == [path]


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth.tar"
    torch.save({"format": ckpt.CHECKPOINT_FORMAT, "stage": "search", "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UserError, match=re.escape(f"{path}: refused to load: the file holds pickled Python objects")):
        ckpt.load_checkpoint(path)


def test_truncated_missing_foreign_and_wrong_stage(tmp_path):
    good = tmp_path / "good.pth.tar"
    ckpt.save_checkpoint({"stage": "retrain", "epoch": 0, "model": {"w": torch.randn(100, 100)}}, good)
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        ckpt.load_checkpoint(truncated)
    with pytest.raises(UserError, match="checkpoint not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pth.tar")
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UserError, match="not an autodeeplab checkpoint"):
        ckpt.load_checkpoint(foreign)
    with pytest.raises(UserError, match="is a 'retrain' checkpoint, expected a 'search' one"):
        ckpt.load_checkpoint(good, stage="search")


def test_run_directories_are_numbered_past_ten_and_never_reused(tmp_path):
    for n in range(12):
        (tmp_path / "synthetic" / "search" / f"experiment_{n}").mkdir(parents=True)
    assert new_run_dir(None, "synthetic", "search", root=str(tmp_path)).name == "experiment_12"
    assert new_run_dir(None, "synthetic", "search", root=str(tmp_path)).name == "experiment_13"
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "log.txt").write_text("x")
    with pytest.raises(UserError, match="already exists and is not empty"):
        new_run_dir(str(taken), "synthetic", "search")


def test_weights_of_another_layout_are_one_readable_error():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    state = model.state_dict()
    ckpt.load_model_state(model, state, "run/checkpoint.pth.tar")  # its own state loads
    old_layout = {key.replace("0.", "edges.0."): value for key, value in state.items()}
    with pytest.raises(UserError, match=r"^--resume: the weights do not fit the network .*Missing key\(s\)"):
        ckpt.load_model_state(model, old_layout, "--resume")
    resized = dict(state, **{"0.weight": torch.zeros(5, 3, 3, 3)})
    with pytest.raises(UserError, match=r"^run/checkpoint.pth.tar: .*size mismatch for 0.weight"):
        ckpt.load_model_state(model, resized, "run/checkpoint.pth.tar")


def test_run_dir_names_every_artefact_and_finds_the_newest_run_of_a_system_and_stage(tmp_path):
    import json
    import os

    from engine.run_dir import RunDir

    run = RunDir(tmp_path / "x")
    assert (run.checkpoint.name, run.best.name, run.metrics.name, run.search_log.name, run.tensorboard.name) == (
        "checkpoint.pth.tar", "model_best.pth.tar", "metrics.jsonl", "architecture_history.jsonl", "tensorboard")
    assert run.curves("search").name == "search_curves.png" and run.report.name == "report_val"

    def make(name, info=None, search_log=False, age=0):
        path = tmp_path / "run" / "synthetic" / name
        path.mkdir(parents=True)
        (path / "checkpoint.pth.tar").write_bytes(b"PK")
        os.utime(path / "checkpoint.pth.tar", (1e9 - age, 1e9 - age))
        if info is not None:
            (path / "args.json").write_text(json.dumps(info))
        if search_log:
            (path / "architecture_history.jsonl").write_text("")
        return path

    old_search = make("search/experiment_0", search_log=True, age=30)  # written before args.json named it
    make("retrain/experiment_0", {"system": "autodeeplab", "stage": "retrain"}, age=5)
    new_search = make("search/experiment_1", {"system": "autodeeplab", "stage": "search"}, age=10)
    make("nas/experiment_0", {"system": "nas-segm", "stage": "search"}, age=0)
    root = tmp_path / "run"
    assert RunDir.latest(root, "synthetic", "autodeeplab", "search").path == new_search
    assert RunDir.latest(root, "synthetic", "nas-segm", "search").path.name == "experiment_0"
    assert RunDir.latest(root, "synthetic", None, "search").path.parent.name == "nas"  # the newest of any system
    (new_search / "checkpoint.pth.tar").unlink()
    assert RunDir.latest(root, "synthetic", "autodeeplab", "search").path == old_search
    assert RunDir.latest(root, "cityscapes", "autodeeplab", "search") is None
