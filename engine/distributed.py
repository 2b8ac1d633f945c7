"""Multi-process training on torch.distributed: one process per GPU (or CPU process with gloo).

Launch with ``torchrun --nproc_per_node=N script.py ...`` (any number of nodes), or with the older
``python -m torch.distributed.launch``, which passes ``--local-rank``. A plain ``python script.py``
is a world of one and touches nothing distributed.

Conventions the stage scripts follow: ``--batch_size`` is the global batch (split evenly over the
processes), every rank draws the same data order and takes its own shard of each global batch,
and only rank 0 writes files, logs, progress bars and TensorBoard.
"""

from __future__ import annotations

import argparse
import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from engine.run_dir import release_run_dirs
from utils.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(args: argparse.Namespace) -> DistributedContext:
    """Join the process group the launcher describes in the environment (WORLD_SIZE > 1), else run alone.

    The backend is NCCL when the processes use CUDA, gloo otherwise (CPU runs and tests).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistributedContext()
    local_rank = int(os.environ.get("LOCAL_RANK", args.local_rank if args.local_rank is not None else 0))
    use_cuda = args.device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistributedContext(dist.get_rank(), world_size, local_rank)


def process_device(context: DistributedContext, name: str) -> torch.device | None:
    """The device of this process under ``--device auto``: its local GPU; None leaves the choice to the script."""
    if context.enabled and name == "auto" and torch.cuda.is_available():
        return torch.device("cuda", context.local_rank)
    return None


def uses_sync_batchnorm(context: DistributedContext, device: torch.device, requested: bool) -> bool:
    """Whether --sync_bn takes effect: several processes on CUDA (SyncBatchNorm runs on CUDA only; CPU
    processes keep per-process statistics)."""
    return requested and context.enabled and device.type == "cuda"


def per_process_batch(global_batch: int, context: DistributedContext) -> int:
    if global_batch % context.world_size:
        raise UserError(f"--batch_size {global_batch}: the global batch must split evenly over the "
                        f"{context.world_size} processes")
    return global_batch // context.world_size


def check_batchnorm_batch(global_batch: int, context: DistributedContext, synchronized: bool, minimum: int,
                          why: str) -> None:
    """Refuse, before the run starts, a batch too small for the network's BatchNorm (``minimum`` images; ``why``
    names the layer): per process, unless the statistics are synchronised over the processes."""
    per_process = global_batch // context.world_size
    if (global_batch if synchronized else per_process) >= minimum:
        return
    if not context.enabled:
        raise UserError(f"--batch_size {global_batch}: training needs at least {minimum} images per step ({why})")
    raise UserError(f"--batch_size {global_batch}: each of the {context.world_size} processes gets {per_process} "
                    f"image(s), and {why} needs at least {minimum} per process unless its statistics are "
                    f"synchronised (--sync_bn, which runs on CUDA only); use --batch_size "
                    f"{minimum * context.world_size} or fewer processes")


def wrap_ddp(model: nn.Module, context: DistributedContext, device: torch.device,
             ignore: tuple[str, ...] = ()) -> nn.Module:
    """``model`` under DistributedDataParallel when several processes run (else ``model`` itself). The root
    parameters named in ``ignore`` (e.g. a search's architecture parameters, averaged by hand) are left out
    of DDP's gradient averaging."""
    if not context.enabled:
        return model
    if ignore:  # DDP matches root parameters both as "name" and as ".name" (module name "" + "." + name)
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, [prefix + name for name in ignore for prefix in ("", ".")])
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_mean(tensors: list[torch.Tensor], context: DistributedContext) -> None:
    """Average tensors (e.g. gradients) over the processes, in place, in one flat message."""
    if not context.enabled or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= context.world_size
    offset = 0
    for tensor in tensors:
        tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """The sum over processes of ``tensor`` (a copy; the input is left alone)."""
    total = tensor.clone()
    if context.enabled:
        dist.all_reduce(total)
    return total


class _SumOverProcesses(torch.autograd.Function):
    """all_reduce(SUM) with a gradient. Every process's output feeds that process's loss, so the gradient
    of one process's input is the sum of the output gradients of all processes: an all_reduce again."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all processes of the default group, differentiable (e.g. BatchNorm
    statistics synchronised inside a forward pass). Every process must call it in the same order."""
    return _SumOverProcesses.apply(tensor)


def broadcast_from_main(model: nn.Module, context: DistributedContext, parameters: bool = False) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics), and its parameters when asked,
    e.g. before evaluating, or after rank 0 loaded the best weights."""
    if context.enabled:
        tensors = list(model.buffers()) + (list(model.parameters()) if parameters else [])
        with torch.no_grad():
            for tensor in tensors:
                dist.broadcast(tensor, src=0)


def check_identical(tensors: list[torch.Tensor], what: str, context: DistributedContext) -> None:
    """Fail loudly if the processes hold different values (e.g. α and β after a step): a divergence
    would otherwise decode different architectures on different ranks."""
    if not context.enabled:
        return
    local = torch.cat([t.detach().reshape(-1).float() for t in tensors])
    gathered = [torch.empty_like(local) for _ in range(context.world_size)]
    dist.all_gather(gathered, local)
    for rank, other in enumerate(gathered):
        if not torch.equal(other, gathered[0]):
            raise RuntimeError(f"{what} differ between rank 0 and rank {rank} (max difference "
                               f"{(other - gathered[0]).abs().max().item():.3g})")


def broadcast_object(obj: T, context: DistributedContext) -> T:
    """Rank 0's ``obj`` on every rank (any picklable value)."""
    if not context.enabled:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(obj: T, context: DistributedContext) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not context.enabled:
        return [obj]
    gathered: list = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def run_in_process_group(args: argparse.Namespace, work: Callable[[DistributedContext], T]) -> T:
    """Join the launcher's process group (if any), run ``work(context)``, and always leave the group and give back
    the lock of the run directory that the run opened: once it has ended, this process or another may resume it."""
    context = init_distributed(args)
    completed = False
    try:
        result = work(context)
        completed = True
        return result
    finally:
        release_run_dirs()
        shutdown(context, completed)


def shutdown(context: DistributedContext, completed: bool) -> None:
    """Leave the process group; after a completed run, first wait for every rank and free memory
    (destroying the group while a peer still talks to it can abort the process at exit)."""
    if not context.enabled or not dist.is_initialized():
        return
    if completed:
        dist.barrier()
        gc.collect()
    dist.destroy_process_group()
