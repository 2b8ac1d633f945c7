"""The decoder search's own state as one object that saves and restores itself, as the engine's other parts do.

``ControllerSearch`` holds what the search learns and where it stands: the agent (controller, optimiser, PPO buffer,
baseline), the early-termination monitors (one per validation point of each stage), every candidate's record, the
next candidate and the failures in a row. The stage script asks it for a round of candidates, has them trained
wherever its processes are, and hands it their records in candidate order; ``state_dict`` is what a checkpoint holds
and ``load_state_dict`` continues a search exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from search.nas_segm.agents import Agent, RandomSearch
from search.nas_segm.candidates import RunningMaxStop
from search.nas_segm.controller import action_to_config
from utils.seeds import derived_seed

SAMPLING, TRAINING, DECIDING, CACHING, CONTROLLER = 1, 2, 3, 4, 5  # keys of the seeds derived from --seed


class ControllerSearch:
    """Sample a round of candidates from the agent's policy, then learn from their records.

    Every candidate's draw uses a generator seeded by its index (``derived_seed(seed, index, SAMPLING)``), so the
    candidates do not depend on how many are trained at once. A failed candidate is recorded and counted as a failure
    in a row, and never reaches the agent."""

    def __init__(self, agent: Agent | RandomSearch, space: str, seed: int, checks: Sequence[int]) -> None:
        """``checks``: the number of validation points of each candidate stage (one monitor each)."""
        self.agent, self.space, self.seed = agent, space, seed
        self.monitors = [[RunningMaxStop() for _ in range(count)] for count in checks]
        self.records: list[dict[str, Any]] = []
        self.next_candidate = 0
        self.failures_in_a_row = 0

    def next_round(self, size: int, total: int) -> range:
        """The indices of the next round: up to ``size`` candidates, never past candidate ``total - 1``."""
        return range(self.next_candidate, min(self.next_candidate + size, total))

    def sample(self, indices: range) -> list[dict[str, Any]]:
        """The round's plans: each candidate's action, decoder config, log-probability and entropy."""
        plans = []
        for index in indices:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, index, SAMPLING))
            action, log_prob, entropy = self.agent.controller.sample(generator)
            plans.append({"candidate": index, "action": action, "config": action_to_config(self.space, action),
                          "log_prob": float(log_prob), "entropy": float(entropy)})
        return plans

    def record(self, plans: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]], learn: bool) -> None:
        """Take the round's ``results`` (one record per plan, in candidate order): the monitors move by every check
        they hold, a scored candidate rewards the agent when ``learn`` (on the process that samples) and its record
        gains the new baseline."""
        for plan, result in zip(plans, results, strict=True):
            for check in result.get("checks", []):  # the state only moves: the draw is unused
                self.monitors[check["stage"]][check["point"]].step(check["reward"], np.random.default_rng(0))
            self.failures_in_a_row = 0 if result["status"] == "ok" else self.failures_in_a_row + 1
            if result["status"] == "ok" and learn:
                self.agent.update(result["reward"], plan["action"], plan["log_prob"])
                result["baseline"] = self.agent.baseline
            self.records.append(result)
        self.next_candidate = plans[-1]["candidate"] + 1 if plans else self.next_candidate

    def state_dict(self) -> dict[str, Any]:
        return {"agent": self.agent.state_dict(), "monitors": [[m.state_dict() for m in stage] for stage in self.monitors],
                "candidates": list(self.records), "next_candidate": self.next_candidate,
                "failures_in_a_row": self.failures_in_a_row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        for stage, states in zip(self.monitors, state["monitors"]):
            for monitor, monitor_state in zip(stage, states):
                monitor.load_state_dict(monitor_state)
        self.records = list(state["candidates"])
        self.next_candidate, self.failures_in_a_row = state["next_candidate"], state["failures_in_a_row"]
