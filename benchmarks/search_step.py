"""Benchmark of one search step of the supernet: weight step and architecture step.

Prints one table (or, with --json, one JSON object): median seconds of the weight step (forward,
cross-entropy, backward, SGD step) and of the architecture step (forward, backward into α/β
only, Adam step) over --steps measured steps after --warmup, peak memory (RSS on CPU,
torch.cuda.max_memory_allocated on CUDA), the activations autograd saves for backward (a figure
independent of the allocator and the runtime), Multi-Adds of one forward, images per second.

    python benchmarks/search_step.py --filter_multiplier 8 --crop_size 64 --batch_size 2 --num_classes 19 --steps 5

Here --steps is the number of measured steps; cells have the paper's B=5 blocks.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config_utils.common import add_device_flag  # noqa: E402
from config_utils.search_args import search_parser  # noqa: E402
from engine.cli import resolve_device  # noqa: E402
from engine.precision import PrecisionStep, amp_dtype  # noqa: E402
from modeling.autodeeplab.model_search import AutoDeepLabSearch  # noqa: E402
from search.autodeeplab.bilevel import search_optimizers  # noqa: E402
from utils.flags import Parser, add_flag, positive_int  # noqa: E402


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB); ru_maxrss is KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(prog="search_step.py", description=__doc__.splitlines()[0])
    add_flag(parser, "filter_multiplier", type=positive_int, default=8)
    add_flag(parser, "crop_size", type=positive_int, default=64)
    add_flag(parser, "batch_size", type=positive_int, default=2)
    add_flag(parser, "num_classes", type=positive_int, default=19)
    add_flag(parser, "num_layers", type=positive_int, default=12)
    add_flag(parser, "steps", type=positive_int, default=5, help="measured steps (the median is reported)")
    add_flag(parser, "warmup", type=int, default=1, help="unmeasured steps first")
    add_flag(parser, "threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    add_device_flag(parser)
    add_flag(parser, "checkpoint_cells", action="store_true", help="activation checkpointing of the cells")
    add_flag(parser, "partial_channels", type=positive_int, default=1, help="PC-DARTS partial channels K")
    add_flag(parser, "amp", default="off", choices=("off", "bf16", "fp16"),
             help="mixed precision as the search's --amp --amp_dtype runs it (fp16 with loss scaling)")
    add_flag(parser, "json", action="store_true", help="print one JSON object instead of a table")
    return parser.parse_args(argv)


def saved_for_backward_mb(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor,
                          precision: PrecisionStep) -> float:
    """MB that autograd keeps for the backward of one training forward: the distinct storages packed by
    saved-tensor hooks, the parameters excluded (they exist anyway)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with precision.autocast():
            logits = model(images)
        F.cross_entropy(logits.float(), masks)
    return sum(saved.values()) / 2**20


def print_result(result: dict, as_json: bool) -> None:
    """One JSON object, or a two-column table of the figures."""
    if as_json:
        print(json.dumps(result))
    else:
        width = max(map(len, result))
        print("\n".join(f"{key:<{width}}  {value}" for key, value in result.items()))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = AutoDeepLabSearch(args.num_classes, args.num_layers, filter_multiplier=args.filter_multiplier,
                              checkpoint_cells=args.checkpoint_cells,
                              partial_channels=args.partial_channels).to(device)
    weight_params, arch_params = model.weight_parameters(), model.arch_parameters()
    # the search's own optimisers, at its default hyperparameters
    weight_optimizer, arch_optimizer, _ = search_optimizers(weight_params, arch_params, search_parser().parse_args([]),
                                                            args.warmup + args.steps)
    images = torch.randn(args.batch_size, 3, args.crop_size, args.crop_size, device=device)
    masks = torch.randint(0, args.num_classes, (args.batch_size, args.crop_size, args.crop_size), device=device)

    dtype = torch.float32 if args.amp == "off" else amp_dtype(args.amp, device)
    weight_precision, arch_precision = (PrecisionStep(args.amp != "off", device, dtype) for _ in range(2))

    def training_step(precision: PrecisionStep, optimizer: torch.optim.Optimizer, params: list) -> None:
        """As the search script runs it: backward into ``params`` only, and no gradient outlives its step."""
        with precision.autocast():
            logits = model(images)
        precision.backward(F.cross_entropy(logits.float(), masks), inputs=params)
        precision.step(optimizer)

    steps = {"weight": (weight_precision, weight_optimizer, weight_params),
             "arch": (arch_precision, arch_optimizer, arch_params)}
    timings: dict[str, list[float]] = {"weight": [], "arch": []}
    for i in range(args.warmup + args.steps):
        for name, step in steps.items():
            synchronize(device)
            started = time.perf_counter()
            training_step(*step)
            synchronize(device)
            if i >= args.warmup:
                timings[name].append(time.perf_counter() - started)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = peak_rss_mb()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images)
    # checkpointed cells keep their inputs outside the hooks, so the figure would undercount them
    saved_mb = None if args.checkpoint_cells else round(saved_for_backward_mb(model, images, masks, weight_precision), 1)
    weight_s, arch_s = statistics.median(timings["weight"]), statistics.median(timings["arch"])
    result = {
        "device": str(device), "threads": torch.get_num_threads(), "filter_multiplier": args.filter_multiplier,
        "crop_size": args.crop_size, "batch_size": args.batch_size, "num_layers": args.num_layers,
        "num_classes": args.num_classes, "checkpoint_cells": args.checkpoint_cells,
        "partial_channels": args.partial_channels, "amp": args.amp,
        "weight_params": sum(p.numel() for p in weight_params),
        "weight_step_s": round(weight_s, 4), "arch_step_s": round(arch_s, 4),
        "search_step_s": round(weight_s + arch_s, 4),
        "images_per_s": round(args.batch_size / (weight_s + arch_s), 3),
        "forward_gmacs": round(counter.get_total_flops() / 2e9, 3),
        "peak_rss_mb" if device.type == "cpu" else "peak_cuda_mb": round(peak_mb, 1),
        "saved_for_backward_mb": saved_mb,
    }
    print_result(result, args.json)
    return result


if __name__ == "__main__":
    main()
