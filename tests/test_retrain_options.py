"""Retraining options: scheduled drop-path, OHEM cross-entropy, learning-rate schedules with warm-up."""

import json
import math

import pytest
import torch

import train_new_model
from engine.losses import cross_entropy, ohem_cross_entropy
from engine.lr_schedule import lr_factor
from modeling.autodeeplab.genotype import paper_architecture
from modeling.autodeeplab.model_retrain import AutoDeepLab
from modeling.drop_path import drop_path, scheduled_probability
from retrain import network
from retrain import semantic as semantic_retrain
from tests.conftest import ROOT
from utils.errors import UserError


def test_drop_path_zeroes_whole_samples_and_keeps_the_expectation():
    torch.manual_seed(0)
    x = torch.ones(4000, 2, 3, 3)
    out = drop_path(x, 0.3, training=True)
    per_sample = out.reshape(4000, -1)
    assert ((per_sample == 0).all(dim=1) | (per_sample == 1 / 0.7).all(dim=1)).all()
    assert (per_sample[:, 0] == 0).float().mean().item() == pytest.approx(0.3, abs=0.03)
    assert out.mean().item() == pytest.approx(1.0, abs=0.05)
    assert torch.equal(drop_path(x, 0.3, training=False), x)


def test_drop_path_schedule_is_linear():
    assert [scheduled_probability(0.2, step, 4) for step in range(5)] == pytest.approx([0, 0.05, 0.1, 0.15, 0.2])


def test_cells_drop_ops_but_never_identity_edges():
    torch.manual_seed(0)
    model = AutoDeepLab(paper_architecture(4), 3, 4).train()
    x = torch.randn(2, 3, 33, 33)
    model.set_drop_path_prob(0.0)
    torch.manual_seed(1)
    reference = model(x)
    model.set_drop_path_prob(0.5)
    torch.manual_seed(1)
    dropped = model(x)
    assert not torch.allclose(reference, dropped)
    model.eval()
    assert torch.equal(model(x), model(x))  # evaluation is deterministic: nothing is dropped
    with pytest.raises(ValueError, match="drop-path probability"):
        model.set_drop_path_prob(1.0)
    cell = model.cells[0]
    identities = [op for ops in cell.ops for op in ops if isinstance(op, torch.nn.Identity)]
    cell.drop_path_prob = 0.99
    sample = torch.randn(2, 4, 5, 5)
    assert all(torch.equal(cell._drop(op, sample), sample) for op in identities)


def test_ohem_keeps_the_hard_pixels_only():
    # Four pixels with true-class probabilities 0.9, 0.6, 0.3, 0.1 (two classes); one ignored pixel.
    probabilities = torch.tensor([0.9, 0.6, 0.3, 0.1, 0.5])
    logits = torch.stack([torch.log(probabilities), torch.log(1 - probabilities)]).reshape(1, 2, 1, 5)
    target = torch.tensor([[[0, 0, 0, 0, 255]]])
    losses = -torch.log(probabilities[:4])
    # threshold 0.7 keeps 0.6, 0.3, 0.1 (min_kept 2 is below that count)
    assert ohem_cross_entropy(logits, target, 0.7, 2).item() == pytest.approx(losses[1:].mean().item(), rel=1e-5)
    # min_kept 3 with threshold 0.2: the 3 hardest pixels are kept (0.6 is the 3rd smallest probability)
    assert ohem_cross_entropy(logits, target, 0.2, 3).item() == pytest.approx(losses[1:].mean().item(), rel=1e-5)
    assert ohem_cross_entropy(logits, target, 0.2, 1).item() == pytest.approx(losses[3].item(), rel=1e-5)
    # at most min_kept labelled pixels: plain cross-entropy
    assert ohem_cross_entropy(logits, target, 0.7, 10).item() == pytest.approx(cross_entropy(logits, target).item())


@pytest.mark.parametrize("schedule, expected", [
    ("poly", lambda i: (1 - i / 10) ** 0.9),
    ("cosine", lambda i: 0.5 * (1 + math.cos(math.pi * i / 10))),
    ("step", lambda i: 0.1 ** (i // 4)),
])
def test_lr_schedules_with_and_without_warmup(schedule, expected):
    for i in range(11):
        assert lr_factor(i, 10, schedule, step_every=4) == pytest.approx(expected(i))
    warm = [lr_factor(i, 10, schedule, step_every=4, warmup_iters=4, warmup_start=0.2) for i in range(6)]
    assert warm[:4] == pytest.approx([expected(i) * (0.2 + 0.8 * i / 4) for i in range(4)])
    assert warm[4:] == pytest.approx([expected(4), expected(5)])


DATA = ["--synthetic_train_samples", "8", "--synthetic_val_samples", "2", "--synthetic_size", "36",
        "--batch_size", "2", "--crop_size", "32", "--filter_multiplier", "2", "--epochs", "2"]


def test_retrain_with_every_option(tmp_path, monkeypatch):
    """Every option at once; --compile is checked for its wiring here (torch.compile recorded, not run: inductor's
    compile of this network takes minutes on two cores; tests/test_trainer.py runs a real compiled step)."""
    compiled_calls = []

    def recording_compile(model):
        return lambda images: compiled_calls.append(images.shape) or model(images)

    monkeypatch.setattr(torch, "compile", recording_compile)
    run_dir = train_new_model.main(DATA + ["--drop_path_prob", "0.3", "--loss", "ohem", "--ohem_min_kept", "500",
                                           "--lr_scheduler", "cosine", "--warmup_iters", "3", "--compile",
                                           "--out-dir", str(tmp_path / "run")])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(math.isfinite(r["train_loss"]) for r in records)
    assert records[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine ends at 0
    assert len(compiled_calls) == 8  # every training step (4 per epoch) went through the compiled forward, no other
    assert "compiled step" in (run_dir / "log.txt").read_text()


@pytest.mark.parametrize("flag, value, message", [
    ("--drop_path_prob", "1.0", "--drop_path_prob 1.0: expected a probability in"),
    ("--ohem_thresh", "0", "--ohem_thresh 0.0: expected a probability in"),
])
def test_bad_option_values(flag, value, message):
    with pytest.raises(UserError, match=message):
        semantic_retrain.parse_args([flag, value])


@pytest.mark.parametrize("model", [[], ["--model", "searched"], ["--model", "autodeeplab"], ["--model", "nas-segm"]],
                         ids=["default", "searched", "another-systems-name", "its-own-name"])
def test_a_searched_model_is_the_network_of_the_architecture_files_system(model):
    decoder = ROOT / "modeling" / "architectures" / "nas_segm_wacv_arch0.json"
    args, _ = semantic_retrain.parse_args(["--saved_arch_path", str(decoder), *model])
    assert args.model == "nas-segm"
    paper = ROOT / "modeling" / "architectures" / "autodeeplab_paper.json"
    args, _ = semantic_retrain.parse_args(["--saved_arch_path", str(paper), *model])
    assert args.model == "autodeeplab"


def test_the_baseline_is_chosen_by_name_and_reads_no_architecture_file():
    args, _ = semantic_retrain.parse_args(["--model", "deeplabv3plus"])
    spec, genotype = network(args, None)
    assert args.model == spec.name == "deeplabv3plus" and genotype is None
