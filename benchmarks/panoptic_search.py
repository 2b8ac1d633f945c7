"""Benchmark of the Auto-Panoptic search at given sizes: one supernet iteration and one candidate evaluation.

The supernet (``AutoPanoptic`` without a genotype) is built at the sizes the flags give and fed the generated
panoptic data (``synthetic_panoptic``'s training split, square images of --image-size, the held-out images set
aside from it as the search does). Prints one table (or, with --json, one JSON object):

- ``supernet_iteration_s``: the median seconds of one supernet iteration over --steps after --warmup: the
  forward on the iteration's fairly sampled path (``FairPathSampler``, as training draws them) and the backward
  of the summed losses, the batch already on the device; the optimiser step, once per 12 iterations, is left
  out. ``images_per_s``: --batch-size over it.
- ``candidate_eval_s``: one candidate of the greedy search scored as ``search.autopanoptic.stage.CandidateEvaluator``
  scores it: BatchNorm recalibrated over --bn-batches training batches, then PQ on --held-out images, data
  loading included. It grows about linearly with both counts (the paper: 500 batches, 5000 images).
- ``iteration_s_each``: every iteration's seconds, the warm-up included; with ``--compile`` (the supernet's
  forward through ``torch.compile``) they show what compiling costs as each iteration brings a new path.
- ``weights``: the supernet's parameters (every op of every choice layer); the peak memory: the process's peak
  RSS on CPU (``peak_rss_mb``), ``torch.cuda.max_memory_allocated`` on CUDA (``peak_cuda_mb``).

``--profile`` then profiles one more supernet iteration and one more candidate evaluation by part (backbone, FPN,
RPN, box head, mask head, the rest of the RoI heads, semantic subnet, attentions, the losses, and our NMS,
RoIAlign and deformable convolution where they stand in for torchvision's kernels), backward included
(``benchmarks/part_profile.py``), and prints the two tables (with --json, under ``profile``). The profiler's own
overhead makes these totals larger than the timings above; the shares are what it is for.

The defaults are the ``synthetic_panoptic`` scale-down recipe (``config_utils.recipes``). --rpn-proposals sets
the RPN's proposals before and after NMS in training and test alike (the paper: 2000 in training, 1000 in
test). The paper's sizes, on a GPU (2 images per GPU, as the paper's 16 on 8 GPUs; the generated images are
800×800 where COCO's are about 800×1066):

    python benchmarks/panoptic_search.py --threads 2 --steps 3
    python benchmarks/panoptic_search.py --device cuda --widths 48 96 240 480 960 --stage-repeats 8 8 16 8 \\
        --fpn-channels 256 --subnet-channels 128 --image-size 800 --rpn-proposals 2000 --rois-per-image 512 \\
        --detections-per-image 100 --stuff-area-limit 4096
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.part_profile import PartProfile  # noqa: E402
from benchmarks.search_step import peak_rss_mb, print_result, synchronize  # noqa: E402
from config_utils.autopanoptic_args import check_group_norm_widths  # noqa: E402
from config_utils.common import add_device_flag  # noqa: E402
from config_utils.recipes import recipe  # noqa: E402
from dataloaders import SeededSampler, make_loader  # noqa: E402
from dataloaders.datasets.synthetic_panoptic import SyntheticPanoptic  # noqa: E402
from dataloaders.panoptic import PanopticDataset, PanopticTransform, collate, trainable_indices  # noqa: E402
from engine.cli import resolve_device, run_cli  # noqa: E402
from engine.trainer import cycle_batches  # noqa: E402
from modeling import detection_ops  # noqa: E402
from modeling.autopanoptic import network as panoptic_network  # noqa: E402
from modeling.autopanoptic.genotype import layer_choices  # noqa: E402
from modeling.autopanoptic.network import AutoPanoptic, PanopticSizes  # noqa: E402
from search.autopanoptic.one_shot import SEARCH_STREAM, FairPathSampler  # noqa: E402
from search.autopanoptic.stage import CandidateEvaluator, class_counts, held_out_split, to_device  # noqa: E402
from utils.flags import Parser, add_flag, non_negative_int, positive_int  # noqa: E402

PROG = "panoptic_search.py"
SCALE_DOWN = recipe("autopanoptic", "search", "synthetic_panoptic")
SEED = 1  # the search's default --seed: its held-out split, paths and initial weights


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(prog=PROG, description=__doc__.splitlines()[0])
    add_flag(parser, "widths", type=positive_int, nargs=5, default=SCALE_DOWN["widths"],
             metavar=("STEM", "C2", "C3", "C4", "C5"), help="backbone widths (the paper: 48 96 240 480 960)")
    add_flag(parser, "stage-repeats", type=positive_int, nargs=4, default=SCALE_DOWN["stage_repeats"],
             metavar=("S2", "S3", "S4", "S5"), help="choice blocks per backbone stage (the paper: 8 8 16 8)")
    add_flag(parser, "fpn-channels", type=positive_int, default=SCALE_DOWN["fpn_channels"],
             help="FPN width (the paper: 256; a multiple of 32)")
    add_flag(parser, "subnet-channels", type=positive_int, default=SCALE_DOWN["subnet_channels"],
             help="semantic subnet width (the paper: 128; a multiple of 32)")
    add_flag(parser, "image-size", type=positive_int, default=SCALE_DOWN["min_size"],
             help="side of the square generated images (the paper: short side 800)")
    add_flag(parser, "batch-size", type=positive_int, default=SCALE_DOWN["batch_size"], help="images per iteration")
    add_flag(parser, "rpn-proposals", type=positive_int, default=SCALE_DOWN["rpn_pre_nms_train"],
             help="RPN proposals per level before NMS and per image after it, in training and test")
    add_flag(parser, "rois-per-image", type=positive_int, default=SCALE_DOWN["rois_per_image"],
             help="RoIs sampled per image for the box and mask heads (the paper: 512)")
    add_flag(parser, "detections-per-image", type=positive_int, default=SCALE_DOWN["detections_per_image"],
             help="detections kept per image in evaluation (the paper: 100)")
    add_flag(parser, "stuff-area-limit", type=non_negative_int, default=SCALE_DOWN["stuff_area_limit"],
             help="a predicted stuff segment smaller than this many pixels is left void (the paper: 4096)")
    add_flag(parser, "held-out", type=positive_int, default=SCALE_DOWN["held_out"],
             help="held-out images a candidate is scored on")
    add_flag(parser, "bn-batches", type=positive_int, default=SCALE_DOWN["bn_recalibration_iters"],
             help="training batches that recalibrate BatchNorm before a candidate is scored")
    add_flag(parser, "steps", type=positive_int, default=5,
             help="measured supernet iterations (the median is reported)")
    add_flag(parser, "warmup", type=non_negative_int, default=1, help="unmeasured supernet iterations first")
    add_flag(parser, "threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    add_device_flag(parser)
    add_flag(parser, "compile", action="store_true",
             help="run the supernet's iterations through torch.compile (inductor); every iteration's seconds are "
                  "reported (iteration_s_each), since each new path may compile again. On the CPU build measured "
                  "(docs/benchmarks.md) the first iteration did not finish in 22 minutes")
    add_flag(parser, "profile", action="store_true",
             help="also profile one supernet iteration and one candidate evaluation by part")
    add_flag(parser, "json", action="store_true", help="print one JSON object instead of a table")
    return parser.parse_args(argv)


def part_profile(model: AutoPanoptic) -> PartProfile:
    """The supernet's parts, and our detection ops wherever ``detection_ops.install`` put them."""
    heads = model.roi_heads
    ours = {detection_ops.nms: "NMS (ours)", detection_ops.roi_align: "RoIAlign (ours)",
            detection_ops.deform_conv2d: "deformable conv (ours)"}
    functions: dict[str, list] = {name: [] for name in ours.values()}
    for module_name, attribute, replacement in detection_ops.ENTRY_POINTS:
        owner = sys.modules[module_name]
        if replacement in ours and getattr(owner, attribute) is replacement:
            functions[ours[replacement]].append((owner, attribute))
    roi_heads_module = sys.modules[type(heads).__module__]
    functions |= {"losses (box, mask)": [(roi_heads_module, "fastrcnn_loss"), (roi_heads_module, "maskrcnn_loss")],
                  "loss (segmentation)": [(panoptic_network, "segmentation_loss")]}
    return PartProfile({
        "backbone": [model.backbone], "FPN": [model.fpn], "RPN": [model.rpn],
        "RoI heads (sampling, post-processing)": [heads], "box head": [heads.box_head, heads.box_predictor],
        "mask head": [heads.mask_head, heads.mask_predictor],
        "semantic subnet": [*model.subnet, model.semantic_score],
        "attentions": [*model.things_to_stuff, *model.stuff_to_things],
    }, {name: places for name, places in functions.items() if places})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    check_group_norm_widths(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    # Enough generated images that, once those without a trainable instance are dropped, the held-out ones
    # leave a few batches to train on (about 4 in 5 images have one).
    source = SyntheticPanoptic("train", 2 * (args.held_out + 2 * args.batch_size), args.image_size, SEED)
    usable = trainable_indices(source)
    train, held_out = held_out_split(len(usable), args.held_out, SEED)
    train, held_out = [usable[i] for i in train], [usable[i] for i in held_out]
    resize = (args.image_size, args.image_size)
    train_loader = make_loader(PanopticDataset(source, PanopticTransform(*resize, train=True)),
                               SeededSampler(train, SEED, shuffle=True, drop_last=True), args.batch_size, 0,
                               drop_last=True, collate_fn=collate)
    held_out_loader = make_loader(PanopticDataset(source, PanopticTransform(*resize, train=False)),
                                  SeededSampler(held_out, 0, shuffle=False), args.batch_size, 0, drop_last=False,
                                  collate_fn=collate)

    proposals = args.rpn_proposals
    sizes = PanopticSizes(tuple(args.widths), tuple(args.stage_repeats), args.fpn_channels, args.subnet_channels,
                          proposals, proposals, proposals, proposals, args.rois_per_image, args.detections_per_image)
    torch.manual_seed(SEED)
    model = AutoPanoptic(*class_counts(source.categories), None, sizes).to(device)
    choices = layer_choices(tuple(args.stage_repeats))
    sampler = FairPathSampler(choices, SEED)

    iterations = args.warmup + args.steps
    batches = [to_device(*batch, device) for batch in islice(cycle_batches(train_loader, 0), iterations)]
    model.train()
    forward = torch.compile(model) if args.compile else model
    every = []
    for iteration, (images, targets) in enumerate(batches, start=1):
        synchronize(device)
        started = time.perf_counter()
        losses = forward(images, targets, sampler.path(iteration))
        sum(losses.values()).backward()  # gradients add up over the window, as in training
        synchronize(device)
        every.append(time.perf_counter() - started)
    seconds = every[args.warmup:]
    del batches, losses
    model.zero_grad(set_to_none=True)  # the greedy search holds no gradients

    scoring = argparse.Namespace(bn_recalibration_iters=args.bn_batches, stuff_area_limit=args.stuff_area_limit)
    evaluator = CandidateEvaluator(model, train_loader, held_out_loader, source.categories, scoring, device)
    candidate = FairPathSampler(choices, SEED, SEARCH_STREAM).path(1)  # a path as the greedy search draws them
    synchronize(device)
    started = time.perf_counter()
    evaluator(candidate)
    synchronize(device)
    candidate_s = time.perf_counter() - started

    iteration_s = statistics.median(seconds)
    peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb()
    profiles = {}
    if args.profile:
        images, targets = to_device(*next(cycle_batches(train_loader, 1)), device)
        model.train()
        with part_profile(model) as iteration_profile:
            sum(model(images, targets, sampler.path(iterations + 1)).values()).backward()
        model.zero_grad(set_to_none=True)
        with part_profile(model) as candidate_profile:
            evaluator(candidate)
        profiles = {"supernet_iteration": iteration_profile, "candidate_evaluation": candidate_profile}
    result = {
        "device": str(device), "threads": torch.get_num_threads(), "widths": list(args.widths),
        "stage_repeats": list(args.stage_repeats), "fpn_channels": args.fpn_channels,
        "subnet_channels": args.subnet_channels, "image_size": args.image_size, "batch_size": args.batch_size,
        "rpn_proposals": proposals, "rois_per_image": args.rois_per_image,
        "detections_per_image": args.detections_per_image, "stuff_area_limit": args.stuff_area_limit,
        "held_out": args.held_out, "bn_batches": args.bn_batches, "steps": args.steps,
        "weights": sum(p.numel() for p in model.parameters()),
        "compile": args.compile, "iteration_s_each": [round(value, 3) for value in every],
        "supernet_iteration_s": round(iteration_s, 4), "images_per_s": round(args.batch_size / iteration_s, 3),
        "candidate_eval_s": round(candidate_s, 3),
        "peak_rss_mb" if device.type == "cpu" else "peak_cuda_mb": round(peak_mb, 1),
    }
    if profiles:
        result["profile"] = {name: profile.seconds for name, profile in profiles.items()}
    print_result(result, args.json)
    if profiles and not args.json:
        for name, profile in profiles.items():
            print("\n" + profile.table(name.replace("_", " ")))
    return result


if __name__ == "__main__":
    run_cli(main, PROG)
