"""The benchmark scripts keep their interface (no wall time is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("amp", ["off", "fp16"])
def test_search_step_json_has_the_documented_keys(amp):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "search_step.py"), "--filter_multiplier", "1",
                             "--crop_size", "32", "--batch_size", "2", "--num_classes", "3", "--num_layers", "2",
                             "--steps", "1", "--warmup", "0", "--amp", amp, "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    for key in ("weight_step_s", "arch_step_s", "peak_rss_mb", "forward_gmacs", "images_per_s",
                "saved_for_backward_mb"):
        assert figures[key] > 0, key
    assert figures["filter_multiplier"] == 1 and figures["num_layers"] == 2 and figures["amp"] == amp


@pytest.mark.slow
def test_training_loop_reports_seconds_per_step_of_both_stages():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "training_loop.py"), "--epochs", "2",
                             "--samples", "8", "--threads", "1", "--json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    figures = [json.loads(line) for line in result.stdout.splitlines()]
    assert [f["stage"] for f in figures] == ["search", "retrain"]
    assert [f["steps_per_epoch"] for f in figures] == [1, 2]
    assert all(f["step_s"] > 0 and f["wall_s"] > f["step_s"] for f in figures)


@pytest.mark.slow
def test_candidate_throughput_compares_the_stage0_cache_with_none():
    search = ["--synthetic_train_samples", "12", "--synthetic_val_samples", "2", "--synthetic_size", "40",
              "--batch-size", "4", "4", "--crop-size", "32", "32", "--resize-side", "32", "32", "--val-crop-size", "32",
              "--val-resize-side", "32", "--num-segm-epochs", "1", "1", "--val-every", "1", "1"]
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "candidate_throughput.py"), "--candidates", "2",
                             "--threads", "1", "--json", "--", *search], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    cached, uncached = (json.loads(line) for line in result.stdout.splitlines())
    assert (cached["setting"], uncached["setting"]) == ("cached", "uncached")
    assert cached["cache_mib"] > 0 and uncached["cache_mib"] == 0
    for figures in (cached, uncached):
        assert figures["candidates"] == 2 and figures["reached_stage_1"] <= 2
        rounding = 0.006 / figures["candidate_s"]  # candidate_s is rounded to 0.01 s
        assert figures["candidates_per_hour"] == pytest.approx(3600 / figures["candidate_s"], rel=rounding)
        assert figures["outside_s"] > 0 and figures["peak_rss_mib"] > 100


def test_candidate_throughput_names_a_failed_search():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "candidate_throughput.py"), "--settings",
                             "cached", "--", "--val-every", "3", "3"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "the search failed" in result.stderr
    assert "--val-every 3 3" in result.stderr and "Traceback" not in result.stderr
