"""How the decoder search's controller learns from rewards: PPO (the original's default) and REINFORCE with a
moving-average baseline (the original's ``src/rl/gradient_estimators.py``), and the random-search baseline that does
not learn at all.

Both keep a baseline, an exponential moving average of the rewards (decay 0.95, starting at the first
reward), and take Adam steps (lr 1e-4) with the gradient norm clipped to 2. Every piece of their state,
the random order of PPO's steps included, is in ``state_dict``, so a resumed search updates exactly as an
uninterrupted one. (The original's REINFORCE could not run: its update unpacked the wrong number of values.)
"""

from __future__ import annotations

import math
from typing import Any

import torch

from search.nas_segm.controller import DecoderController, decision_sizes

BASELINE_DECAY, LEARNING_RATE, MAX_GRAD_NORM = 0.95, 1e-4, 2.0
PPO_BUFFER, PPO_CLIP = 100, 0.1


class RewardBaseline:
    """The exponential moving average of the rewards (``decay``), starting at the first reward."""

    def __init__(self, baseline_decay: float = BASELINE_DECAY) -> None:
        self.baseline_decay = baseline_decay
        self.baseline: float | None = None

    def _update_baseline(self, reward: float) -> float:
        self.baseline = reward if self.baseline is None else self.baseline_decay * self.baseline + (
            1 - self.baseline_decay) * reward
        return self.baseline


class Agent(RewardBaseline):
    """The controller, its optimiser and the reward baseline; ``update`` learns from one scored candidate."""

    def __init__(self, controller: DecoderController, lr: float = LEARNING_RATE, seed: int = 0,
                 baseline_decay: float = BASELINE_DECAY) -> None:
        super().__init__(baseline_decay)
        self.controller = controller
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=lr)
        self.generator = torch.Generator().manual_seed(seed)

    def _step(self, loss: torch.Tensor, zero_gradient: bool = False) -> None:
        """One Adam step on ``loss``. ``zero_gradient``: the caller knows the gradient is exactly zero, so the
        backward pass is skipped and every parameter's gradient set to zero, which is what the backward pass would
        give (every parameter takes part in every evaluation); clipping leaves zeros as they are, and Adam still
        steps (its moments decay), as the original's does."""
        self.optimizer.zero_grad()
        if zero_gradient:
            for parameter in self.controller.parameters():
                parameter.grad = torch.zeros_like(parameter)
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.controller.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()

    def update(self, reward: float, action: list[int], log_prob: float) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.controller.state_dict(), "optimizer": self.optimizer.state_dict(),
                "baseline": self.baseline, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]
        self.generator.set_state(state["generator"])


class Reinforce(Agent):
    """One step on ``-log_prob(action) * (reward - baseline)``, the baseline updated with this reward first."""

    def update(self, reward: float, action: list[int], log_prob: float) -> None:
        advantage = reward - self._update_baseline(reward)
        new_log_prob, _ = self.controller.evaluate(action)
        self._step(-new_log_prob * advantage)


class PPO(Agent):
    """The original's PPO: a ring buffer of the last 100 (action, log-probability at sampling, reward), empty
    slots zero; each update recomputes every slot's advantage against the new baseline and takes one clipped
    step per slot, in a random order. (Empty slots contribute no gradient, so their steps skip the backward pass,
    but Adam still steps on them; the first update changes nothing, its one real advantage being 0.)"""

    def __init__(self, controller: DecoderController, lr: float = LEARNING_RATE, seed: int = 0,
                 baseline_decay: float = BASELINE_DECAY) -> None:
        super().__init__(controller, lr, seed, baseline_decay)
        self.actions = torch.zeros(PPO_BUFFER, len(controller.sizes), dtype=torch.long)
        self.old_log_probs = torch.zeros(PPO_BUFFER)
        self.rewards = torch.zeros(PPO_BUFFER)
        self.inserted = 0

    def update(self, reward: float, action: list[int], log_prob: float) -> None:
        baseline = self._update_baseline(reward)
        slot = self.inserted % PPO_BUFFER
        self.actions[slot], self.old_log_probs[slot], self.rewards[slot] = torch.tensor(action), log_prob, reward
        self.inserted += 1
        advantages = self.rewards - baseline
        for index in torch.randperm(PPO_BUFFER, generator=self.generator).tolist():
            new_log_prob, _ = self.controller.evaluate(self.actions[index].tolist())
            ratio = torch.exp(new_log_prob - self.old_log_probs[index])
            advantage = advantages[index]
            clipped = ratio.clamp(1 - PPO_CLIP, 1 + PPO_CLIP)
            # The minimum is constant, with a gradient of exactly zero, where the advantage is 0 or the clipped
            # term is chosen outside the clip range: every empty slot (ratio far below 0.9, advantage -baseline).
            constant = bool(advantage == 0 or (clipped != ratio and clipped * advantage < ratio * advantage))
            self._step(-torch.min(ratio * advantage, clipped * advantage), zero_gradient=constant)

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"actions": self.actions.clone(), "old_log_probs": self.old_log_probs.clone(),
                                       "rewards": self.rewards.clone(), "inserted": self.inserted}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.actions, self.old_log_probs = state["actions"].clone(), state["old_log_probs"].clone()
        self.rewards, self.inserted = state["rewards"].clone(), state["inserted"]


class UniformPolicy:
    """The policy of random search: every decision uniform over its choices, independently, so every action of the
    space is equally likely (the controller's own action space, hence the same decoders). Random search with the
    same candidate budget is the baseline a learned controller must beat (Sciuto et al., ICLR 2020; Li and
    Talwalkar, UAI 2019). It has the controller's ``sample``/``evaluate`` and no parameters."""

    def __init__(self, space: str) -> None:
        self.space = space
        self.sizes = decision_sizes(space)
        self.log_prob = -sum(math.log(size) for size in self.sizes)  # of every action alike

    def evaluate(self, action: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probability, entropy) of ``action``: the same for every valid action."""
        if len(action) != len(self.sizes) or not all(0 <= choice < size for choice, size in zip(action, self.sizes)):
            raise ValueError(f"not a {self.space} action: {action}")
        return torch.tensor(self.log_prob), torch.tensor(-self.log_prob)

    def sample(self, generator: torch.Generator | None = None) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        action = [int(torch.randint(size, (), generator=generator)) for size in self.sizes]
        return (action, *self.evaluate(action))


class RandomSearch(RewardBaseline):
    """The random agent: samples uniformly and learns nothing, so the candidates of a search depend on ``--seed``
    alone. It keeps the reward baseline only so that its candidate log reads like the others'."""

    def __init__(self, space: str, baseline_decay: float = BASELINE_DECAY) -> None:
        super().__init__(baseline_decay)
        self.controller = UniformPolicy(space)

    def update(self, reward: float, action: list[int], log_prob: float) -> None:
        self._update_baseline(reward)

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.baseline = state["baseline"]


LEARNING_AGENTS = {"ppo": PPO, "reinforce": Reinforce}
AGENTS = (*LEARNING_AGENTS, "random")


def make_agent(name: str, space: str, hidden: int = 100, lr: float = LEARNING_RATE, seed: int = 0,
               baseline_decay: float = BASELINE_DECAY) -> Agent | RandomSearch:
    """The search's agent ``name`` (one of ``AGENTS``) over decoder space ``space``; a learning agent gets a fresh
    LSTM controller drawn from torch's global generator."""
    if name == "random":
        return RandomSearch(space, baseline_decay)
    return LEARNING_AGENTS[name](DecoderController(space, hidden), lr=lr, seed=seed, baseline_decay=baseline_decay)
