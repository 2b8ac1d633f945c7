"""A run stopped after its epoch-0 checkpoint and resumed ends exactly where an uninterrupted run ends."""

import json

import pytest
import torch

import train_autodeeplab
from engine.checkpoint import load_checkpoint
from tests.conftest import TINY_SEARCH, PreemptBeforeEpoch, Preempted
from utils.errors import UserError


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["search", "retrain"])
def test_resumed_run_matches_uninterrupted_run(tmp_path, tiny_stage, stage):
    module, args = tiny_stage(stage)
    full = module.main(args + ["--out-dir", str(tmp_path / "full")])

    with pytest.raises(Preempted):
        module.main(args + ["--out-dir", str(tmp_path / "cut")], hooks=[PreemptBeforeEpoch(1)])
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pth.tar")["epoch"] == 0
    assert load_checkpoint(tmp_path / "cut" / "model_best.pth.tar")["epoch"] == 0  # written before the checkpoint
    module.main(["--resume", str(tmp_path / "cut" / "checkpoint.pth.tar")])  # the run's own flags

    a = load_checkpoint(full / "checkpoint.pth.tar")
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pth.tar")
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    optimizer_keys = [k for k in a if k.endswith("optimizer")]
    assert optimizer_keys
    for key in optimizer_keys:
        for pid, state in a[key]["state"].items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(b[key]["state"][pid][name]))
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]


@pytest.mark.slow
def test_search_split_is_saved_disjoint_and_kept_on_resume(tmp_path):
    with pytest.raises(Preempted):
        train_autodeeplab.main(TINY_SEARCH + ["--out-dir", str(tmp_path / "run"), "--seed", "7"],
                               hooks=[PreemptBeforeEpoch(1)])
    checkpoint = tmp_path / "run" / "checkpoint.pth.tar"
    split = load_checkpoint(checkpoint)["split"]
    assert not set(split["a"]) & set(split["b"]) and sorted(split["a"] + split["b"]) == list(range(12))
    with pytest.raises(UserError, match=r"--seed 8 \(checkpoint has 7\)"):
        train_autodeeplab.main(TINY_SEARCH + ["--resume", str(checkpoint), "--seed", "8"])
    train_autodeeplab.main(TINY_SEARCH + ["--resume", str(checkpoint), "--workers", "1"])
    assert load_checkpoint(checkpoint)["split"] == split
    assert load_checkpoint(checkpoint)["args"]["seed"] == 7
