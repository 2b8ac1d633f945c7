"""Training and scoring one candidate of a sampled-architecture search (Nekrasov et al.'s decoder search):
the reward, the running-max early termination, and Polyak averaging of the weights.

These are the pieces the original code defines (DrSleep/nas-segm-pytorch: ``helpers/miou_utils.pyx``,
``helpers/utils.py:TaskPerformer``, ``engine/trainer.py:init_polyak/apply_polyak``), written here to do
what the papers intend where the code did otherwise (see each docstring).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.trainer import Hook, Trainer


def geometric_reward(confusion: np.ndarray | torch.Tensor, omitted: Sequence[int] = ()) -> dict[str, float]:
    """The candidate's reward: the geometric mean of mIoU, mean class accuracy and frequency-weighted IoU
    over the classes present, ``omitted`` classes left out (the original omits VOC's background), from a
    confusion matrix [ground truth, prediction].

    A class counts for the IoU mean where it occurs in the ground truth or the predictions, and for the
    accuracy mean where it occurs in the ground truth. (The original gave a class predicted but absent
    from the ground truth an accuracy of 2 and kept it, inflating the mean accuracy.)
    """
    counts = np.asarray(confusion, dtype=np.float64)
    hits, ground_truth, predicted = np.diag(counts), counts.sum(axis=1), counts.sum(axis=0)
    union = ground_truth + predicted - hits
    kept = np.ones(len(counts), dtype=bool)
    kept[list(omitted)] = False
    in_iou, in_accuracy = kept & (union > 0), kept & (ground_truth > 0)
    if not in_accuracy.any():
        raise ValueError("no kept class occurs in the ground truth: the reward is undefined")
    iou = np.divide(hits, union, out=np.zeros_like(hits), where=union > 0)
    accuracy = np.divide(hits, ground_truth, out=np.zeros_like(hits), where=ground_truth > 0)
    miou, mean_accuracy = iou[in_iou].mean(), accuracy[in_accuracy].mean()
    fw_iou = float((iou * ground_truth)[in_iou].sum() / ground_truth[in_iou].sum())
    reward = float(np.cbrt(miou * mean_accuracy * fw_iou))
    return {"reward": reward, "miou": float(miou), "mean_accuracy": float(mean_accuracy), "fw_iou": fw_iou}


class RunningMaxStop:
    """Early termination of poor candidates (the original's ``TaskPerformer``), one per validation point.

    ``step(value)`` keeps an exponential moving average of the values seen (``decay``, starting from
    ``maxval``; the new value included) and says whether the candidate goes on: always when it beats
    the average, else with probability ``(delta - 1 + value / average) / delta`` (clipped to [0, 1]),
    where ``delta`` shrinks as candidates accumulate (x0.9, 0.8, 0.7, 0.6 at the 100th..400th). The
    random draw comes from its own seeded generator, whose state is checkpointed with the rest.
    """

    SCHEDULE = {100: 0.9, 200: 0.8, 300: 0.7, 400: 0.6}

    def __init__(self, maxval: float = 0.01, delta: float = 0.9, decay: float = 0.99, seed: int = 0) -> None:
        self.maxval, self.delta, self.decay, self.n_steps = maxval, delta, decay, 0
        self.rng = np.random.default_rng(seed)

    def step(self, value: float) -> bool:
        self.delta *= self.SCHEDULE.get(self.n_steps, 1.0)
        self.n_steps += 1
        self.maxval = self.decay * self.maxval + (1 - self.decay) * value
        if value > self.maxval:
            self.n_steps += 1  # as the original: a schedule key may be stepped over
            return True
        return bool(value > self.maxval * (1 - self.rng.uniform(0, self.delta)))

    def state_dict(self) -> dict[str, Any]:
        return {"maxval": self.maxval, "delta": self.delta, "decay": self.decay, "n_steps": self.n_steps,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.maxval, self.delta, self.decay, self.n_steps = (state["maxval"], state["delta"], state["decay"],
                                                             state["n_steps"])
        self.rng.bit_generator.state = state["rng"]


class PolyakAverage(Hook):
    """Polyak (exponential moving) averages of ``params``: after every step ``avg = decay * avg + (1 - decay)
    * p``, and at the end of every epoch the averages are copied into the parameters (as the original does;
    BatchNorm buffers are not averaged). Starts from the parameters' values when the loop starts."""

    def __init__(self, params: Iterable[nn.Parameter], decay: float) -> None:
        self.params = list(params)
        self.decay = decay
        self.averages: list[torch.Tensor] = []

    def before_train(self, trainer: Trainer) -> None:
        self.averages = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def after_step(self, trainer: Trainer) -> None:
        for average, param in zip(self.averages, self.params):
            average.mul_(self.decay).add_(param.detach(), alpha=1 - self.decay)

    @torch.no_grad()
    def after_epoch(self, trainer: Trainer) -> None:
        for average, param in zip(self.averages, self.params):
            param.copy_(average)
