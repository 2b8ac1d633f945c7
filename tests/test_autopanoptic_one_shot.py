"""Auto-Panoptic's one-shot logic (the original's engine/trainer.py, solver/build.py, engine/architecture_search.py): the fair sampler
uses every op equally in every window and is a pure function of (seed, iteration); accumulation steps after
iterations 12, 24, ...; the LR groups and the warm-up cosine match hand-computed values; the greedy search ranks,
scores and breaks ties as the original, and resumes from its state to the uninterrupted result. The random search
draws uniform paths (chi-square), keeps the best-scored one and resumes the same way."""

import io
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from torch import nn

from search.autopanoptic.one_shot import (FairPathSampler, GreedyPathSearch, RandomPathSearch, ends_accumulation,
                                          lr_param_groups, ops_by_score, optimizer_steps, original_group_of,
                                          rank_scores, starts_accumulation, uniform_paths, warmup_cosine_factor,
                                          warmup_cosine_scheduler, window_length)

AUTOPANOPTIC = [4] * 40 + [6] * 7 + [3] * 9  # backbone blocks, head layers, inter-modular layers
SMALL = [4, 4, 6, 6, 3, 3]


def run(search, evaluate, on_evaluated=None):
    """Score the search's pending candidates in order, as the search stage does on one process; an exception from
    ``evaluate`` (or a non-finite fitness) propagates with nothing recorded for that path."""
    for path in search.pending():
        search.record(path, evaluate(path))
        if on_evaluated is not None:
            on_evaluated(path, search.fitness[path])
    return search.architecture()


def test_the_window_of_the_original_search_space_is_12():
    assert window_length(AUTOPANOPTIC) == 12
    assert window_length([6] * 7 + [3] * 9) == 6  # backbone not searched


def test_every_op_of_every_layer_is_used_equally_in_every_window():
    sampler = FairPathSampler(AUTOPANOPTIC, seed=3)
    for window in range(1, 21):
        paths = np.array([sampler.path(iteration) for iteration in range(12 * window, 12 * window + 12)])
        for layer, ops in enumerate(AUTOPANOPTIC):
            assert np.bincount(paths[:, layer], minlength=ops).tolist() == [12 // ops] * ops, (window, layer)


def test_each_block_of_n_rows_of_a_layer_is_a_permutation():
    sampler = FairPathSampler(AUTOPANOPTIC, seed=3)
    for window in range(5):
        matrix = sampler.window(window)
        assert matrix.shape == (12, len(AUTOPANOPTIC))
        for layer, ops in enumerate(AUTOPANOPTIC):
            for start in range(0, 12, ops):
                assert sorted(matrix[start:start + ops, layer].tolist()) == list(range(ops)), (window, layer, start)


def test_iterations_index_the_windows_as_the_original():
    sampler = FairPathSampler(AUTOPANOPTIC, seed=3)
    first, second, third = (sampler.window(k).copy() for k in range(3))
    assert [sampler.path(it) for it in range(1, 12)] == [tuple(row) for row in first[1:12]]
    assert [sampler.path(it) for it in range(12, 24)] == [tuple(row) for row in second]
    assert sampler.path(24) == tuple(third[0])
    with pytest.raises(ValueError):
        sampler.path(0)


def test_an_optimizer_step_sums_the_offset_window():
    """The quirk kept: the step after iterations 13..24 sums rows 1..11 of window 1 and row 0 of window 2, so its
    op counts are not balanced in general."""
    sampler = FairPathSampler(AUTOPANOPTIC, seed=3)
    step_paths = np.array([sampler.path(it) for it in range(13, 25)])
    expected = np.concatenate([sampler.window(1)[1:], sampler.window(2)[:1]])
    assert np.array_equal(step_paths, expected)
    balanced = [np.bincount(step_paths[:, layer], minlength=ops).tolist() == [12 // ops] * ops
                for layer, ops in enumerate(AUTOPANOPTIC)]
    assert not all(balanced)


def test_the_path_is_a_pure_function_of_seed_and_iteration():
    walked, other = FairPathSampler(AUTOPANOPTIC, seed=11), FairPathSampler(AUTOPANOPTIC, seed=11)
    walk = [walked.path(iteration) for iteration in range(1, 1001)]
    assert walk[:200] == [other.path(iteration) for iteration in range(1, 201)]
    assert FairPathSampler(AUTOPANOPTIC, seed=11).path(1000) == walk[-1]
    assert FairPathSampler(AUTOPANOPTIC, seed=11).path(437) == walk[436]
    assert FairPathSampler(AUTOPANOPTIC, seed=12).path(1000) != walk[-1]
    assert walked.path(12) != walked.path(24)  # each window is drawn anew


def test_gradients_accumulate_over_iterations_1_to_12_13_to_24():
    steps = [it for it in range(1, 37) if ends_accumulation(it, 12)]
    zero_grads = [it for it in range(1, 37) if starts_accumulation(it, 12)]
    assert steps == [12, 24, 36]
    assert zero_grads == [1, 13, 25]
    assert optimizer_steps(90000, 12) == 7500
    assert sum(ends_accumulation(it, 12) for it in range(1, 90001)) == 7500


def toy_parameters():
    names = ["backbone.first_conv.0.weight", "backbone.first_conv.1.bias", "backbone.features.0.branch_main.0.weight",
             "backbone.features.0.branch_main.1.bias", "backbone.features.0.frozen.weight", "fpn.fpn_inner2.weight",
             "roi_heads.mask.feature_extractor.AutoPanoptic_mask_fcn1.0.weight",
             "roi_heads.mask.feature_extractor.AutoPanoptic_mask_fcn1.1.weight", "seg_branch.subnet0_1.0.weight",
             "f2b.inter_layer0.fc.0.weight", "rpn.head.conv.weight", "rpn.head.conv.bias"]
    named = [(name, nn.Parameter(torch.zeros(1))) for name in names]
    named[4][1].requires_grad_(False)
    return named


def lr_and_decay_by_name(named, groups):
    name_of = {id(param): name for name, param in named}
    return {name_of[id(param)]: (group["lr"], group["weight_decay"]) for group in groups for param in group["params"]}


def test_supernet_lr_groups_divide_the_base_lr_and_biases_take_0_04():
    named = toy_parameters()
    got = lr_and_decay_by_name(named, lr_param_groups(named, original_group_of, base_lr=0.02, weight_decay=1e-4))
    expected = {"backbone.first_conv.0.weight": (0.0016666666666666667, 1e-4),  # 0.02 / 12
                "backbone.first_conv.1.bias": (0.04, 0.0),
                "backbone.features.0.branch_main.0.weight": (0.0066666666666666667, 1e-4),  # 0.02 / 3
                "backbone.features.0.branch_main.1.bias": (0.04, 0.0),
                "fpn.fpn_inner2.weight": (0.0016666666666666667, 1e-4),
                "roi_heads.mask.feature_extractor.AutoPanoptic_mask_fcn1.0.weight": (0.01, 1e-4),  # 0.02 / 2
                "roi_heads.mask.feature_extractor.AutoPanoptic_mask_fcn1.1.weight": (0.01, 1e-4),
                "seg_branch.subnet0_1.0.weight": (0.01, 1e-4),
                "f2b.inter_layer0.fc.0.weight": (0.005, 1e-4),  # 0.02 / 4
                "rpn.head.conv.weight": (0.0016666666666666667, 1e-4),
                "rpn.head.conv.bias": (0.04, 0.0)}
    assert got.keys() == expected.keys()  # the frozen parameter is left out
    for name, (lr, decay) in expected.items():
        assert got[name] == (pytest.approx(lr, rel=1e-12), decay), name


def test_a_retrain_divides_nothing_but_still_raises_the_bias_lr():
    named = toy_parameters()
    got = lr_and_decay_by_name(named, lr_param_groups(named, None, base_lr=0.02, weight_decay=1e-4))
    for name, (lr, decay) in got.items():
        assert (lr, decay) == ((0.04, 0.0) if name.endswith("bias") else (0.02, 1e-4)), name


def test_a_caller_given_classification_is_used_and_checked():
    named = [("a.weight", nn.Parameter(torch.zeros(1))), ("b.weight", nn.Parameter(torch.zeros(1)))]
    groups = lr_param_groups(named, lambda name: "inter" if name.startswith("a") else "stem", base_lr=0.02)
    assert {group["name"]: group["lr"] for group in groups} == {"inter": 0.005, "stem": pytest.approx(0.02 / 12)}
    with pytest.raises(ValueError, match="no LR divisor"):
        lr_param_groups(named, lambda name: "decoder", base_lr=0.02)


def test_warmup_rises_from_a_tenth_of_the_base_then_the_cosine_falls_to_zero():
    assert warmup_cosine_factor(0, 90000, 3000, 0.1) == pytest.approx(0.1)
    assert warmup_cosine_factor(1500, 90000, 3000, 0.1) == pytest.approx(0.55)  # 0.1 * 0.5 + 0.5
    assert warmup_cosine_factor(2999, 90000, 3000, 0.1) == pytest.approx(0.9997)  # the base's, not a cosine's
    assert warmup_cosine_factor(3000, 90000, 3000, 0.1) == 1.0
    assert warmup_cosine_factor(24750, 90000, 3000, 0.1) == pytest.approx(0.8535533905932737)  # (1 + cos(pi/4)) / 2
    assert warmup_cosine_factor(46500, 90000, 3000, 0.1) == pytest.approx(0.5)
    assert warmup_cosine_factor(90000, 90000, 3000, 0.1) == 0.0


def test_the_scheduler_applies_the_factor_to_every_group():
    named = toy_parameters()
    optimizer = torch.optim.SGD(lr_param_groups(named, original_group_of, base_lr=0.02), lr=0.02, momentum=0.9)
    scheduler = warmup_cosine_scheduler(optimizer, max_iter=100, warmup_iters=10, warmup_factor=0.1)
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs["bias"] == pytest.approx(0.004) and lrs["inter"] == pytest.approx(0.0005)
    for _ in range(55):
        optimizer.step()
        scheduler.step()
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs["bias"] == pytest.approx(0.02) and lrs["backbone_choice"] == pytest.approx(0.02 / 3 / 2)


def test_candidates_score_by_fitness_descending_ties_to_the_earlier():
    assert rank_scores([0.3, 0.5, 0.5, 0.1]) == [1, 3, 2, 0]
    assert rank_scores([2.0] * 4) == [3, 2, 1, 0]


def test_a_layers_ops_rank_by_score_ties_to_the_higher_index():
    assert ops_by_score([5, 7, 7, 1]) == [2, 1, 0, 3]
    assert ops_by_score([0, 0, 0]) == [2, 1, 0]


def test_each_cycle_is_fair_and_adds_66_to_every_layer():
    search = GreedyPathSearch(AUTOPANOPTIC, cycles=2, seed=5)
    for cycle in search.candidates:
        paths = np.array(cycle)
        assert paths.shape == (12, len(AUTOPANOPTIC))
        for layer, ops in enumerate(AUTOPANOPTIC):
            assert np.bincount(paths[:, layer], minlength=ops).tolist() == [12 // ops] * ops
    rng = np.random.default_rng(0)
    fitness = {path: float(rng.uniform()) for cycle in search.candidates for path in cycle}
    totals = []
    run(search, lambda path: fitness[path], on_evaluated=lambda path, value: totals.append(
        [int(board.sum()) for board in search.scoreboard()]))
    assert all(total == [0] * len(AUTOPANOPTIC) for total in totals[:11])
    assert totals[11] == [66] * len(AUTOPANOPTIC) and totals[23] == [132] * len(AUTOPANOPTIC)
    first_cycle = search.candidates[0]
    assert sorted(rank_scores([fitness[path] for path in first_cycle])) == list(range(12))


def test_the_search_finds_the_best_op_of_every_layer_of_an_additive_fitness():
    """Fitness: how many layers use their preferred op. (Rank scores are noisy: with 20 cycles this finds every
    preferred op for 300 of 300 seeds tried, with 5 for about 80%.)"""
    preferred = (2, 0, 5, 1, 0, 2)
    search = GreedyPathSearch(SMALL, cycles=20, seed=2)
    found = run(search, lambda path: float(sum(op == best for op, best in zip(path, preferred))))
    assert found == preferred
    assert search.architecture() == search.top_models()[0]


def hand_built_search():
    """Two cycles of three candidates over two 3-op layers, fitness chosen so the scoreboard is known."""
    search = GreedyPathSearch([3, 3], cycles=0, seed=0)
    search.load_state_dict({"choices_per_layer": [3, 3],
                            "candidates": [[[0, 2], [1, 0], [2, 1]], [[0, 0], [1, 1], [2, 2]]],
                            "fitness": [[[0, 2], 0.9], [[1, 0], 0.5], [[2, 1], 0.1],
                                        [[0, 0], 0.2], [[1, 1], 0.8], [[2, 2], 0.5]]})
    return search


def test_the_scoreboard_and_the_three_models_match_a_hand_count():
    search = hand_built_search()
    # cycle 0 scores 2, 1, 0; cycle 1 scores 0, 2, 1
    assert [board.tolist() for board in search.scoreboard()] == [[2, 3, 1], [1, 2, 3]]
    assert search.top_models() == [(1, 2), (0, 1), (2, 0)]  # k-th best op of each layer
    assert search.architecture() == (1, 2)
    with pytest.raises(ValueError):
        search.top_models(4)


def test_a_tie_on_the_scoreboard_goes_to_the_higher_op():
    search = GreedyPathSearch([2, 2], cycles=0, seed=0)
    search.load_state_dict({"choices_per_layer": [2, 2], "candidates": [[[0, 0], [1, 1]], [[1, 0], [0, 1]]],
                            "fitness": [[[0, 0], 1.0], [[1, 1], 0.0], [[1, 0], 0.0], [[0, 1], 1.0]]})
    assert [board.tolist() for board in search.scoreboard()] == [[2, 0], [1, 1]]
    assert search.architecture() == (0, 1)
    assert search.top_models() == [(0, 1), (1, 0)]


def test_no_result_before_a_cycle_is_complete():
    search = GreedyPathSearch(SMALL, cycles=1, seed=0)
    with pytest.raises(ValueError, match="no cycle"):
        search.architecture()


class Preempted(Exception):
    """Stands for the machine taken away in the middle of an evaluation."""


def additive_fitness(path):
    return float(sum((op * 7 + layer * 3) % 5 for layer, op in enumerate(path)))  # many ties


def counted(calls, fail_after=None):
    def evaluate(path):
        if fail_after is not None and len(calls) == fail_after:
            raise Preempted
        calls.append(path)
        return additive_fitness(path)
    return evaluate


@pytest.mark.parametrize("evaluations_before_failure", [5, 12, 13, 30])
def test_an_interrupted_search_resumes_to_the_uninterrupted_result(evaluations_before_failure):
    uninterrupted_calls = []
    uninterrupted = GreedyPathSearch(SMALL, cycles=3, seed=4)
    run(uninterrupted, counted(uninterrupted_calls))

    first_calls, saved = [], []
    interrupted = GreedyPathSearch(SMALL, cycles=3, seed=4)
    with pytest.raises(Preempted):
        run(interrupted, counted(first_calls, evaluations_before_failure),
            on_evaluated=lambda path, value: saved.append(interrupted.state_dict()))
    state = interrupted.state_dict()
    assert len(state["fitness"]) == evaluations_before_failure  # the failed evaluation is not recorded
    assert state == saved[-1]
    buffer = io.BytesIO()
    torch.save(json.loads(json.dumps(state)), buffer)
    buffer.seek(0)
    restored_state = torch.load(buffer, weights_only=True)

    resumed = GreedyPathSearch(SMALL, cycles=3, seed=999)  # the candidates come from the state
    resumed.load_state_dict(restored_state)
    assert resumed.completed_cycles() == evaluations_before_failure // 12
    second_calls = []
    run(resumed, counted(second_calls))

    assert not set(first_calls) & set(second_calls)
    assert sorted(first_calls + second_calls) == sorted(uninterrupted_calls)
    assert [board.tolist() for board in resumed.scoreboard()] == [
        board.tolist() for board in uninterrupted.scoreboard()]
    assert resumed.top_models() == uninterrupted.top_models()


def test_cached_cycles_are_scored_after_a_resume():
    """The original's partial resume left cached cycles off the scoreboard."""
    search = GreedyPathSearch(SMALL, cycles=2, seed=4)
    with pytest.raises(Preempted):
        run(search, counted([], fail_after=12))
    resumed = GreedyPathSearch(SMALL, cycles=2, seed=4)
    resumed.load_state_dict(search.state_dict())
    assert [int(board.sum()) for board in resumed.scoreboard()] == [66] * len(SMALL)


def test_a_non_finite_fitness_is_refused_and_not_recorded():
    search = GreedyPathSearch(SMALL, cycles=1, seed=0)
    with pytest.raises(ValueError, match="non-finite"):
        run(search, lambda path: math.nan)
    assert search.fitness == {}


def test_a_state_of_another_search_space_is_refused():
    with pytest.raises(ValueError, match="ops per layer"):
        GreedyPathSearch([4, 4], 1, 0).load_state_dict(GreedyPathSearch(SMALL, 1, 0).state_dict())


def test_the_search_draws_its_own_stream_of_the_seed():
    search = GreedyPathSearch(AUTOPANOPTIC, cycles=1, seed=8)
    assert search.candidates[0] != [tuple(row) for row in FairPathSampler(AUTOPANOPTIC, seed=8).window(0)]


def test_random_paths_are_uniform_over_each_layer_and_over_whole_paths():
    paths = uniform_paths(SMALL, 4000, seed=6)
    for layer, ops in enumerate(SMALL):
        counts = np.bincount([path[layer] for path in paths], minlength=ops)
        assert chisquare(counts).pvalue > 1e-3, (layer, counts)
    two_layers = uniform_paths([3, 2], 3000, seed=1)  # all 6 paths equally likely
    counts = [two_layers.count((a, b)) for a in range(3) for b in range(2)]
    assert chisquare(counts).pvalue > 1e-3, counts
    assert uniform_paths(SMALL, 5, seed=6) == paths[:5] and uniform_paths(SMALL, 5, seed=7) != paths[:5]
    assert uniform_paths(SMALL, 5, seed=6) != GreedyPathSearch(SMALL, 1, 6).candidates[0][:5]  # its own stream


def test_the_random_search_keeps_the_best_scored_path_the_earliest_on_a_tie():
    search = RandomPathSearch(SMALL, count=6, seed=2)
    paths = search.candidates[0]
    fitness = {path: float(index % 3) for index, path in enumerate(paths)}  # candidates 2 and 5 tie at 2.0
    assert run(search, fitness.__getitem__) == paths[2]
    assert len(search.fitness) == len(set(paths))


@pytest.mark.parametrize("evaluations_before_failure", [1, 4])
def test_an_interrupted_random_search_resumes_to_the_uninterrupted_result(evaluations_before_failure):
    uninterrupted_calls = []
    expected = run(RandomPathSearch(SMALL, count=6, seed=3), counted(uninterrupted_calls))
    first_calls = []
    interrupted = RandomPathSearch(SMALL, count=6, seed=3)
    with pytest.raises(Preempted):
        run(interrupted, counted(first_calls, evaluations_before_failure))
    resumed = RandomPathSearch(SMALL, count=6, seed=99)  # the candidates come from the state
    resumed.load_state_dict(json.loads(json.dumps(interrupted.state_dict())))
    second_calls = []
    assert run(resumed, counted(second_calls)) == expected
    assert sorted(first_calls + second_calls) == sorted(uninterrupted_calls)
    with pytest.raises(ValueError, match="no candidate"):
        RandomPathSearch(SMALL, count=2, seed=0).architecture()
