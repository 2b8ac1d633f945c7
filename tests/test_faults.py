"""What the scripts do when things go wrong: an output they cannot write is refused before any work, a run directory
serves one process at a time, writes cut short by a killed process leave no temporaries behind, --resume takes
a run directory and every printed resume command works as printed, a second Ctrl-C quits at once in one line,
images of any mode read as their colours, a flag the chosen network does not read is refused, masks without
a labelled pixel neither poison the loss nor pass the data check, and every script that reads a checkpoint or an
architecture file refuses a broken one (of any system) in one line naming it."""

import argparse
import copy
import fcntl
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import decode_autodeeplab
import evaluate as evaluate_script
import export as export_script
import inference as inference_script
import train_autodeeplab
import train_autopanoptic
import train_nas_segm
import train_new_model
from dataloaders.files import FilePairSource, read_image
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.cli import run_cli
from engine.interrupt import RunInterrupted
from engine.losses import cross_entropy, make_criterion
from engine.run_dir import RunDir, new_run_dir, read_jsonl
from engine.trainer import Hook, NonFiniteLoss, Trainer
from evaluation.semantic import evaluate
from modeling.architecture_file import architecture_to_json, load_architecture, save_architecture
from modeling.autopanoptic.genotype import RELEASED, RELEASED_FILES, PanopticGenotype, layer_choices
from modeling.autopanoptic.network import segmentation_loss
from modeling.registry import get_model
from retrain import semantic as semantic_retrain
from tests.conftest import (AUTOPANOPTIC_SEARCH, NAS_SEGM_SEARCH, ROOT, TINY_DATA, TINY_RETRAIN, TINY_SEARCH,
                            PreemptAfterStep, PreemptBeforeEpoch, Preempted, SignalAtStep)
from tests.test_evaluate_inference import CLASS_NAMES, PALETTE, make_folder_dataset, tiny_checkpoint
from tests.test_trainer import ToyStep, toy_loader
from utils.atomic import remove_stale_temporaries
from utils.errors import UserError
from utils.labels import IGNORE_INDEX

SYSTEMS = ("autodeeplab", "nas-segm", "autopanoptic")
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


def test_the_refusal_is_one_line_and_exit_status_2(tmp_path, run_in_process):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("")
    result = run_in_process("train_new_model.py", "--out-dir", str(blocker / "run"), cwd=tmp_path)
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


def stopped_run(tmp_path, system):
    """A search of ``system`` stopped dead after its first checkpoint: a run directory to resume."""
    run_dir = tmp_path / f"stopped_{system}"
    module, args, hook = {
        "nas-segm": (train_nas_segm, NAS_SEGM_SEARCH, PreemptAfterStep(1, "candidate 1 stage 0")),
        "autopanoptic": (train_autopanoptic, AUTOPANOPTIC_SEARCH, PreemptAfterStep(13)),  # a checkpoint every 12
    }[system]
    with pytest.raises(Preempted):
        module.main(args + ["--out-dir", str(run_dir)], hooks=[hook])
    assert RunDir(run_dir).checkpoint.is_file()
    return module, run_dir


@pytest.mark.slow
@pytest.mark.parametrize("system", ["nas-segm", "autopanoptic"])
def test_a_resume_of_a_running_search_is_refused_in_the_other_systems_too(tmp_path, system):
    module, run_dir = stopped_run(tmp_path, system)
    with hold_lock(run_dir, "process 4242 on node7"):
        before = {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()}
        with pytest.raises(UserError, match=f"^{re.escape(str(run_dir))}: in use by process 4242 on node7"):
            module.main(["--resume", str(run_dir)])
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


@pytest.mark.slow
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


# ---------------------------------------------------------------- every printed resume command works as printed

NAS_SEGM_FILE = ROOT / "modeling" / "architectures" / "nas_segm_wacv_arch1.json"
PANOPTIC_RETRAIN = ["--dataset", "synthetic_panoptic", "--synthetic_train_samples", "12", "--synthetic_val_samples",
                    "2", "--synthetic_size", "64", "--min-size", "64", "--max-size", "64", "--max-iter", "8",
                    "--lr-steps", "5", "7", "--warmup-iters", "2", "--widths", "8", "16", "32", "64", "128"]


def panoptic_architecture(path):
    """A small Auto-Panoptic architecture file (the first op of every choice layer), as a search would write it."""
    repeats = (2, 2, 4, 2)
    save_architecture(PanopticGenotype.from_path([0] * len(layer_choices(repeats)), repeats), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("system", ["autodeeplab", "nas-segm", "autopanoptic"])
def test_the_resume_command_a_stopped_retrain_prints_works_as_printed(tmp_path, system):
    args = {"autodeeplab": TINY_RETRAIN,
            "nas-segm": TINY_DATA + ["--saved_arch_path", str(NAS_SEGM_FILE), "--epochs", "2"],
            "autopanoptic": PANOPTIC_RETRAIN + ["--saved_arch_path",
                                                str(panoptic_architecture(tmp_path / "arch.json"))]}
    with pytest.raises(RunInterrupted) as stopped:
        train_new_model.main(args[system] + ["--out-dir", str(tmp_path / "run")], hooks=[SignalAtStep(2)])
    printed = str(stopped.value).split("continue with ")[1].split()
    assert printed == ["--resume", str(tmp_path / "run" / "checkpoint.pth.tar")]
    assert train_new_model.main(printed) == tmp_path / "run"
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pth.tar", stage="retrain")
    assert state["system"] == system and "partial_epoch" not in state


# ---------------------------------------------------------------- a second Ctrl-C

# Two Ctrl-C in one step, as a user presses them: the first asks for a clean stop, the second comes before it is done.
DOUBLE_CTRL_C = """
import signal, sys
import {module}
from tests.conftest import SignalAtStep
from engine.cli import run_cli
hooks = [SignalAtStep({step}, signal.SIGINT), SignalAtStep({step}, signal.SIGINT)]
run_cli(lambda: {module}.main(sys.argv[1:], hooks=hooks), "{module}.py")
"""
# each search's arguments, and a step after its first checkpoint: epoch 0 of 3 steps; candidate 0 of 10 steps (2
# candidates); the supernet's checkpoint every 12 iterations (16 in all, one search cycle)
CTRL_C_RUNS = {"autodeeplab": (train_autodeeplab, TINY_SEARCH, 4),
               "nas-segm": (train_nas_segm, NAS_SEGM_SEARCH + ["--num_candidates", "2"], 12),
               "autopanoptic": (train_autopanoptic, AUTOPANOPTIC_SEARCH + ["--max-iter", "16", "--search-cycles", "1"],
                                14)}


@pytest.mark.slow
@pytest.mark.parametrize("system", list(CTRL_C_RUNS))
def test_a_second_ctrl_c_quits_at_once_in_one_line_keeping_the_last_checkpoint(tmp_path, system):
    module, args, step = CTRL_C_RUNS[system]
    script = module.__name__ + ".py"
    run_dir, checkpoint = tmp_path / "run", tmp_path / "run" / "checkpoint.pth.tar"
    code = DOUBLE_CTRL_C.format(module=module.__name__, step=step)
    result = subprocess.run([sys.executable, "-c", code, *args, "--out-dir", str(run_dir)], cwd=ROOT,
                            env=os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("Ctrl-C") == 1
    assert result.stderr.splitlines()[-1] == (f"{script}: stopped at once by a second Ctrl-C; the last "
                                              f"checkpoint {checkpoint} is intact: continue with --resume {checkpoint}")
    before = load_checkpoint(checkpoint)
    assert "partial_epoch" not in before  # the last full checkpoint, untouched by the step in hand
    assert module.main(["--resume", str(checkpoint)]) == run_dir
    if system == "autodeeplab":
        assert before["epoch"] == 0
        assert [record["epoch"] for record in read_jsonl(RunDir(run_dir).metrics)] == [0, 1, 2]
    elif system == "nas-segm":
        assert before["next_candidate"] == 1
        assert [record["candidate"] for record in read_jsonl(RunDir(run_dir).candidates)] == [0, 1]


def test_a_ctrl_c_outside_a_training_loop_is_one_line_and_status_130(capsys):
    def reading_data():
        raise KeyboardInterrupt  # what Python raises on Ctrl-C where no stop request is listening

    with pytest.raises(SystemExit) as exited:
        run_cli(reading_data, "train_new_model.py")
    assert exited.value.code == 130
    assert capsys.readouterr().err == "train_new_model.py: interrupted by Ctrl-C\n"


# ---------------------------------------------------------------- images of every mode


def write_png16(path, samples):
    """A 16-bit PNG of ``samples`` (uint16 [H, W, C]; C = 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA), which Pillow
    cannot write itself."""
    height, width, channels = samples.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\0" + samples[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def image_cases(folder):
    """Files of every mode a user may hand in, each with the RGB colours it must read as."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    grey, alpha = rgb[..., 0], rng.integers(0, 256, (6, 5), dtype=np.uint8)
    as_rgb = lambda channel: np.repeat(channel[..., None], 3, axis=2)  # noqa: E731
    indices = rng.integers(0, 4, (6, 5), dtype=np.uint8)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    paletted = Image.fromarray(indices, mode="P")
    paletted.putpalette(palette.tobytes())
    cmyk = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    cases = {
        "rgb16.png": (lambda path: write_png16(path, rgb.astype(np.uint16) * 257), rgb),
        "rgba16.png": (lambda path: write_png16(path, np.dstack([rgb, alpha]).astype(np.uint16) * 257), rgb),
        "grey16.png": (lambda path: write_png16(path, grey[..., None].astype(np.uint16) * 257), as_rgb(grey)),
        "greyalpha16.png": (lambda path: write_png16(path, np.dstack([grey, alpha]).astype(np.uint16) * 257),
                            as_rgb(grey)),
        "grey.png": (lambda path: Image.fromarray(grey, mode="L").save(path), as_rgb(grey)),
        "greyalpha.png": (lambda path: Image.fromarray(np.dstack([grey, alpha]), mode="LA").save(path), as_rgb(grey)),
        "rgba.png": (lambda path: Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(path), rgb),
        "palette.png": (lambda path: paletted.save(path), palette[indices]),
        "cmyk.tif": (lambda path: Image.fromarray(cmyk, mode="CMYK").save(path),
                     np.rint((255 - cmyk[..., :3].astype(float)) * (255 - cmyk[..., 3:].astype(float)) / 255)),
        "one_pixel.png": (lambda path: Image.fromarray(rgb[:1, :1]).save(path), rgb[:1, :1]),
    }
    for name, (write, _) in cases.items():
        write(folder / name)
    return {name: expected.astype(np.uint8) for name, (_, expected) in cases.items()}


def test_every_image_mode_reads_as_its_8_bit_colours_for_inference_and_datasets_alike(tmp_path):
    for name, expected in image_cases(tmp_path).items():
        image = read_image(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == expected.shape, name
        np.testing.assert_array_equal(image, expected, err_msg=name)
    Image.fromarray(np.zeros((6, 5), dtype=np.uint8)).save(tmp_path / "mask.png")
    source = FilePairSource("folder", "train", [(tmp_path / "grey16.png", tmp_path / "mask.png")], CLASS_NAMES)
    np.testing.assert_array_equal(source.load(0)[0], read_image(tmp_path / "grey.png"))


@pytest.mark.parametrize("pixels, kind", [(np.zeros((4, 4), dtype=np.float32), "32-bit floating-point"),
                                          (np.zeros((4, 4), dtype=np.int32), "32-bit integer")])
def test_an_image_without_a_fixed_range_is_refused_in_one_line_naming_it(tmp_path, pixels, kind):
    Image.fromarray(pixels).save(tmp_path / "depth.tif")
    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path / 'depth.tif'))}: cannot read this image: its "
                                        f"{kind} pixels .* save it with 8 or 16 bits per channel$"):
        read_image(tmp_path / "depth.tif")


class RedChannelClasses(nn.Module):
    """Class 0 where the red channel is above the mean colour, class 1 below it: a prediction that follows the
    pixels, so that reading an image wrongly (16-bit saturated to white) changes it."""

    def forward(self, x):
        return torch.cat([x[:, :1], -x[:, :1], torch.zeros_like(x[:, :1])], dim=1)


def test_a_16_bit_images_prediction_equals_its_8_bit_versions(tmp_path, monkeypatch):
    checkpoint = {"args": {"model": "deeplabv3plus"}, "classes": {"names": CLASS_NAMES, "palette": PALETTE}}
    monkeypatch.setattr(inference_script, "load_trained_model",
                        lambda path, device: (RedChannelClasses(), checkpoint, get_model("deeplabv3plus")))
    photos = tmp_path / "photos"
    photos.mkdir()
    image_cases(photos)
    Image.fromarray(np.full((6, 5, 3), 255, dtype=np.uint8)).save(photos / "white.png")
    Image.fromarray(read_image(photos / "rgba.png")).save(photos / "rgb.png")
    out = inference_script.main(["--ckpt", "unused.pth.tar", "--in-path", str(photos), "--out-path",
                                 str(tmp_path / "out")])
    mask = lambda name: np.asarray(Image.open(out / "masks" / f"{name}.png"))  # noqa: E731
    for sixteen, eight in (("rgb16", "rgb"), ("rgba16", "rgb"), ("grey16", "grey"), ("greyalpha16", "grey")):
        np.testing.assert_array_equal(mask(sixteen), mask(eight), err_msg=sixteen)
    assert not np.array_equal(mask("rgb"), mask("white")) and not np.array_equal(mask("grey"), mask("white"))


def test_a_one_pixel_image_is_segmented_by_a_real_network(tmp_path):
    tiny_checkpoint(tmp_path / "model.pth.tar")
    Image.fromarray(np.full((1, 1, 3), 200, dtype=np.uint8)).save(tmp_path / "dot.png")
    out = inference_script.main(["--ckpt", str(tmp_path / "model.pth.tar"), "--in-path", str(tmp_path / "dot.png"),
                                 "--out-path", str(tmp_path / "out")])
    assert Image.open(out / "masks" / "dot.png").size == (1, 1)
    assert Image.open(out / "overlays" / "dot.jpg").size == (1, 1)


# ---------------------------------------------------------------- flags the chosen network does not read

AUTODEEPLAB = "autodeeplab architectures"


@pytest.mark.parametrize("extra, flag, system, readers", [
    (["--saved_arch_path", str(NAS_SEGM_FILE), "--filter_multiplier", "48"], "filter_multiplier", "nas-segm "
     "architectures", AUTODEEPLAB),
    (["--saved_arch_path", str(NAS_SEGM_FILE), "--filter_multiplier", "20"], "filter_multiplier", "nas-segm "
     "architectures", AUTODEEPLAB),  # the default value, but given: the user expects it to matter
    (["--saved_arch_path", str(NAS_SEGM_FILE), "--drop_path_prob", "0.1"], "drop_path_prob", "nas-segm architectures",
     AUTODEEPLAB),
    (["--backbone", "resnet50"], "backbone", AUTODEEPLAB, "--model deeplabv3plus"),
    (["--model", "deeplabv3plus", "--filter_multiplier", "48"], "filter_multiplier", "--model deeplabv3plus",
     AUTODEEPLAB),
    (["--model", "deeplabv3plus", "--summary"], "summary", "--model deeplabv3plus",
     f"{AUTODEEPLAB}, autopanoptic architectures, nas-segm architectures"),
    (["--saved_arch_path", str(RELEASED / RELEASED_FILES["COCO_3.8G"]), "--filter_multiplier", "48"],
     "filter_multiplier", "autopanoptic architectures", AUTODEEPLAB),
], ids=["F-nas-segm", "default-F-nas-segm", "drop-path-nas-segm", "backbone-autodeeplab", "F-deeplabv3plus",
        "summary-deeplabv3plus", "F-autopanoptic"])
def test_a_flag_the_chosen_network_does_not_read_is_refused_naming_its_system(tmp_path, monkeypatch, extra, flag,
                                                                                system, readers):
    monkeypatch.setattr(train_new_model, "run_in_process_group", not_reached)
    with pytest.raises(UserError, match=f"^--{flag}: does not apply to {re.escape(system)}; it applies to "
                                        f"{re.escape(readers)}"):
        train_new_model.main(extra + ["--out-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_flags_from_a_replayed_run_count_only_where_they_change_a_default(tmp_path):
    replay = {"saved_arch_path": str(NAS_SEGM_FILE), "filter_multiplier": 20, "drop_path_prob": 0.0, "epochs": 1}
    (tmp_path / "args.json").write_text(json.dumps(replay))
    args, _ = semantic_retrain.parse_args(["--config", str(tmp_path / "args.json")])
    assert args.model == "nas-segm" and args.filter_multiplier == 20
    (tmp_path / "args.json").write_text(json.dumps(replay | {"filter_multiplier": 48}))
    with pytest.raises(UserError, match="^--filter_multiplier: does not apply to nas-segm architectures"):
        semantic_retrain.parse_args(["--config", str(tmp_path / "args.json")])


# ---------------------------------------------------------------- masks without a labelled pixel


def all_ignored(logits):
    return torch.full((logits.shape[0], *logits.shape[2:]), IGNORE_INDEX, dtype=torch.long)


@pytest.mark.parametrize("loss", [
    cross_entropy,
    make_criterion("ohem", 0.7, 100_000),  # fewer labelled pixels than min_kept
    make_criterion("ohem", 0.7, 1),
    lambda logits, target: segmentation_loss(logits, [tuple(logits.shape[-2:])] * len(logits),
                                             [{"semantic": labels} for labels in target]),  # Auto-Panoptic's
], ids=["cross-entropy", "ohem-all-kept", "ohem-hardest", "panoptic-semantic"])
def test_a_batch_without_a_labelled_pixel_gives_loss_0_and_zero_gradients(loss):
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 3, padding=1)
    logits = model(torch.randn(2, 3, 8, 8))
    value = loss(logits, all_ignored(logits))
    value.backward()
    assert value.item() == 0.0
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())
    labelled = all_ignored(logits)
    labelled[0, 0, 0] = 1
    assert loss(model(torch.randn(2, 3, 8, 8)), labelled).item() > 0  # one labelled pixel is scored


def test_a_validation_image_without_a_labelled_pixel_leaves_the_loss_finite():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 3, 1)
    image, labelled = torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 4, 4))
    alone = evaluate(model, [(image, labelled)], 3, torch.device("cpu"))["loss"]
    with_empty = evaluate(model, [(image, labelled), (image, all_ignored(image))], 3, torch.device("cpu"))["loss"]
    assert with_empty == alone > 0


def test_data_whose_masks_are_all_ignore_is_refused_by_the_data_check(tmp_path, monkeypatch):
    monkeypatch.setattr("engine.stage.open_run", not_reached)
    make_folder_dataset(tmp_path / "data")
    for mask in (tmp_path / "data" / "masks" / "train").iterdir():
        shape = np.asarray(Image.open(mask)).shape
        Image.fromarray(np.full(shape, IGNORE_INDEX, dtype=np.uint8), mode="L").save(mask)
    with pytest.raises(UserError, match=r"^the train split of folder has no labelled pixel: all 2 masks hold only 255 "
                                        r"\(ignore\)"):
        train_new_model.main(["--dataset", "folder", "--data_root", str(tmp_path / "data"), "--epochs", "1",
                              "--batch_size", "2", "--crop_size", "16", "--out-dir", str(tmp_path / "run")])


def test_a_non_finite_loss_names_a_checkpoint_only_once_it_exists(tmp_path):
    checkpoint = tmp_path / "checkpoint.pth.tar"
    with pytest.raises(NonFiniteLoss, match=r"\(no checkpoint holds this run\)") as stopped:
        Trainer(ToyStep(explode_at=1), toy_loader(), epochs=1, last_checkpoint=checkpoint).fit()
    assert str(checkpoint) not in str(stopped.value)
    checkpoint.write_bytes(b"a checkpoint")
    with pytest.raises(NonFiniteLoss, match=f"the last good checkpoint is {re.escape(str(checkpoint))}"):
        Trainer(ToyStep(explode_at=1), toy_loader(), epochs=1, last_checkpoint=checkpoint).fit()


# ---------------------------------------------------------------- broken checkpoints, every reading script

# script, the flag that takes a checkpoint, other arguments, and the (system, stage) kinds it reads
CHECKPOINT_READERS = [
    ("train_autodeeplab.py", "--resume", [], {("autodeeplab", "search")}),
    ("train_nas_segm.py", "--resume", [], {("nas-segm", "search")}),
    ("train_autopanoptic.py", "--resume", [], {("autopanoptic", "search")}),
    ("decode_autodeeplab.py", "--resume", [], {(system, "search") for system in SYSTEMS}),
    ("train_new_model.py", "--resume", [], {(system, "retrain") for system in SYSTEMS}),
    ("evaluate.py", "--ckpt", [], {(system, "retrain") for system in SYSTEMS}),
    ("inference.py", "--ckpt", ["--in-path", str(ROOT / "images"), "--out-path", "predictions"],
     {(system, "retrain") for system in SYSTEMS}),
    ("export.py", "--ckpt", ["--input-size", "32", "32"], {(system, "retrain") for system in SYSTEMS}),
]


def broken_checkpoints(folder):
    """name -> a file that no script may read: empty, random bytes, pickled objects, cut in half."""
    folder.mkdir()
    files = {name: folder / f"{name}.pth.tar" for name in ("zero_bytes", "random_bytes", "pickled", "truncated")}
    files["zero_bytes"].write_bytes(b"")
    files["random_bytes"].write_bytes(np.random.default_rng(0).bytes(5000))
    torch.save({"format": "autodeeplab-checkpoint", "stage": "search", "args": argparse.Namespace(lr=0.1)},
               files["pickled"])
    whole = folder / "whole.pth.tar"
    save_checkpoint({"stage": "retrain", "system": "autodeeplab", "model": {"w": torch.randn(100, 100)}}, whole)
    files["truncated"].write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    return files


def one_line_naming(result, script, path):
    lines = result.stderr.strip().splitlines()
    return result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"{script}: error: {path}: ")


@pytest.mark.parametrize("script, flag, extra, reads", CHECKPOINT_READERS, ids=[r[0] for r in CHECKPOINT_READERS])
def test_a_broken_checkpoint_is_one_line_naming_it_in_every_script(tmp_path, run_in_process, script, flag, extra,
                                                                   reads):
    for kind, path in broken_checkpoints(tmp_path / "checkpoints").items():
        result = run_in_process(script, flag, str(path), *extra, cwd=tmp_path)
        assert one_line_naming(result, script, path), (kind, result.returncode, result.stderr[-2000:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]  # no run, no output


@pytest.mark.parametrize("script, flag, extra, reads", CHECKPOINT_READERS, ids=[r[0] for r in CHECKPOINT_READERS])
def test_a_checkpoint_of_another_system_or_stage_is_refused_naming_both(tmp_path, run_in_process, script, flag, extra,
                                                                        reads):
    for system in SYSTEMS:
        for stage in ("search", "retrain"):
            if (system, stage) in reads:
                continue
            path = tmp_path / f"{system}_{stage}.pth.tar"
            save_checkpoint({"stage": stage, "system": system, "args": {}, "model": {}}, path)
            result = run_in_process(script, flag, str(path), *extra, cwd=tmp_path)
            assert one_line_naming(result, script, path), (system, stage, result.stderr[-2000:])
            wanted = {wanted_stage for _, wanted_stage in reads}
            message = result.stderr.strip()
            if stage not in wanted:
                assert f"is a {stage!r} checkpoint, expected a {wanted.pop()!r} one" in message
            else:
                assert f"is a checkpoint of system {system}, expected one of system " in message


# ---------------------------------------------------------------- broken architecture files, every system

def released_file(system):
    """A version-2 architecture file of ``system``, as JSON."""
    if system == "autopanoptic":
        return architecture_to_json(load_architecture(RELEASED / RELEASED_FILES["COCO_3.8G"]))
    name = "autodeeplab_paper.json" if system == "autodeeplab" else "nas_segm_wacv_arch1.json"
    return json.loads((ROOT / "modeling" / "architectures" / name).read_text())


def edited(system, change):
    data = copy.deepcopy(released_file(system))
    change(data)
    return json.dumps(data)


ARCHITECTURE_FAULTS = [
    *[(system, fault, text) for system in SYSTEMS for fault, text in (
        ("truncated", lambda s: json.dumps(released_file(s))[:300]),
        ("empty", lambda s: ""),
        ("binary", lambda s: "\x00\x9c\xff" * 20),
        ("unknown system", lambda s: edited(s, lambda d: d.update(system="nope"))),
        ("future version", lambda s: edited(s, lambda d: d.update(format_version=99))),
        ("another system's name",
         lambda s: edited(s, lambda d: d.update(system=SYSTEMS[(SYSTEMS.index(s) + 1) % 3]))),
    )],
    ("autodeeplab", "5000 layers", lambda s: edited(s, lambda d: d["genotype"].update(
        network_path=[0] * 5000, network_strides=[4] * 5000))),
    ("autodeeplab", "strides that disagree with the path",
     lambda s: edited(s, lambda d: d["genotype"].update(network_path=[0] * 12))),
    ("autodeeplab", "1000 blocks per cell", lambda s: edited(s, lambda d: d["genotype"].update(block_multiplier=1000))),
    ("nas-segm", "an op index of 10**9",
     lambda s: edited(s, lambda d: d["genotype"]["config"][0][0].__setitem__(0, 10 ** 9))),
    ("autopanoptic", "a million blocks in a stage",
     lambda s: edited(s, lambda d: d["genotype"].update(stage_repeats=[10 ** 6, 8, 16, 8]))),
    ("autopanoptic", "an empty stage",
     lambda s: edited(s, lambda d: d["genotype"].update(stage_repeats=[0, 8, 16, 8]))),
    ("autopanoptic", "a head op out of range", lambda s: edited(s, lambda d: d["genotype"].update(head=[99] * 7))),
]


@pytest.mark.parametrize("system, fault, text", ARCHITECTURE_FAULTS,
                         ids=[f"{system}: {fault}" for system, fault, _ in ARCHITECTURE_FAULTS])
def test_a_broken_architecture_file_is_one_line_naming_it(tmp_path, run_in_process, system, fault, text):
    path = tmp_path / "architecture.json"
    path.write_text(text(system))
    result = run_in_process("train_new_model.py", "--saved_arch_path", str(path), "--out-dir", str(tmp_path / "run"),
                            cwd=tmp_path)
    assert one_line_naming(result, "train_new_model.py", path), result.stderr[-2000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, flag, applies, given", [
    (["--saved_arch_path", str(NAS_SEGM_FILE), "--max-iter", "5"], "--max-iter", "Auto-Panoptic", "a semantic"),
    (["--lr-steps", "2", "3"], "--lr-steps", "Auto-Panoptic", "a semantic"),  # no file: the default network
    (["--saved_arch_path", str(RELEASED / RELEASED_FILES["COCO_3.8G"]), "--epochs=5"], "--epochs", "semantic",
     "an Auto-Panoptic"),
], ids=["max-iter-nas-segm", "lr-steps-autodeeplab", "epochs-autopanoptic"])
def test_a_flag_of_the_other_retrain_names_the_architectures_it_applies_to(tmp_path, run_in_process, extra, flag,
                                                                           applies, given):
    result = run_in_process("train_new_model.py", *extra, "--out-dir", str(tmp_path / "run"))
    assert result.returncode == 2 and result.stderr.splitlines() == [
        f"train_new_model.py: error: {flag}: applies to {applies} architectures only; this retrain is of {given} one"]
    assert not (tmp_path / "run").exists()
