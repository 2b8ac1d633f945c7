"""Scheduled drop-path (Zoph et al. 2018), which the paper uses for its best Cityscapes results.

During training each op's output inside a cell is zeroed for a whole sample with probability p and
scaled by 1 / (1 - p) otherwise, so its expectation is unchanged; identity edges are never dropped.
p grows linearly from 0 to ``--drop_path_prob`` over training. Evaluation is untouched.
"""

from __future__ import annotations

import torch


def drop_path(x: torch.Tensor, probability: float, training: bool) -> torch.Tensor:
    """Zero whole samples of ``x`` with ``probability`` (training only), rescaling the survivors."""
    if not training or probability <= 0.0:
        return x
    keep = 1.0 - probability
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep


def scheduled_probability(final: float, step: int, total_steps: int) -> float:
    """The drop probability at ``step`` of ``total_steps``: linear from 0 to ``final``."""
    return final * min(step, total_steps) / max(total_steps, 1)
