"""The benchmark scripts keep their interface (no wall time is asserted)."""

import json

import pytest
import torch

from modeling.detection_ops import native_ops_available
from tests.conftest import run_script


@pytest.mark.slow
@pytest.mark.parametrize("amp", ["off", "fp16"])
def test_search_step_json_has_the_documented_keys(amp):
    result = run_script("benchmarks/search_step.py", "--filter_multiplier", "1",
                        "--crop_size", "32", "--batch_size", "2", "--num_classes", "3", "--num_layers", "2",
                        "--steps", "1", "--warmup", "0", "--amp", amp, "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    for key in ("weight_step_s", "arch_step_s", "peak_rss_mb", "forward_gmacs", "images_per_s",
                "saved_for_backward_mb"):
        assert figures[key] > 0, key
    assert figures["filter_multiplier"] == 1 and figures["num_layers"] == 2 and figures["amp"] == amp


@pytest.mark.slow
def test_training_loop_reports_seconds_per_step_of_both_stages():
    smaller = ["--filter_multiplier", "2", "--crop_size", "32"]  # after --: both stages, after their own flags
    result = run_script("benchmarks/training_loop.py", "--epochs", "2",
                        "--samples", "8", "--threads", "1", "--json", "--", *smaller)
    assert result.returncode == 0, result.stderr
    figures = [json.loads(line) for line in result.stdout.splitlines()]
    assert [f["stage"] for f in figures] == ["search", "retrain"]
    assert [f["steps_per_epoch"] for f in figures] == [1, 2]
    assert all(f["step_s"] > 0 and f["wall_s"] > f["step_s"] and f["flags"] == " ".join(smaller) for f in figures)
    assert all(isinstance(f["first_epoch_extra_s"], float) for f in figures)


@pytest.mark.slow
def test_candidate_throughput_compares_the_stage0_cache_with_none():
    search = ["--synthetic_train_samples", "12", "--synthetic_val_samples", "2", "--synthetic_size", "40",
              "--batch-size", "4", "4", "--crop-size", "32", "32", "--resize-side", "32", "32", "--val-crop-size", "32",
              "--val-resize-side", "32", "--num-segm-epochs", "1", "1", "--val-every", "1", "1"]
    result = run_script("benchmarks/candidate_throughput.py", "--candidates", "2",
                        "--threads", "1", "--json", "--", *search)
    assert result.returncode == 0, result.stderr
    cached, uncached = (json.loads(line) for line in result.stdout.splitlines())
    assert (cached["setting"], uncached["setting"]) == ("cached", "uncached")
    assert cached["cache_mib"] > 0 and uncached["cache_mib"] == 0
    for figures in (cached, uncached):
        assert figures["candidates"] == 2 and figures["reached_stage_1"] <= 2
        rounding = 0.006 / figures["candidate_s"]  # candidate_s is rounded to 0.01 s
        assert figures["candidates_per_hour"] == pytest.approx(3600 / figures["candidate_s"], rel=rounding)
        assert figures["outside_s"] > 0 and figures["peak_rss_mib"] > 100


@pytest.mark.slow
def test_candidate_throughput_names_a_failed_search():
    result = run_script("benchmarks/candidate_throughput.py", "--settings",
                        "cached", "--", "--val-every", "3", "3")
    assert result.returncode == 1 and "the search failed" in result.stderr
    assert "--val-every 3 3" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_panoptic_search_reports_the_supernet_iteration_and_one_candidate_at_the_sizes_given():
    sizes = {"widths": [8, 16, 32, 64, 128], "stage_repeats": [1, 1, 2, 1], "fpn_channels": 32, "subnet_channels": 32,
             "image_size": 64, "batch_size": 2, "rpn_proposals": 50, "rois_per_image": 32, "held_out": 2,
             "bn_batches": 1}
    flags = [text for key, value in sizes.items()
             for text in ["--" + key.replace("_", "-"), *map(str, value if isinstance(value, list) else [value])]]
    result = run_script("benchmarks/panoptic_search.py", *flags, "--steps", "1",
                        "--warmup", "0", "--threads", "1", "--json", "--profile")
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    figures = json.loads(line)
    assert {key: figures[key] for key in sizes} == sizes
    iteration, candidate = figures["profile"]["supernet_iteration"], figures["profile"]["candidate_evaluation"]
    for part in ("backbone", "FPN", "RPN", "box head", "mask head", "semantic subnet", "attentions",
                 "loss (segmentation)", "NMS (ours)", "RoIAlign (ours)"):
        assert iteration[part]["forward"] > 0, part
    for part in ("backbone", "FPN", "box head", "mask head", "semantic subnet", "attentions", "RoIAlign (ours)"):
        assert iteration[part]["backward"] > 0, part  # every trained part's backward is charged back to it
    assert all("backward" not in times for times in candidate.values())  # scoring runs no backward
    assert candidate["backbone"]["forward"] > 0 and "loss (segmentation)" not in candidate
    assert figures["device"] == "cpu" and figures["threads"] == 1 and figures["steps"] == 1
    assert figures["compile"] is False and len(figures["iteration_s_each"]) == 1
    assert figures["supernet_iteration_s"] == pytest.approx(figures["iteration_s_each"][0], abs=1e-3)
    for key in ("weights", "supernet_iteration_s", "images_per_s", "candidate_eval_s", "peak_rss_mb"):
        assert figures[key] > 0, key
    rounding = 0.0001 / figures["supernet_iteration_s"]  # the iteration is rounded to 0.1 ms
    assert figures["images_per_s"] == pytest.approx(2 / figures["supernet_iteration_s"], rel=rounding + 1e-3)


def test_panoptic_search_refuses_a_width_groupnorm_cannot_split(run_in_process):
    result = run_in_process("benchmarks/panoptic_search.py", "--fpn-channels", "48")
    assert result.returncode == 2 and "--fpn-channels 48: must be a multiple of 32" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_detection_ops_reports_every_case_with_the_native_column_only_where_the_kernels_load():
    tiny = ["--nms-boxes", "50", "--roi-count", "8", "--roi-channels", "4", "--roi-map", "16", "--mask-count", "4",
            "--mask-size", "32", "--deform-in", "4", "--deform-out", "4", "--deform-batch", "1", "--deform-map", "8"]
    result = run_script("benchmarks/detection_ops.py", *tiny, "--repeats", "2",
                        "--warmup", "0", "--threads", "1", "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    figures = [json.loads(line) for line in result.stdout.splitlines()]
    assert [f["case"] for f in figures] == ["nms", "roi_align", "roi_align_mask_targets", "deform_conv2d"]
    echoed = [{"boxes": 50}, {"rois": 8, "channels": 4, "map": 16}, {"masks": 4, "mask_size": 32},
              {"in_channels": 4, "out_channels": 4, "batch": 1, "map": 8}]
    assert [{key: f["sizes"][key] for key in sizes} for f, sizes in zip(figures, echoed)] == echoed
    native = native_ops_available()
    for f in figures:
        assert f["ours_s"] > 0 and f["threads"] == 1, f
        assert (f["native_s"] is None) == (not native), f
        assert (f["max_abs_diff"] is None) == (not native), f
        if native:
            assert f["native_s"] > 0 and f["max_abs_diff"] < 1e-3, f
            # the backward cases compare their input gradients too
            assert (f["grad_max_abs_diff"] is None) == (f["case"] in ("nms", "roi_align_mask_targets")), f
        else:
            assert f["grad_max_abs_diff"] is None and f["ours_over_native"] is None, f


@pytest.mark.slow
def test_detection_ops_table_says_unavailable_where_the_native_kernels_do_not_load():
    result = run_script("benchmarks/detection_ops.py", "--cases", "nms",
                        "--nms-boxes", "20", "--repeats", "1", "--warmup", "0", "--threads", "1")
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.split()[:4] == ["case", "sizes", "ours_s", "native_s"] and row.startswith("nms ")
    assert ("unavailable" in row) == (not native_ops_available())


def test_part_profile_charges_forward_and_backward_to_the_part_that_ran_them():
    import torch.nn.functional as F

    from benchmarks.part_profile import OTHER, PartProfile

    torch.manual_seed(0)
    first, second, frozen = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.Conv2d(3, 3, 1)
    frozen.requires_grad_(False)
    x = torch.randn(2, 3, 16, 16)
    relu = F.relu
    with PartProfile({"first": [first], "second": [second], "frozen": [frozen]},
                     functions={"relu": [(F, "relu")]}) as profile:
        with torch.no_grad():
            context = frozen(x)
        (F.relu(second(F.relu(first(x + context)))).sum() * 2).backward()
    seconds = profile.seconds
    for part in ("first", "second", "relu"):
        assert seconds[part]["forward"] > 0 and seconds[part]["backward"] > 0, part
    assert "backward" not in seconds["frozen"]  # run under no_grad: nothing of it in backward
    assert seconds[OTHER]["forward"] > 0  # the addition, the sum and the product belong to no part
    assert F.relu is relu and not first._forward_hooks and not first._forward_pre_hooks  # all put back
    table = profile.table("toy").splitlines()
    assert table[0].split()[0] == "toy" and [row.split()[0] for row in table[1:5]] == ["first", "second", "frozen",
                                                                                         "relu"]


def test_controller_update_times_both_ways_at_each_filling(run_in_process, monkeypatch):
    from search.nas_segm import agents

    monkeypatch.setattr(agents, "PPO_BUFFER", 8)
    result = run_in_process("benchmarks/controller_update.py", "--spaces", "cvpr", "--filled", "1", "8",
                            "--repeats", "1", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(row["space"], row["filled"]) for row in rows] == [("cvpr", 1), ("cvpr", 8)]
    assert all(row["update_s"] > 0 and row["every_backward_s"] > 0 and row["speedup"] > 0 for row in rows)
    refused = run_in_process("benchmarks/controller_update.py", "--filled", "9")
    assert refused.returncode == 2 and "--filled takes 1..8" in refused.stderr
