"""The search-versus-random benchmark: its statistics against independent computations (percentiles by hand and by
scipy, Kendall's tau-b by scipy), the committed results consistent with their own scores, and the benchmark end to
end at toy size, resuming without redoing a finished retrain."""

import json
import math

import numpy as np
import pytest
from scipy.stats import kendalltau, percentileofscore

from benchmarks.search_vs_random import kendall_tau, percentile_of, summarise
from tests.conftest import ROOT, run_script

REQUIRED = ("system", "metric", "searched_scores", "random_scores", "kendall_tau", "commit", "date")


@pytest.mark.parametrize("score, expected", [(2.5, 50.0), (2.0, 37.5), (5.0, 100.0), (0.0, 0.0), (4.0, 87.5)])
def test_percentile_by_hand(score, expected):
    assert percentile_of(score, [1.0, 2.0, 3.0, 4.0]) == expected


def test_percentile_agrees_with_scipy_on_ties():
    rng = np.random.default_rng(0)
    population = rng.integers(0, 5, size=17).astype(float).tolist()
    for score in (-1.0, 0.0, 2.0, 2.5, 4.0, 9.0):
        assert percentile_of(score, population) == pytest.approx(percentileofscore(population, score, kind="mean"))
    with pytest.raises(ValueError, match="empty"):
        percentile_of(1.0, [])


@pytest.mark.parametrize("seed", range(5))
def test_kendall_tau_b_agrees_with_scipy_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    first = rng.integers(0, 4, size=12).astype(float)  # many ties
    second = first + rng.normal(0, 1.5, size=12)
    assert kendall_tau(first.tolist(), second.tolist()) == pytest.approx(kendalltau(first, second).statistic)
    distinct = rng.normal(size=9)
    assert kendall_tau(distinct.tolist(), (-distinct).tolist()) == pytest.approx(-1.0)


def test_kendall_tau_of_a_constant_sequence_is_undefined():
    assert math.isnan(kendall_tau([1.0, 1.0, 1.0], [0.1, 0.3, 0.2]))
    with pytest.raises(ValueError, match="paired"):
        kendall_tau([1.0], [1.0, 2.0])


def test_summary_by_hand():
    summary = summarise([0.5, 0.7], [0.1, 0.2, 0.6, 0.8])
    assert summary["searched_mean"] == pytest.approx(0.6) and summary["searched_std"] == pytest.approx(0.1)
    assert summary["random_median"] == pytest.approx(0.4) and summary["random_spread"] == pytest.approx(0.7)
    assert summary["random_p75"] == pytest.approx(0.65)  # linear interpolation between 0.6 and 0.8
    assert summary["searched_mean_percentile"] == pytest.approx(62.5)  # 2 below, 1 equal of 4
    assert summary["searched_percentiles"] == [50.0, 75.0]
    assert "random_search_mean" not in summary
    with_random_search = summarise([0.5, 0.7], [0.1, 0.2, 0.6, 0.8], [0.2, 0.4])
    assert with_random_search["random_search_mean"] == pytest.approx(0.3)
    assert with_random_search["random_search_std"] == pytest.approx(0.1)
    assert with_random_search["random_search_mean_percentile"] == pytest.approx(50.0)  # 0.1, 0.2 below 0.3 of 4


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "results").glob("search_vs_random_*.json")),
                         ids=lambda path: path.stem)
def test_committed_results_agree_with_their_own_scores(path):
    result = json.loads(path.read_text())
    assert all(key in result for key in REQUIRED)
    assert path.stem == f"search_vs_random_{result['system']}" and path.with_suffix(".png").is_file()
    assert len(result["searched_scores"]) <= len(result["search_seeds"])
    recomputed = summarise(result["searched_scores"], result["random_scores"], result.get("random_search_scores", ()))
    assert recomputed.pop("searched_percentiles") == pytest.approx(result["summary"]["searched_percentiles"])
    assert recomputed == pytest.approx({k: v for k, v in result["summary"].items() if k != "searched_percentiles"})
    architectures = result["architectures"]
    scored = [a for a in architectures if a["scores"]]
    for key, tau in result["kendall_tau_by_estimate"].items():
        estimated = [a for a in scored if key in a]  # the random search's picks are reported without an estimate
        assert len(estimated) == len(scored) - sum(a["label"].startswith("random_search") for a in scored)
        expected = kendall_tau([a[key] for a in estimated], [float(np.mean(a["scores"])) for a in estimated])
        assert tau == pytest.approx(expected, nan_ok=True), key


def benchmark(tmp_path, *flags):
    result = run_script("benchmarks/search_vs_random.py", "--system", "autodeeplab", "--budget", "toy",
                        "--search-seeds", "0", "--threads", "1", "--out-dir", str(tmp_path / "bench"), "--json", *flags)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1]), result.stdout


@pytest.mark.slow
def test_the_benchmark_end_to_end_at_toy_size_and_its_resume(tmp_path, run_in_process):
    first, _ = benchmark(tmp_path, "--random", "1", "--results", str(tmp_path / "results"))
    assert all(key in first for key in REQUIRED) and first["system"] == "autodeeplab"
    assert len(first["searched_scores"]) == 1 and len(first["random_scores"]) == 1
    assert [a["label"] for a in first["architectures"]] == ["searched_seed0", "random_0"]
    assert all(0 <= a["supernet_seed0"] <= 1 for a in first["architectures"])
    assert first["cpu_seconds"]["retrain_random"] > 0 and first["cpu_seconds"]["search"] > 0
    assert first["wall_seconds"].keys() == first["cpu_seconds"].keys()
    assert first["wall_seconds"]["total"] == pytest.approx(sum(v for k, v in first["wall_seconds"].items()
                                                               if k != "total"), abs=0.2)
    assert first["wall_seconds"]["retrain_random"] > 0 and first["wall_seconds"]["estimates"] > 0
    for name in ("search_vs_random_autodeeplab.json", "search_vs_random_autodeeplab.png"):
        assert (tmp_path / "results" / name).is_file()
    assert (tmp_path / "bench" / "result.png").is_file()
    random_0 = json.loads((tmp_path / "bench" / "random_0" / "architecture.json").read_text())
    assert random_0["source"]["strategy"] == "random"
    checkpoints = sorted((tmp_path / "bench" / "retrain").glob("*/checkpoint.pth.tar"))
    written = {path: path.stat().st_mtime_ns for path in checkpoints}

    second, output = benchmark(tmp_path, "--random", "2", "--random-search")
    # Only the new random architecture and the random search's pick are retrained.
    assert output.count("$ python train_new_model.py") == 2 and "random_1_seed0" in output
    assert "random_search_seed0_seed0" in output
    assert "search_seed0: done before" in output and "$ python train_autodeeplab.py" not in output
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in written.items())  # nothing retrained again
    assert second["random_scores"][0] == first["random_scores"][0] and len(second["random_scores"]) == 2
    assert second["searched_scores"] == first["searched_scores"]
    picked = json.loads((tmp_path / "bench" / "random_search_seed0" / "architecture.json").read_text())
    assert picked["source"]["strategy"] == "random" and len(second["random_search_scores"]) == 1
    assert second["architectures"][-1]["label"] == "random_search_seed0"
    assert second["summary"]["random_search_mean"] == second["random_search_scores"][0]
    assert second["cpu_seconds"]["random_search"] > 0 and second["cpu_seconds"]["retrain_random_search"] > 0

    reseeded, output = benchmark(tmp_path, "--random", "1", "--random-seed", "7")
    assert "random_search_scores" not in reseeded and "random_search" not in reseeded["cpu_seconds"]
    assert output.count("$ python train_new_model.py") == 1 and "retrain_random_0_seed0:\n" in output
    assert "retrain_searched_seed0_seed0: done before" in output  # only the random architecture changed
    assert reseeded["searched_scores"] == first["searched_scores"]
    drawn = json.loads((tmp_path / "bench" / "random_0" / "architecture.json").read_text())
    assert drawn["genotype"] != random_0["genotype"]

    other = run_in_process("benchmarks/search_vs_random.py", "--system", "nas-segm", "--budget", "toy", "--out-dir",
                           str(tmp_path / "bench"))
    assert other.returncode == 1 and "holds a benchmark of system 'autodeeplab', not 'nas-segm'" in other.stderr


def test_random_search_runs_each_system_with_the_searchs_own_budget(tmp_path, monkeypatch):
    """The random search's commands, without running them: the decoder search again with ``--agent random`` and the
    same flags; a one-shot supernet scoring as many random architectures as its search scored (Auto-Panoptic) or
    the budget's count (Auto-DeepLab)."""
    from benchmarks.search_vs_random import SYSTEMS, Benchmark, BenchmarkError

    calls = []
    monkeypatch.setattr(Benchmark, "part", lambda self, name, script, flags, run_dir, inputs=(): calls.append(
        (name, script, list(flags), run_dir, list(inputs))) or {"key": "k"})
    searched = tmp_path / "architecture.json"

    nas_segm = SYSTEMS["nas-segm"]
    Benchmark(nas_segm, nas_segm.budgets["default"], tmp_path, 1, None).random_search(3, tmp_path, "key", searched)
    (name, script, flags, run_dir, _), (decode_name, decode_script, decode_flags, _, decode_inputs) = calls
    search_flags = [*nas_segm.budgets["default"].data, *nas_segm.budgets["default"].search]
    assert (name, script, run_dir) == ("random_search_seed3", "train_nas_segm.py", tmp_path / "random_search_seed3")
    assert flags[:len(search_flags)] == search_flags and flags[flags.index("--agent") + 1] == "random"
    assert flags[flags.index("--seed") + 1] == "3" and "--num_candidates" in search_flags
    assert (decode_name, decode_script, decode_inputs) == ("random_search_decode_seed3", "decode_autodeeplab.py", ["k"])
    assert decode_flags == ["--resume", str(run_dir)]

    calls.clear()
    searched.write_text(json.dumps({"source": {"candidates_scored": 24}}))
    monkeypatch.setattr("modeling.architecture_file.load_architecture",
                        lambda path: type("Genotype", (), {"source": json.loads(path.read_text())["source"]}))
    panoptic = SYSTEMS["autopanoptic"]
    panoptic_bench = Benchmark(panoptic, panoptic.budgets["default"], tmp_path, 1, None)
    panoptic_bench.random_search(1, tmp_path / "s", "key", searched)
    (name, script, flags, run_dir, inputs), = calls
    assert (name, script, inputs) == ("random_search_seed1", "decode_autodeeplab.py", ["key"])
    assert flags == ["--resume", str(tmp_path / "s"), "--strategy", "random", "--random-candidates", "24", "--seed",
                     "1", "--out-dir", str(tmp_path / "random_search_seed1")]

    calls.clear()
    deeplab = SYSTEMS["autodeeplab"]
    Benchmark(deeplab, deeplab.budgets["default"], tmp_path, 1, None).random_search(0, tmp_path, "key", searched)
    assert calls[0][2][calls[0][2].index("--random-candidates") + 1] == "10"

    searched.write_text(json.dumps({"source": {}}))
    with pytest.raises(BenchmarkError, match="candidates_scored"):
        panoptic_bench.random_search(0, tmp_path, "k", searched)
