"""What the scripts do when things go wrong: an output they cannot write is refused before any work, a run directory
serves one process at a time, writes cut short by a killed process leave no temporaries behind, and --resume takes
a run directory."""

import fcntl
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import decode_autodeeplab
import evaluate as evaluate_script
import export as export_script
import inference as inference_script
import train_autodeeplab
import train_autopanoptic
import train_nas_segm
import train_new_model
from tests.conftest import TINY_SEARCH, PreemptBeforeEpoch, Preempted
from tests.test_cli import run
from utils.atomic import remove_stale_temporaries
from utils.errors import UserError
from utils.run_dir import RunDir, new_run_dir, read_jsonl
from utils.trainer import Hook

ROOT = Path(__file__).resolve().parents[1]
TWO_EPOCHS = ["--epochs", "2"]  # the last flag wins over the tiny arguments' 3


def not_reached(*args, **kwargs):
    raise AssertionError("the work started before the output was checked")


# ---------------------------------------------------------------- outputs that cannot be written

# script, its arguments with OUT for the output, the output's flag, and what starts the work (it must never run)
WRITERS = [
    (train_autodeeplab, ["--out-dir", "OUT"], "--out-dir", "run_search"),
    (train_nas_segm, ["--out-dir", "OUT"], "--out-dir", "run_search"),
    (train_autopanoptic, ["--out-dir", "OUT"], "--out-dir", "run_search"),
    (train_new_model, ["--out-dir", "OUT"], "--out-dir", "run_in_process_group"),
    (decode_autodeeplab, ["--resume", "search.pth.tar", "--out-dir", "OUT"], "--out-dir", "decode_checkpoint"),
    (evaluate_script, ["--ckpt", "model_best.pth.tar", "--out-dir", "OUT"], "--out-dir", "load_trained_model"),
    (inference_script, ["--ckpt", "model_best.pth.tar", "--in-path", str(ROOT / "images"), "--out-path", "OUT"],
     "--out-path", "load_trained_model"),
    (export_script, ["--ckpt", "model_best.pth.tar", "--input-size", "32", "32", "--out", "OUT"], "--out",
     "load_trained_model"),
]


@pytest.mark.parametrize("module, args, flag, work", WRITERS, ids=[w[0].__name__ for w in WRITERS])
def test_an_output_under_a_file_is_refused_before_any_work(tmp_path, monkeypatch, module, args, flag, work):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(module, work, not_reached)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    out = blocker / ("model.onnx" if module is export_script else "out")
    with pytest.raises(UserError, match=f"^{re.escape(f'{flag} {out}: cannot be created: {blocker} is a file')}"):
        module.main([str(out) if arg == "OUT" else arg for arg in args])
    assert list(tmp_path.iterdir()) == [blocker] and blocker.read_text() == "a file, not a folder"


def test_the_refusal_is_one_line_and_exit_status_2(tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("")
    result = run("train_new_model.py", "--out-dir", str(blocker / "run"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"train_new_model.py: error: --out-dir {blocker / 'run'}: cannot be "
                                          f"created: {blocker} is a file, not a folder"]
    assert list(tmp_path.iterdir()) == [blocker]


def test_an_out_dir_that_is_a_file_is_called_a_file(tmp_path, monkeypatch):
    monkeypatch.setattr(train_new_model, "run_in_process_group", not_reached)
    existing = tmp_path / "notes.txt"
    existing.write_text("")
    with pytest.raises(UserError, match=f"^{re.escape(f'--out-dir {existing}: is a file, not a folder')}$"):
        train_new_model.main(["--out-dir", str(existing)])
    with pytest.raises(UserError, match="is a file, not a folder"):
        new_run_dir(str(existing), "synthetic", "demo")


# ---------------------------------------------------------------- one process per run directory


@pytest.fixture(scope="module")
def stopped_search(tmp_path_factory):
    """A tiny 2-epoch search stopped dead before epoch 1: a run directory to resume (copy it before changing it)."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.raises(Preempted):
        train_autodeeplab.main(TINY_SEARCH + TWO_EPOCHS + ["--out-dir", str(run_dir)], hooks=[PreemptBeforeEpoch(1)])
    return run_dir


def hold_lock(run_dir, holder):
    """Lock the run directory as a training process does: ``flock`` on its ``.lock``, which names the holder."""
    handle = open(RunDir(run_dir).lock, "a+")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.truncate(0)
    handle.write(f"{holder}\n")
    handle.flush()
    return handle


def test_a_resume_while_another_process_runs_is_refused_and_changes_nothing(tmp_path, stopped_search):
    run_dir = shutil.copytree(stopped_search, tmp_path / "run")
    with hold_lock(run_dir, "process 4242 on node7"):
        before = {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()}
        with pytest.raises(UserError, match=f"^{re.escape(str(run_dir))}: in use by process 4242 on node7"):
            train_autodeeplab.main(["--resume", str(run_dir / "checkpoint.pth.tar")])
        assert {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()} == before


class ProbeLock(Hook):
    """At the start of training, whether another open file can lock the run directory, and what ``.lock`` says."""

    def __init__(self, run_dir):
        self.path, self.free, self.holder = RunDir(run_dir).lock, None, None

    def before_train(self, trainer):
        with open(self.path) as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.free = True
            except BlockingIOError:
                self.free = False
            self.holder = other.read()


def test_resume_of_a_run_directory_removes_dead_writers_temporaries_and_holds_the_lock(tmp_path, stopped_search):
    run_dir = shutil.copytree(stopped_search, tmp_path / "run")
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "600"])
    try:
        stale, writing = run_dir / f".checkpoint.pth.tar.tmp{dead.pid}", run_dir / f".checkpoint.pth.tar.tmp{live.pid}"
        for temporary in (stale, writing):
            temporary.write_bytes(b"half a checkpoint")
        probe = ProbeLock(run_dir)
        assert train_autodeeplab.main(["--resume", str(run_dir)], hooks=[probe]) == run_dir
        assert not stale.exists() and writing.read_bytes() == b"half a checkpoint"
    finally:
        live.kill()
        live.wait()
    assert [record["epoch"] for record in read_jsonl(RunDir(run_dir).metrics)] == [0, 1]
    assert f"removed 1 temporary file(s) of writes cut short by a killed process: {stale.name}" in \
        (run_dir / "log.txt").read_text()
    assert probe.free is False and probe.holder.startswith(f"process {os.getpid()} on ")
    with hold_lock(run_dir, "the next process"):  # the run has ended: its lock is free again
        pass


def test_stale_temporaries_are_those_of_dead_processes_only(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "report_val").mkdir()
    stale = [tmp_path / f".checkpoint.pth.tar.tmp{dead.pid}", tmp_path / "report_val" / f".metrics.json.tmp{dead.pid}"]
    kept = [tmp_path / f".model_best.pth.tar.tmp{os.getpid()}", tmp_path / f"notes.tmp{dead.pid}",
            tmp_path / ".notes.tmp", tmp_path / "checkpoint.pth.tar"]
    for path in stale + kept:
        path.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(path.exists() for path in kept) and not any(path.exists() for path in stale)


# ---------------------------------------------------------------- --resume RUN


def test_the_retrain_resumes_from_its_run_directory(tmp_path, tiny_stage):
    module, args = tiny_stage("retrain")
    with pytest.raises(Preempted):
        module.main(args + TWO_EPOCHS + ["--out-dir", str(tmp_path / "run")], hooks=[PreemptBeforeEpoch(1)])
    assert module.main(["--resume", str(tmp_path / "run")]) == tmp_path / "run"
    assert [record["epoch"] for record in read_jsonl(RunDir(tmp_path / "run").metrics)] == [0, 1]


@pytest.mark.parametrize("module", [train_autodeeplab, train_nas_segm, train_autopanoptic, train_new_model,
                                    decode_autodeeplab], ids=lambda module: module.__name__)
def test_every_resuming_script_reads_a_run_directorys_checkpoint(tmp_path, module):
    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path / 'checkpoint.pth.tar'))}: checkpoint not found"):
        module.main(["--resume", str(tmp_path)])
