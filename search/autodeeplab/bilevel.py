"""Bi-level optimisation of a supernet (DARTS, first order), as Auto-DeepLab searches.

The weights take a step on a batch of one half of the training set (trainA); the architecture
parameters then take a step on a batch of the other half (trainB), in their own object, ``Architect``,
as DARTS keeps them. The step computes no weight gradients, and under several processes the
architecture gradients are averaged by hand (they are kept out of DDP) and the parameters checked
identical on every rank after each step.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader

from engine.distributed import DistributedContext, all_reduce_mean, check_identical
from engine.precision import PrecisionStep
from engine.trainer import SupervisedStep, batch_loss, cycle_batches


def search_optimizers(weights: list[nn.Parameter], architecture: list[nn.Parameter], args: argparse.Namespace,
                      total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer,
                                                 torch.optim.lr_scheduler.LRScheduler]:
    """The paper's optimisers: SGD with momentum and cosine decay (``--lr`` to ``--min_lr`` over the run) for the
    weights, Adam (β = 0.9, 0.999) for the architecture."""
    weight_optimizer = torch.optim.SGD(weights, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    arch_optimizer = torch.optim.Adam(architecture, lr=args.arch_lr, betas=(0.9, 0.999),
                                      weight_decay=args.arch_weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(weight_optimizer, T_max=total_steps, eta_min=args.min_lr)
    return weight_optimizer, arch_optimizer, scheduler


class Architect:
    """The architecture step: ``params`` take an optimizer step on the next batch of ``loader`` (trainB), in
    the epochs from ``first_epoch`` on. ``model`` is the plain network (not DDP-wrapped)."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
                 precision: PrecisionStep, loader: DataLoader, device: torch.device, context: DistributedContext,
                 first_epoch: int) -> None:
        self.model, self.params, self.optimizer, self.precision = model, params, optimizer, precision
        self.loader, self.device, self.context, self.first_epoch = loader, device, context, first_epoch
        self.active = False
        self._batches = None

    def start_epoch(self, epoch: int, steps_done: int) -> None:
        """From ``first_epoch`` on, draw trainB's batches of this epoch (one per step, so a resumed epoch skips
        ``steps_done``); a trainB smaller than trainA restarts its order."""
        self.active = epoch >= self.first_epoch
        self._batches = cycle_batches(self.loader, epoch, steps_done) if self.active else None

    def step(self) -> float:
        images, masks = next(self._batches)
        loss = batch_loss(self.model, images, masks, self.device, self.precision.autocast(), what="architecture")
        self.precision.backward(loss, inputs=self.params)  # no weight gradients are computed
        self.precision.step(self.optimizer, before_step=lambda: all_reduce_mean([p.grad for p in self.params],
                                                                                self.context))
        check_identical(self.params, "α and β", self.context)  # ~300 numbers: negligible next to the step
        return loss.item()


class BilevelStep:
    """One search step for the loop: the weight step, then (once active) the architecture step; the epoch
    record gets ``train_loss`` and ``arch_loss``."""

    def __init__(self, weights: SupervisedStep, architect: Architect) -> None:
        self.weights, self.architect = weights, architect

    def train(self) -> None:
        self.weights.train()

    def start_epoch(self, epoch: int, steps_done: int) -> None:
        self.architect.start_epoch(epoch, steps_done)

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor], global_step: int) -> dict[str, float]:
        values = self.weights(batch, global_step)
        if self.architect.active:
            values["arch_loss"] = self.architect.step()
        return values

    def learning_rate(self) -> float:
        return self.weights.learning_rate()
