"""Inference benchmark: Auto-DeepLab-S/M/L beside DeepLabV3+ ResNet-101 and torchvision's DeepLabV3 ResNet-50.

For each model: parameters, Multi-Adds of one forward of one image (billions; FlopCounterMode on
the meta device, as ``modeling.autodeeplab.costs.component_costs`` counts them, so nothing is allocated),
median latency of one batch over --steps measured forwards after --warmup, images per second,
and peak memory; every forward runs in eval mode under ``torch.inference_mode()``.

    python benchmarks/inference.py --input_size 1025 2049 --batch_size 1 --num_classes 19 --steps 5

Memory: each model runs in a fresh subprocess (this script re-invoked with the hidden
``--single MODEL --json``), so the figures of one model never include another's. On CPU the
figure is the peak resident set size of that process (``ru_maxrss``), which includes the Python
and torch runtime; that runtime's share (the peak before the model is built) is given as
``baseline_rss_mb`` in the JSON rows and on the footer line. On CUDA the figure is
``torch.cuda.max_memory_allocated`` (tensors only: no CUDA context, no allocator cache), with
``torch.cuda.synchronize()`` before and after every timed forward.

The torchvision model is built with ``weights=None, weights_backbone=None, aux_loss=False`` and
its ``["out"]`` logits are used. --json prints one JSON object instead of the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.search_step import peak_rss_mb, synchronize  # noqa: E402
from config_utils.common import add_device_flag  # noqa: E402
from engine.cli import resolve_device, run_cli  # noqa: E402
from utils.flags import Parser, add_flag, non_negative_int, positive_int  # noqa: E402

PROG = "inference.py"
AUTODEEPLAB_F = {"autodeeplab-s": 20, "autodeeplab-m": 32, "autodeeplab-l": 48}
MODELS = (*AUTODEEPLAB_F, "deeplabv3plus-resnet101", "torchvision-deeplabv3-resnet50")
ROW_KEYS = ("model", "params", "multi_adds_g", "latency_ms", "images_per_s", "peak_memory_mb", "baseline_rss_mb")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(prog=PROG, description=__doc__.splitlines()[0])
    add_flag(parser, "input_size", type=positive_int, nargs=2, default=[1025, 2049], metavar=("H", "W"),
             help="image height and width (default: Cityscapes full resolution, 1025 2049)")
    add_flag(parser, "batch_size", type=positive_int, default=1)
    add_flag(parser, "num_classes", type=positive_int, default=19)
    add_flag(parser, "steps", type=positive_int, default=5, help="measured forwards (the median is reported)")
    add_flag(parser, "warmup", type=non_negative_int, default=2, help="unmeasured forwards first")
    add_flag(parser, "models", nargs="+", choices=MODELS, default=list(MODELS), metavar="MODEL",
             help=f"models to run, in this order (default: all of {', '.join(MODELS)})")
    add_flag(parser, "threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    add_device_flag(parser)
    add_flag(parser, "json", action="store_true", help="print one JSON object instead of a table")
    add_flag(parser, "single", choices=MODELS, default=None, help=argparse.SUPPRESS)  # one model, in this process
    return parser.parse_args(argv)


class _Output(nn.Module):
    """torchvision's segmentation models return a dict; this forward returns its ``"out"`` logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def build_model(name: str, num_classes: int) -> nn.Module:
    """The named network, freshly initialised (no weights are read or downloaded)."""
    # Imported here: the parent process only starts subprocesses and never builds a model.
    if name in AUTODEEPLAB_F:
        from modeling.autodeeplab.genotype import paper_architecture
        from modeling.autodeeplab.model_retrain import AutoDeepLab

        return AutoDeepLab(paper_architecture(AUTODEEPLAB_F[name]), num_classes, AUTODEEPLAB_F[name])
    if name == "deeplabv3plus-resnet101":
        from modeling.deeplabv3plus import DeepLabV3Plus

        return DeepLabV3Plus(num_classes, "resnet101", 16)
    if name == "torchvision-deeplabv3-resnet50":
        from utils.torchvision_compat import import_torchvision

        tv = import_torchvision()
        return _Output(tv.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None,
                                                                 num_classes=num_classes, aux_loss=False))
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")


def multi_adds_g(name: str, num_classes: int, input_size: tuple[int, int]) -> float:
    """Multi-Adds (billions) of one forward of one image, counted on a copy built on the meta device."""
    with torch.device("meta"):
        model = build_model(name, num_classes).eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, *input_size, device="meta"))
    return counter.get_total_flops() / 2e9


def time_forward(forward: Callable[[], object], device: torch.device, warmup: int, steps: int) -> float:
    """Median seconds of ``forward`` over ``steps`` calls after ``warmup`` unmeasured ones."""
    timings = []
    for i in range(warmup + steps):
        synchronize(device)
        started = time.perf_counter()
        forward()
        synchronize(device)
        if i >= warmup:
            timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def measure(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    """One row of the table for ``name``, measured in this process."""
    baseline_mb = peak_rss_mb() if device.type == "cpu" else None
    macs = multi_adds_g(name, args.num_classes, tuple(args.input_size))
    torch.manual_seed(0)
    model = build_model(name, args.num_classes).eval().to(device)
    images = torch.randn(args.batch_size, 3, *args.input_size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        seconds = time_forward(lambda: model(images), device, args.warmup, args.steps)
    peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb()
    return {
        "model": name, "params": sum(p.numel() for p in model.parameters()), "multi_adds_g": round(macs, 6),
        "latency_ms": round(seconds * 1000, 3), "images_per_s": round(args.batch_size / seconds, 3),
        "peak_memory_mb": round(peak_mb, 1), "baseline_rss_mb": None if baseline_mb is None else round(baseline_mb, 1),
    }


def run_single(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    """``measure`` in a fresh subprocess (this script with ``--single``), so peak memory is that model's alone."""
    command = [sys.executable, str(Path(__file__).resolve()), "--single", name, "--json",
               "--input_size", *map(str, args.input_size), "--batch_size", str(args.batch_size),
               "--num_classes", str(args.num_classes), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--device", str(device)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # stderr goes straight through
    if result.returncode != 0:
        sys.stderr.write(f"{PROG}: error: {name} failed (exit status {result.returncode})\n")
        sys.exit(result.returncode)
    return json.loads(result.stdout.strip().splitlines()[-1])


def format_table(report: dict) -> str:
    """The table: one row per model, then a line with the device, torch version, threads and input size."""
    memory = "peak RSS MB" if report["device"].startswith("cpu") else "peak CUDA MB"
    header = ("model", "params", "Multi-Adds G", "latency ms", "images/s", memory)
    lines = [[row["model"], f"{row['params']:,}", f"{row['multi_adds_g']:.2f}", f"{row['latency_ms']:.1f}",
              f"{row['images_per_s']:.2f}", f"{row['peak_memory_mb']:.0f}"] for row in report["rows"]]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))
           for cells in [header, *lines]]
    height, width = report["input_size"]
    footer = (f"device {report['device_name']}, torch {report['torch']}, threads {report['threads']}, "
              f"input {height}x{width}, batch {report['batch_size']}, median of {report['steps']} after "
              f"{report['warmup']} warm-up; Multi-Adds per image; each model in a fresh process")
    baselines = [row["baseline_rss_mb"] for row in report["rows"] if row.get("baseline_rss_mb") is not None]
    if baselines:
        span = {f"{min(baselines):.0f}", f"{max(baselines):.0f}"}
        footer += f" (runtime before the model: {'-'.join(sorted(span, key=float))} MB RSS)"
    return "\n".join([*out, footer])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.single:
        row = measure(args.single, args, device)
        print(json.dumps(row))
        return row
    report = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "input_size": list(args.input_size),
        "batch_size": args.batch_size, "num_classes": args.num_classes, "steps": args.steps, "warmup": args.warmup,
        "peak_memory": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS of a fresh process",
        "rows": [run_single(name, args, device) for name in args.models],
    }
    print(json.dumps(report) if args.json else format_table(report))
    return report


if __name__ == "__main__":
    run_cli(main, PROG)
