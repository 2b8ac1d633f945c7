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
