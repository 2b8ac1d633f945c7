"""Per-iteration learning-rate schedules: poly (the paper's), step and cosine, each with optional linear warm-up."""

from __future__ import annotations

import math

import torch

SCHEDULES = ("poly", "step", "cosine")


def lr_factor(iteration: int, total: int, schedule: str, poly_power: float = 0.9, step_every: int = 1,
              step_gamma: float = 0.1, warmup_iters: int = 0, warmup_start: float = 0.1) -> float:
    """The multiplier of the base learning rate at ``iteration`` (0-based) of ``total``.

    Warm-up multiplies the schedule by a factor rising linearly from ``warmup_start`` to 1 over
    ``warmup_iters`` iterations.
    """
    progress = min(iteration, total) / max(total, 1)
    if schedule == "poly":
        factor = (1.0 - progress) ** poly_power
    elif schedule == "step":
        factor = step_gamma ** (iteration // step_every)
    elif schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    if iteration < warmup_iters:
        factor *= warmup_start + (1.0 - warmup_start) * iteration / warmup_iters
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, total_iters: int, schedule: str, poly_power: float,
                    step_every: int, step_gamma: float, warmup_iters: int,
                    warmup_start: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per iteration; its state (the iteration count) resumes exactly."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda iteration: lr_factor(iteration, total_iters, schedule, poly_power, step_every, step_gamma,
                                               warmup_iters, warmup_start))
