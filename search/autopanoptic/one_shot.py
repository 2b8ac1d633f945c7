"""Auto-Panoptic's one-shot search without the model (Wu et al., NeurIPS 2020, Sec. 3; the original's engine/trainer.py, solver/build.py and engine/architecture_search.py): the fair path
sampler and its gradient-accumulation windows, the per-group learning rates and the warm-up cosine schedule of
supernet training, and the bookkeeping of the path-priority greedy search.

A path is a tuple of op indices, one per choice layer, in the order the caller lists the layers (the original:
40 backbone blocks of 4 ops, then 7 head layers of 6, then 9 inter-modular layers of 3). Iterations are counted
from 1, as the original's ``do_train`` counts them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

OpPath = tuple[int, ...]

# Independent random streams of one seed: the training's path windows, the greedy search's candidate cycles and
# the random search's candidates.
TRAINING_STREAM, SEARCH_STREAM, RANDOM_STREAM = 0, 1, 2

# The original's supernet recipe (its supernet config and solver/build.py).
BASE_LR, BIAS_LR_FACTOR, WEIGHT_DECAY, BIAS_WEIGHT_DECAY = 0.02, 2.0, 1e-4, 0.0
MAX_ITER, WARMUP_ITERS, WARMUP_FACTOR = 90000, 3000, 0.1
ORIGINAL_TOPK = 5  # PathPrioritySearch's default; cfg.NAS.TOPK is never read


def window_length(choices_per_layer: Sequence[int]) -> int:
    """The least common multiple of the layers' op counts (12 for 4/6/3 ops): the fewest paths in which every
    op of every layer can be used equally often."""
    return math.lcm(*choices_per_layer)


class FairPathSampler:
    """The original's fair path sampler (``engine/trainer.py:generate_rng``, ``do_train``), one path per iteration.

    A window is a [L, layers] matrix, L = ``window_length``; row r is one path. Each layer's column is L/n
    independent permutations of 0..n-1 one after another, so in a window every op of a layer is used exactly
    L/n times and each block of n consecutive rows uses every op once.

    Iteration ``it`` takes row ``it % L`` of window ``it // L``, exactly as the original indexes its matrix:
    iterations 1..L-1 use rows 1..L-1 of window 0 (its row 0 is never used), iterations kL..kL+L-1 use window k.

    The one-iteration offset is reproduced (code-exact), not fixed: optimizer steps come after iterations L, 2L,
    ... (``ends_accumulation``), so each step sums rows 1..L-1 of window k and row 0 of window k+1, and the op
    counts per step are balanced only in expectation. Why: it is what the original's ``do_train`` computes, so its
    paths and steps are reproduced exactly (iterations 1..L-1 use rows 1..L-1 of the first window), the scale-down
    keeps it too, and fairness per window, the paper's claim, holds either way.

    Where the original draws each window from NumPy's global state on rank 0 and broadcasts it (and draws a
    fresh one when a run resumes), window k here is drawn from (seed, stream, k) alone: every rank computes the
    same path without communication, and a resumed run continues with the paths it would have used.
    """

    def __init__(self, choices_per_layer: Sequence[int], seed: int, stream: int = TRAINING_STREAM) -> None:
        if not choices_per_layer or min(choices_per_layer) < 1:
            raise ValueError(f"every choice layer needs at least one op, got {list(choices_per_layer)}")
        self.choices_per_layer = tuple(int(n) for n in choices_per_layer)
        self.seed, self.stream = seed, stream
        self.length = window_length(self.choices_per_layer)
        self._last_window: tuple[int, np.ndarray] | None = None  # consecutive iterations share a window

    def window(self, index: int) -> np.ndarray:
        """Window ``index``: a read-only [L, layers] matrix of op indices, row r one path."""
        if self._last_window is None or self._last_window[0] != index:
            rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(self.stream, index)))
            columns = [np.concatenate([rng.permutation(n) for _ in range(self.length // n)])
                       for n in self.choices_per_layer]
            matrix = np.stack(columns, axis=1)
            matrix.flags.writeable = False
            self._last_window = (index, matrix)
        return self._last_window[1]

    def path(self, iteration: int) -> OpPath:
        """The path every sample of ``iteration`` (1-based) uses: a pure function of (seed, stream, iteration)."""
        if iteration < 1:
            raise ValueError(f"iterations are counted from 1, got {iteration}")
        return tuple(int(op) for op in self.window(iteration // self.length)[iteration % self.length])


def starts_accumulation(iteration: int, length: int) -> bool:
    """Whether ``zero_grad`` comes before ``iteration`` (1-based): before 1, L+1, 2L+1, ... (the original's
    ``fwd_idx == 0``)."""
    return (iteration - 1) % length == 0


def ends_accumulation(iteration: int, length: int) -> bool:
    """Whether ``optimizer.step`` comes after ``iteration`` (1-based): after L, 2L, ... (``fwd_idx == L-1``).

    Gradients are summed over the L iterations, the loss undivided; the per-group LR divisions turn the sum
    into a per-use average. The scheduler steps every iteration. A resumed run continues exactly only from a
    checkpoint taken after a step (or one that holds the accumulated gradients): the original's every 2500
    iterations falls mid-window, and its ``fwd_idx`` restarts at -1 on resume.
    """
    return iteration % length == 0


def optimizer_steps(max_iter: int, length: int) -> int:
    """How many optimizer steps ``max_iter`` iterations take (7500 for 90000 and L = 12)."""
    return max_iter // length


# Parameter groups of supernet training and their LR divisors L/n, n the ops a parameter's layer chooses among
# (1 for shared parameters), L = 12 (the original's solver/build.py:make_optimizer).
SUPERNET_LR_DIVISORS: dict[str, float] = {
    "backbone_choice": 12 / 4,  # backbone choice blocks, their BN included
    "stem": 12,  # the backbone's first conv, used by every path
    "mask_choice": 12 / 6,  # mask-head choice layers, their GN included
    "subnet_choice": 12 / 6,  # semantic-subnet choice layers, their GN included
    "inter": 12 / 3,  # the 9 inter-modular attention layers
    "other": 12,  # FPN, RPN, box head, mask predictor, seg score
}


def original_group_of(name: str) -> str:
    """The original's group of a parameter, by substrings of its name tested in this order: ``backbone`` is a
    backbone choice block unless it also contains ``first_conv`` (the stem); ``AutoPanoptic_mask_fcn`` a mask
    choice layer; ``subnet`` a semantic-subnet choice layer; ``inter_layer`` inter-modular attention; anything
    else is shared. (The supernet names its FPN ``fpn``, outside ``backbone``.) A model named otherwise passes
    its own function to ``lr_param_groups``."""
    if "backbone" in name:
        return "stem" if "first_conv" in name else "backbone_choice"
    for marker, group in (("AutoPanoptic_mask_fcn", "mask_choice"), ("subnet", "subnet_choice"),
                          ("inter_layer", "inter")):
        if marker in name:
            return group
    return "other"


def lr_param_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], group_of: Callable[[str], str] | None,
                    base_lr: float = BASE_LR, weight_decay: float = WEIGHT_DECAY,
                    bias_lr_factor: float = BIAS_LR_FACTOR, bias_weight_decay: float = BIAS_WEIGHT_DECAY,
                    divisors: Mapping[str, float] = SUPERNET_LR_DIVISORS) -> list[dict[str, Any]]:
    """Optimizer param groups as the original's ``make_optimizer`` builds them.

    Supernet training (``group_of`` given): a parameter's LR is ``base_lr / divisors[group_of(name)]``, so the
    gradient summed over an accumulation window becomes an average over the paths that used it. A single-model
    retrain (``group_of=None``): no division. Either way every parameter with ``bias`` anywhere in its name
    (conv, BN and GN biases alike) takes ``base_lr * bias_lr_factor`` (0.04), undivided, and
    ``bias_weight_decay`` (0): the original's code does this after the division, so every bias takes 0.04 with weight decay 0, its LR
    undivided. Frozen parameters are left
    out. Each group carries a ``name``: a group of ``divisors``, ``bias``, or ``weights`` for a retrain.
    """
    groups: dict[str, dict[str, Any]] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        if "bias" in name:
            group, lr, decay = "bias", base_lr * bias_lr_factor, bias_weight_decay
        elif group_of is None:
            group, lr, decay = "weights", base_lr, weight_decay
        else:
            group = group_of(name)
            if group not in divisors:
                raise ValueError(f"{name}: group {group!r} has no LR divisor; known: {', '.join(divisors)}")
            lr, decay = base_lr / divisors[group], weight_decay
        groups.setdefault(group, {"name": group, "params": [], "lr": lr, "weight_decay": decay})["params"].append(param)
    return list(groups.values())


def warmup_cosine_factor(iteration: int, max_iter: int = MAX_ITER, warmup_iters: int = WARMUP_ITERS,
                         warmup_factor: float = WARMUP_FACTOR) -> float:
    """The multiplier of each group's LR after ``iteration`` scheduler steps (0 for the first training
    iteration: the original steps its ``WarmupCosineAnnealingLR`` after every iteration).

    Warm-up rises linearly from ``warmup_factor`` to 1 and multiplies the base LR, not a cosine (unlike
    ``engine.lr_schedule``); the cosine starts at 1 at ``warmup_iters`` and reaches 0 (ETA_MIN) at ``max_iter``.
    """
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        return warmup_factor * (1 - alpha) + alpha
    return (1 + math.cos(math.pi * (iteration - warmup_iters) / (max_iter - warmup_iters))) / 2


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, max_iter: int = MAX_ITER,
                            warmup_iters: int = WARMUP_ITERS,
                            warmup_factor: float = WARMUP_FACTOR) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR of ``warmup_cosine_factor``, stepped every iteration; its state (the step count) resumes
    exactly."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda iteration: warmup_cosine_factor(iteration, max_iter, warmup_iters, warmup_factor))


def rank_scores(fitnesses: Sequence[float]) -> list[int]:
    """Each candidate's score in its cycle, in the cycle's order: by fitness descending the best gets len-1 and
    the worst 0; on a tie the earlier candidate ranks higher (the original's sort is stable)."""
    best_first = sorted(range(len(fitnesses)), key=lambda index: fitnesses[index], reverse=True)
    scores = [0] * len(fitnesses)
    for score, index in enumerate(reversed(best_first)):
        scores[index] = score
    return scores


def ops_by_score(layer_scores: Sequence[int]) -> list[int]:
    """One layer's ops, best first, a tie going to the higher op index (the original reverses NumPy's argsort,
    stable on so few elements)."""
    return sorted(range(len(layer_scores)), key=lambda op: (layer_scores[op], op), reverse=True)


class ScoredPathSearch:
    """What a search over paths scored by one fitness keeps: its candidates (in cycles) and the fitness of every
    evaluated candidate, keyed by path (a path met twice is evaluated once). Subclasses say which candidates and
    which architecture the fitnesses choose."""

    def __init__(self, choices_per_layer: Sequence[int], candidates: list[list[OpPath]]) -> None:
        self.choices_per_layer = tuple(int(n) for n in choices_per_layer)
        self.candidates = candidates
        self.fitness: dict[OpPath, float] = {}

    def pending(self) -> list[OpPath]:
        """The candidates without a fitness, cycle by cycle, each path once: what is left to evaluate."""
        left: list[OpPath] = []
        for cycle in self.candidates:
            left.extend(path for path in cycle if path not in self.fitness and path not in left)
        return left

    def record(self, path: OpPath, fitness: float) -> None:
        """Keep ``path``'s fitness; a non-finite one is a ValueError and nothing is kept."""
        fitness = float(fitness)
        if not math.isfinite(fitness):
            raise ValueError(f"path {list(path)}: non-finite fitness {fitness}")
        self.fitness[tuple(path)] = fitness

    def architecture(self) -> OpPath:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Plain lists and floats (for JSON or ``torch.load(weights_only=True)``)."""
        return {"choices_per_layer": list(self.choices_per_layer),
                "candidates": [[list(path) for path in cycle] for cycle in self.candidates],
                "fitness": [[list(path), fitness] for path, fitness in self.fitness.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["choices_per_layer"]) != self.choices_per_layer:
            raise ValueError(f"the state is of a search over {state['choices_per_layer']} ops per layer, "
                             f"this one is over {list(self.choices_per_layer)}")
        self.candidates = [[tuple(int(op) for op in path) for path in cycle] for cycle in state["candidates"]]
        self.fitness = {tuple(int(op) for op in path): float(fitness) for path, fitness in state["fitness"]}


def uniform_paths(choices_per_layer: Sequence[int], count: int, seed: int) -> list[OpPath]:
    """``count`` paths drawn uniformly from the space (each layer's op uniform, independently), from (seed,
    ``RANDOM_STREAM``) alone; the first k of ``count`` are the k of a smaller count."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(RANDOM_STREAM,)))
    return [tuple(int(rng.integers(n)) for n in choices_per_layer) for _ in range(count)]


class RandomPathSearch(ScoredPathSearch):
    """Random search with weight sharing (Li and Talwalkar, UAI 2019): ``count`` uniformly drawn paths, each scored
    by the same fitness as the greedy search's candidates, and the best kept (the earliest drawn on a tie). The
    baseline the greedy search must beat at the same number of candidates; one cycle holds them all."""

    def __init__(self, choices_per_layer: Sequence[int], count: int, seed: int) -> None:
        super().__init__(choices_per_layer, [uniform_paths(choices_per_layer, count, seed)])

    def architecture(self) -> OpPath:
        scored = [path for path in self.candidates[0] if path in self.fitness]
        if not scored:
            raise ValueError("no candidate is evaluated yet")
        return max(scored, key=lambda path: self.fitness[path])  # max keeps the first of equals


class GreedyPathSearch(ScoredPathSearch):
    """The path-priority greedy search's bookkeeping (``engine/architecture_search.py:PathPrioritySearch``).

    Each cycle holds L fairly sampled candidate paths (one window of a ``FairPathSampler`` on the search's own
    stream: every op of a layer in L/n of them). A cycle's candidates score L-1..0 by fitness (``rank_scores``),
    and every layer's scoreboard adds each candidate's score to the op it used, so each layer gains
    0 + 1 + ... + (L-1) per cycle (66 for L = 12). The result is each layer's best op (``architecture``).

    ``state_dict`` holds every cycle's candidates and the fitness of every evaluated candidate, keyed by path (a
    path met twice is evaluated once); the scoreboard is never stored but recomputed from every cycle whose
    candidates all have a fitness. That is the deliberate fix of the original's resume (``PathPrioritySearch.load_checkpoint``): it scored no cached
    cycle when only some were cached, indexed the new cycles' list from the wrong start, dropped the candidates
    of an unfinished cycle and drew new ones. Here a resumed search evaluates only the candidates without a
    fitness and ends with the scoreboard of an uninterrupted run.
    """

    def __init__(self, choices_per_layer: Sequence[int], cycles: int, seed: int) -> None:
        sampler = FairPathSampler(choices_per_layer, seed, SEARCH_STREAM)
        super().__init__(sampler.choices_per_layer, [[tuple(int(op) for op in row) for row in sampler.window(cycle)]
                                                     for cycle in range(cycles)])

    def _scored_cycles(self) -> list[list[OpPath]]:
        return [cycle for cycle in self.candidates if all(path in self.fitness for path in cycle)]

    def completed_cycles(self) -> int:
        """How many cycles have a fitness for every candidate (only these are on the scoreboard)."""
        return len(self._scored_cycles())

    def scoreboard(self) -> list[np.ndarray]:
        """Per layer, each op's summed score over the completed cycles."""
        boards = [np.zeros(n, dtype=np.int64) for n in self.choices_per_layer]
        for cycle in self._scored_cycles():
            for path, score in zip(cycle, rank_scores([self.fitness[path] for path in cycle])):
                for board, op in zip(boards, path):
                    board[op] += score
        return boards

    def top_models(self, count: int | None = None) -> list[OpPath]:
        """The models the original writes (``save_topk``): model k takes every layer's k-th best op, each layer
        ranked on its own (``ops_by_score``). Model 0 is the searched architecture; model 1 takes every layer's
        second-best op and model 2 its third, so they need not be paths any cycle held. ``count`` defaults to
        the original's min(topk 5, fewest ops of a layer) = 3."""
        if self.completed_cycles() == 0:
            raise ValueError("no cycle is fully evaluated yet: the scoreboard is empty")
        fewest_ops = min(self.choices_per_layer)
        count = min(ORIGINAL_TOPK, fewest_ops) if count is None else count
        if not 1 <= count <= fewest_ops:
            raise ValueError(f"can rank 1..{fewest_ops} models, asked for {count}")
        rankings = [ops_by_score(board.tolist()) for board in self.scoreboard()]
        return [tuple(ranking[k] for ranking in rankings) for k in range(count)]

    def architecture(self) -> OpPath:
        """The searched architecture: each layer's highest-scoring op, a tie going to the higher op index."""
        return self.top_models(1)[0]
