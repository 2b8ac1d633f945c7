"""Runs that survive faults: SIGTERM/SIGINT write a mid-epoch checkpoint, SIGKILL loses at most an epoch,
and either way the resumed run ends with exactly the weights of an uninterrupted one."""

import functools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import engine.precision
from dataloaders import SeededSampler
from engine.checkpoint import load_checkpoint
from engine.interrupt import RunInterrupted
from tests.conftest import ROOT, STEPS_PER_EPOCH, SignalAtStep

FLOAT16 = ["--amp", "--amp_dtype", "fp16"]


def assert_same_final_state(full_dir, resumed_dir):
    a, b = load_checkpoint(full_dir / "checkpoint.pth.tar"), load_checkpoint(resumed_dir / "checkpoint.pth.tar")
    assert a["epoch"] == b["epoch"] and "partial_epoch" not in b
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key in ("weight_scaler", "arch_scaler", "scaler"):
        assert a.get(key) == b.get(key), key
    full_records = (full_dir / "metrics.jsonl").read_text().splitlines()
    resumed_records = (resumed_dir / "metrics.jsonl").read_text().splitlines()
    strip = lambda line: {k: v for k, v in json.loads(line).items() if k != "epoch_seconds"}  # noqa: E731
    assert [strip(line) for line in full_records] == [strip(line) for line in resumed_records]


def test_sampler_skip_continues_the_same_epoch():
    sampler = SeededSampler(range(10), seed=3, shuffle=True, num_replicas=2, rank=1)
    sampler.set_epoch(4)
    whole = list(sampler)
    sampler.set_epoch(4, skip=3)
    assert list(sampler) == whole[3:] and len(sampler) == len(whole) - 3
    sampler.set_epoch(5)
    assert len(sampler) == len(whole)
    with pytest.raises(ValueError, match="cannot skip 6 of the 5"):
        sampler.set_epoch(4, skip=6)


@pytest.mark.slow
@pytest.mark.parametrize("stage, extra, stop_at", [
    ("search", [], 5),  # epoch 1, step 2 of 3: weights and α/β steps, trainB partly drawn
    ("retrain", [], 10),  # epoch 1, step 4 of 6
    ("search", FLOAT16, 5),
], ids=["search", "retrain", "search-fp16"])
def test_sigterm_mid_epoch_checkpoint_resumes_exactly(tmp_path, monkeypatch, tiny_stage, stage, extra, stop_at):
    module, args = tiny_stage(stage)
    args += extra
    float16 = "--amp" in args
    if float16:
        # A loss scale that doubles after every good step overflows every few steps: which steps are skipped
        # depends on the scale, so only a resumed run that restores both scalers ends bit-identical.
        monkeypatch.setattr(engine.precision, "GradScaler", functools.partial(torch.amp.GradScaler, growth_interval=1))
    full = module.main(args + ["--out-dir", str(tmp_path / "full")])
    if float16:
        final = load_checkpoint(full / "checkpoint.pth.tar")
        # some of the 9 weight steps and of the 6 architecture steps were skipped
        assert final["weight_scaler"]["scale"] < 65536 * 2**9 and final["arch_scaler"]["scale"] < 65536 * 2**6

    with pytest.raises(RunInterrupted, match="stopped by SIGTERM after step") as stopped:
        module.main(args + ["--out-dir", str(tmp_path / "cut")], hooks=[SignalAtStep(stop_at)])
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored on the way out
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pth.tar")
    steps_per_epoch = STEPS_PER_EPOCH[stage]
    assert state["epoch"] == 0 and state["partial_epoch"]["epoch"] == 1
    assert state["partial_epoch"]["steps"] == stop_at - steps_per_epoch
    assert len(state["partial_epoch"]["values"]["train_loss"]) == stop_at - steps_per_epoch
    if stage == "search":  # every step of epoch 1 had an architecture step too
        assert len(state["partial_epoch"]["values"]["arch_loss"]) == stop_at - steps_per_epoch

    module.main(["--resume", str(tmp_path / "cut" / "checkpoint.pth.tar")])
    assert_same_final_state(full, tmp_path / "cut")
    assert "resumed at epoch 1, step" in (tmp_path / "cut" / "log.txt").read_text()


# ---------------------------------------------------------------- real signals to a real process

SLOW_RETRAIN = ["--synthetic_train_samples", "80", "--synthetic_val_samples", "2", "--synthetic_size", "40",
                "--batch_size", "2", "--crop_size", "32", "--filter_multiplier", "2", "--epochs", "2"]


def start(*args):
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train_new_model.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_first_epoch(run_dir, process, timeout=300):
    """Until epoch 0's checkpoint exists (it appears whole: written to a temporary name, then renamed)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if (run_dir / "checkpoint.pth.tar").is_file():
            return
        time.sleep(0.02)
    raise AssertionError(f"epoch 0 did not finish: {process.communicate()[1][-2000:]}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full") / "run"
    process = start(*SLOW_RETRAIN, "--out-dir", str(run_dir))
    assert process.wait(timeout=600) == 0, process.communicate()[1][-2000:]
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_process_resumes_to_identical_weights(tmp_path, uninterrupted, signum):
    run_dir = tmp_path / "run"
    process = start(*SLOW_RETRAIN, "--out-dir", str(run_dir))
    wait_for_first_epoch(run_dir, process)
    time.sleep(0.3)  # into epoch 1 (40 steps of a few tens of milliseconds)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
    state = load_checkpoint(run_dir / "checkpoint.pth.tar")
    if signum == signal.SIGTERM:
        assert process.returncode == 128 + signal.SIGTERM, stderr
        assert "train_new_model.py: stopped by SIGTERM after step" in stderr and "--resume" in stderr
        assert state["epoch"] == 0 and 0 < state["partial_epoch"]["steps"] < 40
    else:
        assert process.returncode == -signal.SIGKILL
        assert state["epoch"] == 0 and "partial_epoch" not in state  # the epoch-0 checkpoint survived intact
        assert (run_dir / "metrics.jsonl").read_text().count("\n") == 1  # killed before epoch 1 ended
    resumed = start("--resume", str(run_dir / "checkpoint.pth.tar"))
    assert resumed.wait(timeout=600) == 0, resumed.communicate()[1][-2000:]
    assert_same_final_state(uninterrupted, run_dir)
