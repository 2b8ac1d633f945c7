"""Scoring and training one sampled candidate: the reward, early termination and Polyak averaging, each on
the worked values of the original code (src/engine/trainer.py, src/utils/helpers.py) or by hand."""

import numpy as np
import pytest
import torch

from engine.trainer import Hook, Trainer
from search.nas_segm.candidates import PolyakAverage, RunningMaxStop, geometric_reward
from tests.test_trainer import ToyStep, toy_loader

WORKED = [[50, 5, 5], [10, 30, 0], [0, 10, 20]]  # rows: ground truth


def test_the_reward_on_the_worked_confusion_matrix():
    omitted = geometric_reward(WORKED, omitted=[0])
    assert omitted["miou"] == pytest.approx(0.558442, abs=1e-6)
    assert omitted["mean_accuracy"] == pytest.approx(0.708333, abs=1e-6)
    assert omitted["fw_iou"] == pytest.approx(0.556586, abs=1e-6)
    assert omitted["reward"] == pytest.approx(0.603832, abs=1e-6)
    assert geometric_reward(torch.tensor(WORKED))["reward"] == pytest.approx(0.660478, abs=1e-6)


def test_a_class_predicted_but_absent_from_the_ground_truth_does_not_inflate_the_accuracy():
    scores = geometric_reward([[10, 0, 0], [0, 10, 5], [0, 0, 0]], omitted=[0])
    assert scores["mean_accuracy"] == pytest.approx(10 / 15)  # the original's code gives 1.333
    assert scores["miou"] == pytest.approx((10 / 15 + 0.0) / 2)  # the false class still costs IoU
    with pytest.raises(ValueError, match="undefined"):
        geometric_reward([[5, 0], [0, 0]], omitted=[0])


def rng(seed=0):
    return np.random.default_rng(seed)


def test_running_max_stop_on_the_worked_values():
    stop = RunningMaxStop(0.01, 0.9)
    assert stop.step(0.5, rng()) is True and stop.maxval == pytest.approx(0.0149) and stop.n_steps == 2
    assert RunningMaxStop(0.01, 0.9).step(0.0, rng()) is False  # never continued at zero
    low = [RunningMaxStop(1.0, 0.9).step(0.05, rng(s)) for s in range(50)]  # v <= 0.1 * average: always stopped
    assert not any(low)


def test_running_max_stop_continues_with_the_stated_probability_and_resumes_exactly():
    # average 1.0 (decay 1 keeps it), delta 0.5, value 0.8: P(continue) = (0.5 - 1 + 0.8) / 0.5 = 0.6
    decisions = [RunningMaxStop(1.0, 0.5, decay=1.0).step(0.8, rng(seed)) for seed in range(4000)]
    assert np.mean(decisions) == pytest.approx(0.6, abs=0.03)
    one, two = RunningMaxStop(), RunningMaxStop()
    for value in (0.2, 0.1, 0.05):
        one.step(value, rng(3))
    two.load_state_dict(one.state_dict())
    draws_one, draws_two = rng(5), rng(5)
    assert ([one.step(v, draws_one) for v in (0.01, 0.02, 0.015) * 20]
            == [two.step(v, draws_two) for v in (0.01, 0.02, 0.015) * 20])
    assert one.state_dict() == two.state_dict()


def test_the_state_moves_the_same_whatever_the_draws():
    one, two = RunningMaxStop(), RunningMaxStop()
    values = [0.3, 0.01, 0.2, 0.002, 0.25] * 30
    [one.step(v, rng(1)) for v in values], [two.step(v, rng(2)) for v in values]
    assert one.state_dict() == two.state_dict()


def test_delta_shrinks_on_the_schedule():
    stop = RunningMaxStop(1e9, 1.0)  # values far below the average: no extra increments
    for _ in range(401):
        stop.step(1.0, rng())
    assert stop.delta == pytest.approx(0.9 * 0.8 * 0.7 * 0.6)


class Weights(Hook):
    def __init__(self, model):
        self.model, self.seen = model, []

    def after_step(self, trainer):
        self.seen.append([p.detach().clone() for p in self.model.parameters()])


def test_polyak_averages_by_hand_and_replaces_the_weights_at_each_epoch_end():
    step = ToyStep()
    start = [p.detach().clone() for p in step.model.parameters()]
    weights = Weights(step.model)
    polyak = PolyakAverage(step.model.parameters(), decay=0.9)
    Trainer(step, toy_loader(), epochs=1, hooks=[weights, polyak]).fit()  # 4 steps
    for index, param in enumerate(step.model.parameters()):
        expected = start[index]
        for seen in weights.seen:
            expected = 0.9 * expected + 0.1 * seen[index]
        assert torch.allclose(param, expected, atol=1e-7)
        assert not torch.allclose(param, weights.seen[-1][index])  # the average, not the last step's weights
