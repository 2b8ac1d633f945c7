"""Benchmark of our pure-torch detection ops (``modeling.detection_ops``) beside torchvision's compiled kernels.

Auto-Panoptic runs on our NMS, RoIAlign and deformable convolution wherever torchvision's C++ library does not
load (a CPU-only torch beside the CUDA torchvision wheel); this says what that costs. Four cases, each at the
sizes the flags give:

- ``nms``: greedy NMS of N boxes (IoU 0.7, the RPN's) spread over an 800-pixel image;
- ``roi_align``: forward and backward of K RoIs on a C×S×S map (the box head's pooling of one FPN level at
  stride 4: output 7, sampling ratio 2, ``aligned`` False, as ``MultiScaleRoIAlign``);
- ``roi_align_mask_targets``: K binary S×S masks cut to 28×28 by their RoIs with the adaptive sampling ratio,
  forward only (Mask R-CNN's ``project_masks_on_boxes``: each positive proposal reads its instance's mask);
- ``deform_conv2d``: forward and backward of a modulated (DCNv2) 3×3 deformable convolution, C_in→C_out on
  B×S×S, padding 1 (the heads' ``deform_conv_3x3``).

Per case: the median seconds of one call (``ours_s``, ``native_s``) over --repeats after --warmup; the rise of
memory during the calls (``*_peak_mib``): on CUDA ``max_memory_allocated`` above what was allocated before, on
Linux the resident high-water mark (reset through /proc/self/clear_refs) above the resident size before, glibc's
``malloc_trim`` having first returned the free heap so that memory reused from earlier cases still counts, null
elsewhere; and, where the native ops load, the largest absolute difference between the two (``max_abs_diff`` of
the outputs, for NMS of the 0/1 kept flag per box; ``grad_max_abs_diff`` over every input gradient). Where they
do not load (this CPU build), the native figures are null and the table says "unavailable".

    python benchmarks/detection_ops.py --threads 1
    python benchmarks/detection_ops.py --device cuda --json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.search_step import synchronize  # noqa: E402
from config_utils.common import add_device_flag  # noqa: E402
from engine.cli import resolve_device, run_cli  # noqa: E402
from modeling import detection_ops  # noqa: E402
from utils.flags import Parser, add_flag, non_negative_int, positive_int  # noqa: E402
from utils.torchvision_compat import import_torchvision  # noqa: E402

PROG = "detection_ops.py"
CASES = ("nms", "roi_align", "roi_align_mask_targets", "deform_conv2d")
IMAGE_SIDE = 800  # NMS boxes lie in an image of this side
NMS_THRESHOLD = 0.7
FEATURE_STRIDE = 4  # the RoIAlign case's map is P2 of an image 4 times its side
MASK_OUTPUT = 28
DEFORM_KERNEL = 3
LIBC = ctypes.CDLL(None)
# A case: the sizes it runs at, and one call on an ops module giving the tensors to compare (output first,
# then the input gradients).
Case = tuple[dict[str, Any], Callable[[ModuleType], tuple[Tensor, ...]]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(prog=PROG, description=__doc__.splitlines()[0])
    add_flag(parser, "cases", nargs="+", choices=CASES, default=list(CASES), metavar="CASE",
             help=f"cases to run, in this order (default: all of {', '.join(CASES)})")
    add_flag(parser, "nms-boxes", type=positive_int, default=2000, help="N: boxes NMS sorts out")
    add_flag(parser, "roi-count", type=positive_int, default=512, help="K: RoIs of the roi_align case")
    add_flag(parser, "roi-channels", type=positive_int, default=256, help="C: channels of its feature map")
    add_flag(parser, "roi-map", type=positive_int, default=64, help="S: side of its feature map")
    add_flag(parser, "roi-output", type=positive_int, default=7, help="its output side")
    add_flag(parser, "roi-sampling", type=positive_int, default=2, help="its sampling ratio")
    add_flag(parser, "mask-count", type=positive_int, default=128, help="K: masks (and RoIs) of the mask-target case")
    add_flag(parser, "mask-size", type=positive_int, default=512, help="S: side of each mask")
    add_flag(parser, "deform-in", type=positive_int, default=256, help="C_in of the deform_conv2d case")
    add_flag(parser, "deform-out", type=positive_int, default=128, help="C_out of the deform_conv2d case")
    add_flag(parser, "deform-batch", type=positive_int, default=2, help="B: its batch")
    add_flag(parser, "deform-map", type=positive_int, default=64, help="S: side of its input")
    add_flag(parser, "repeats", type=positive_int, default=5, help="measured calls per case (the median is reported)")
    add_flag(parser, "warmup", type=non_negative_int, default=1, help="unmeasured calls first")
    add_flag(parser, "threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    add_device_flag(parser)
    add_flag(parser, "json", action="store_true", help="print one JSON object per case instead of a table")
    return parser.parse_args(argv)


def random_boxes(count: int, side: float, smallest: float, largest: float, generator: torch.Generator) -> Tensor:
    """[count, 4] boxes x1, y1, x2, y2 with sides in [smallest, largest), inside a square of ``side``."""
    sizes = smallest + torch.rand(count, 2, generator=generator) * (largest - smallest)
    corners = torch.rand(count, 2, generator=generator) * (side - sizes)
    return torch.cat([corners, corners + sizes], 1)


def with_gradients(output: Tensor, inputs: Sequence[Tensor], upstream: Tensor) -> tuple[Tensor, ...]:
    """The output and the gradients of ``upstream`` (a random gradient of the output) with respect to ``inputs``."""
    return (output.detach(), *torch.autograd.grad(output, inputs, upstream))


def nms_case(args: argparse.Namespace, device: torch.device, generator: torch.Generator) -> Case:
    count = args.nms_boxes
    boxes = random_boxes(count, IMAGE_SIDE, 16, 256, generator).to(device)
    scores = torch.rand(count, generator=generator).to(device)

    def call(ops: ModuleType) -> tuple[Tensor, ...]:
        return (ops.nms(boxes, scores, NMS_THRESHOLD),)

    return {"boxes": count, "iou_threshold": NMS_THRESHOLD}, call


def roi_align_case(args: argparse.Namespace, device: torch.device, generator: torch.Generator) -> Case:
    side, count = args.roi_map, args.roi_count
    features = torch.randn(1, args.roi_channels, side, side, generator=generator).to(device).requires_grad_()
    image = side * FEATURE_STRIDE
    boxes = random_boxes(count, image, 8, image / 2, generator)
    rois = torch.cat([torch.zeros(count, 1), boxes], 1).to(device)
    upstream = torch.randn(count, args.roi_channels, args.roi_output, args.roi_output, generator=generator).to(device)

    def call(ops: ModuleType) -> tuple[Tensor, ...]:
        output = ops.roi_align(features, rois, args.roi_output, spatial_scale=1 / FEATURE_STRIDE,
                               sampling_ratio=args.roi_sampling, aligned=False)
        return with_gradients(output, [features], upstream)

    return {"rois": count, "channels": args.roi_channels, "map": side, "output": args.roi_output,
            "sampling_ratio": args.roi_sampling}, call


def mask_targets_case(args: argparse.Namespace, device: torch.device, generator: torch.Generator) -> Case:
    side, count = args.mask_size, args.mask_count
    masks = (torch.rand(count, 1, side, side, generator=generator) > 0.5).float().to(device)
    boxes = random_boxes(count, side, side / 16, side / 2, generator)
    rois = torch.cat([torch.arange(count, dtype=torch.float32)[:, None], boxes], 1).to(device)

    def call(ops: ModuleType) -> tuple[Tensor, ...]:
        return (ops.roi_align(masks, rois, (MASK_OUTPUT, MASK_OUTPUT), 1.0),)

    return {"masks": count, "mask_size": side, "output": MASK_OUTPUT, "sampling_ratio": "adaptive"}, call


def deform_conv2d_case(args: argparse.Namespace, device: torch.device, generator: torch.Generator) -> Case:
    batch, side, c_in, c_out = args.deform_batch, args.deform_map, args.deform_in, args.deform_out
    positions = DEFORM_KERNEL * DEFORM_KERNEL

    def leaf(*shape: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=generator) * scale).to(device).requires_grad_()

    inputs = [leaf(batch, c_in, side, side), leaf(batch, 2 * positions, side, side, scale=2.0),
              leaf(c_out, c_in, DEFORM_KERNEL, DEFORM_KERNEL, scale=1 / math.sqrt(c_in * positions)), leaf(c_out),
              torch.rand(batch, positions, side, side, generator=generator).to(device).requires_grad_()]
    upstream = torch.randn(batch, c_out, side, side, generator=generator).to(device)  # padding keeps the side

    def call(ops: ModuleType) -> tuple[Tensor, ...]:
        x, offset, weight, bias, mask = inputs
        output = ops.deform_conv2d(x, offset, weight, bias, padding=DEFORM_KERNEL // 2, mask=mask)
        return with_gradients(output, inputs, upstream)

    return {"batch": batch, "in_channels": c_in, "out_channels": c_out, "map": side, "kernel": DEFORM_KERNEL}, call


BUILDERS = {"nms": nms_case, "roi_align": roi_align_case, "roi_align_mask_targets": mask_targets_case,
            "deform_conv2d": deform_conv2d_case}


def _status_mib(field: str) -> float:
    """A ``Vm*`` line of /proc/self/status in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"/proc/self/status has no {field}")


def reset_peak_memory(device: torch.device) -> float | None:
    """Restart the device's peak memory counter; the memory in use now (MiB), or None with no cheap counter."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    if hasattr(LIBC, "malloc_trim"):  # glibc: free heap memory goes back, so reusing it shows as growth
        LIBC.malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: the high-water mark becomes the current RSS
    except OSError:
        return None
    return _status_mib("VmRSS")


def peak_memory_growth(device: torch.device, baseline: float | None) -> float | None:
    if baseline is None:
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _status_mib("VmHWM")
    return round(peak - baseline, 1)


def measure(call: Callable[[], tuple[Tensor, ...]], repeats: int, warmup: int,
            device: torch.device) -> tuple[float, float | None, tuple[Tensor, ...]]:
    """Median seconds of ``call`` over ``repeats`` after ``warmup``, its memory growth, and its last result."""
    baseline = reset_peak_memory(device)
    seconds, result = [], ()
    for index in range(warmup + repeats):
        result = ()  # the previous result is not held while the next call runs
        synchronize(device)
        started = time.perf_counter()
        result = call()
        synchronize(device)
        if index >= warmup:
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), peak_memory_growth(device, baseline), result


def comparable(name: str, result: tuple[Tensor, ...], boxes: int) -> tuple[Tensor, ...]:
    """NMS's kept indices as a 0/1 flag per box (order aside); the other cases' tensors as they are."""
    if name != "nms":
        return result
    kept = result[0]
    return (torch.zeros(boxes, device=kept.device).index_fill_(0, kept, 1.0),)


def max_abs_diff(ours: Sequence[Tensor], native: Sequence[Tensor]) -> float | None:
    if not ours:
        return None
    return max(float((a.double() - b.double()).abs().max()) if a.numel() else 0.0 for a, b in zip(ours, native))


def significant(value: float | None) -> float | None:
    """Four significant digits: a small positive figure never rounds to 0."""
    return None if value is None else float(f"{value:.4g}")


def run_case(name: str, args: argparse.Namespace, device: torch.device, native: ModuleType | None) -> dict[str, Any]:
    sizes, call = BUILDERS[name](args, device, torch.Generator().manual_seed(0))
    ours_s, ours_mib, ours = measure(lambda: call(detection_ops), args.repeats, args.warmup, device)
    figures: dict[str, Any] = {"native_s": None, "ours_over_native": None, "native_peak_mib": None,
                               "max_abs_diff": None, "grad_max_abs_diff": None}
    if native is not None:
        native_s, native_mib, theirs = measure(lambda: call(native), args.repeats, args.warmup, device)
        ours, theirs = comparable(name, ours, args.nms_boxes), comparable(name, theirs, args.nms_boxes)
        figures = {"native_s": significant(native_s), "ours_over_native": significant(ours_s / native_s),
                   "native_peak_mib": native_mib, "max_abs_diff": significant(max_abs_diff(ours[:1], theirs[:1])),
                   "grad_max_abs_diff": significant(max_abs_diff(ours[1:], theirs[1:]))}
    return {"case": name, "device": str(device), "threads": torch.get_num_threads(), "sizes": sizes,
            "ours_s": significant(ours_s), "ours_peak_mib": ours_mib, **figures}


def print_table(results: list[dict[str, Any]]) -> None:
    columns = ("case", "sizes", "ours_s", "native_s", "ours_over_native", "max_abs_diff", "grad_max_abs_diff",
               "ours_peak_mib", "native_peak_mib")

    def cell(result: dict[str, Any], column: str) -> str:
        value = result[column]
        if column == "sizes":
            return " ".join(f"{key}={size}" for key, size in value.items())
        if value is None:
            return "unavailable" if column.startswith("native") else "-"
        return str(value)

    rows = [list(columns)] + [[cell(result, column) for column in columns] for result in results]
    widths = [max(len(row[index]) for row in rows) for index in range(len(columns))]
    for row in rows:
        print("  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip())
    if results:
        print(f"device {results[0]['device']}, {results[0]['threads']} thread(s); seconds: median of "
              "--repeats calls; peak_mib: memory growth during the calls")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    # Without install(), torchvision.ops keeps its own kernels wherever they load.
    native = import_torchvision().ops if detection_ops.native_ops_available() else None
    results = []
    for name in args.cases:
        results.append(run_case(name, args, device, native))
        if args.json:
            print(json.dumps(results[-1]), flush=True)
    if not args.json:
        print_table(results)
    return results


if __name__ == "__main__":
    run_cli(main, PROG)
