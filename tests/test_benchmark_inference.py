"""benchmarks/inference.py: its figures agree with counts made here, and its errors are one line (no wall time is asserted)."""

import json
import subprocess

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.inference import multi_adds_g
from modeling.autodeeplab.genotype import paper_architecture
from modeling.autodeeplab.model_retrain import AutoDeepLab
from modeling.autodeeplab.costs import component_costs
from tests.conftest import run_script
from utils.torchvision_compat import import_torchvision

SIZE = (33, 47)
TINY = ["--input_size", *map(str, SIZE), "--steps", "1", "--warmup", "0", "--threads", "1", "--device", "cpu"]


def run(*flags: str) -> subprocess.CompletedProcess:
    return run_script("benchmarks/inference.py", *flags)


@pytest.fixture(scope="module")
def report() -> dict:
    result = run(*TINY, "--batch_size", "2", "--num_classes", "19",
                 "--models", "autodeeplab-s", "torchvision-deeplabv3-resnet50", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def torchvision_deeplabv3(num_classes: int) -> torch.nn.Module:
    return import_torchvision().models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False).eval()


@pytest.mark.slow
def test_json_describes_the_run_and_has_one_row_per_model_in_order(report):
    assert report["device"] == "cpu" and report["threads"] == 1
    assert report["input_size"] == list(SIZE) and report["batch_size"] == 2
    assert [row["model"] for row in report["rows"]] == ["autodeeplab-s", "torchvision-deeplabv3-resnet50"]


@pytest.mark.slow
def test_params_match_independent_counts(report):
    rows = {row["model"]: row for row in report["rows"]}
    assert rows["autodeeplab-s"]["params"] == 10_147_427  # the paper's Auto-DeepLab-S at 19 classes
    expected = sum(p.numel() for p in torchvision_deeplabv3(19).parameters())
    assert rows["torchvision-deeplabv3-resnet50"]["params"] == expected


@pytest.mark.slow
def test_multi_adds_match_independent_counts(report):
    rows = {row["model"]: row for row in report["rows"]}
    autodeeplab = component_costs(AutoDeepLab(paper_architecture(20), 19, 20), SIZE)[-1][2]
    assert rows["autodeeplab-s"]["multi_adds_g"] == pytest.approx(autodeeplab, abs=1e-6)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:  # a real forward here, not the meta device
        torchvision_deeplabv3(19)(torch.randn(1, 3, *SIZE))
    assert rows["torchvision-deeplabv3-resnet50"]["multi_adds_g"] == pytest.approx(
        counter.get_total_flops() / 2e9, abs=1e-6)


@pytest.mark.slow
def test_multi_adds_grow_with_the_input():
    for model in ("autodeeplab-s", "deeplabv3plus-resnet101", "torchvision-deeplabv3-resnet50"):
        small, large = multi_adds_g(model, 19, SIZE), multi_adds_g(model, 19, (2 * SIZE[0], 2 * SIZE[1]))
        assert 0 < small < large, model


@pytest.mark.slow
def test_latency_throughput_and_memory_are_consistent(report):
    for row in report["rows"]:
        assert row["latency_ms"] > 0
        assert row["images_per_s"] == pytest.approx(2 * 1000 / row["latency_ms"], rel=1e-3)
        assert row["peak_memory_mb"] > row["baseline_rss_mb"] > 0  # the model's own process grew


@pytest.mark.slow
def test_table_prints_one_row_per_model_and_a_footer():
    result = run(*TINY, "--num-classes", "5", "--models", "autodeeplab-s", "deeplabv3plus-resnet101")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 4, result.stdout  # header, two rows, footer
    assert lines[0].split()[:2] == ["model", "params"] and "peak RSS MB" in lines[0]
    assert lines[1].startswith("autodeeplab-s ") and lines[2].startswith("deeplabv3plus-resnet101 ")
    assert all(len(line.split()) == 6 for line in lines[1:3])
    assert "device cpu" in lines[3] and "input 33x47" in lines[3] and f"torch {torch.__version__}" in lines[3]


@pytest.mark.parametrize("flags, words", [
    (["--models", "autodeeplab-xl"], ["--models", "autodeeplab-xl"]),
    (["--input_size", "0", "47"], ["--input_size", "positive"]),
    (["--steps", "0"], ["--steps", "positive"]),
])
def test_bad_flags_give_a_one_line_error(run_in_process, flags, words):
    result = run_in_process("benchmarks/inference.py", *flags)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("inference.py: error:") and all(word in result.stderr for word in words)
