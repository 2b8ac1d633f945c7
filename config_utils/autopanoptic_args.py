"""Arguments of the Auto-Panoptic search (train_autopanoptic.py: the supernet's sizes, its training schedule and
the greedy path search that follows it) and of its retrain (train_new_model.py given an
Auto-Panoptic architecture). Unset flags come from the dataset's recipe
(``config_utils.recipes``): the paper's settings on COCO panoptic, a scaled-down supernet (same algorithm,
fewer blocks and channels, smaller images, fewer iterations) on the synthetic panoptic data.
"""

from __future__ import annotations

import argparse

from config_utils.common import add_device_flag, add_resume_flag
from dataloaders import add_dataset_arguments
from utils.errors import UserError
from utils.flags import Parser, add_flag, non_negative_int, positive_float, positive_int

# Flags whose unset value the recipe fills (all of them must end up set).
_COMMON_RECIPE_FLAGS = ("batch_size", "min_size", "max_size", "stuff_area_limit", "widths", "fpn_channels",
                        "subnet_channels", "rpn_pre_nms_train", "rpn_post_nms_train", "rpn_pre_nms_test",
                        "rpn_post_nms_test", "rois_per_image", "detections_per_image", "max_iter", "warmup_iters",
                        "checkpoint_period")
RECIPE_FLAGS = _COMMON_RECIPE_FLAGS + ("held_out", "stage_repeats", "search_cycles", "bn_recalibration_iters")
RETRAIN_RECIPE_FLAGS = _COMMON_RECIPE_FLAGS + ("lr_steps",)


def check_group_norm_widths(args: argparse.Namespace) -> None:
    """The FPN and subnet widths must split into GroupNorm's 32 groups."""
    for flag in ("fpn_channels", "subnet_channels"):
        if getattr(args, flag) % 32:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be a multiple of 32 (GroupNorm "
                            "with 32 groups)")


def _add_run_flags(parser: argparse.ArgumentParser, checkname: str) -> None:
    run = parser.add_argument_group("run")
    add_flag(run, "seed", type=int, default=1, locked=True,
             help="seed of the held-out split, the paths, the initial weights and the data order")
    add_flag(run, "workers", type=non_negative_int, default=0, help="DataLoader worker processes")
    add_flag(run, "out-dir", default=None,
             help=f"run directory (default: a new run/<dataset>/{checkname}/experiment_<N>)")
    add_flag(run, "checkname", default=checkname, help="experiment name used in the default run directory")
    add_resume_flag(run)
    add_device_flag(run)
    add_flag(run, "local_rank", type=int, default=None, help="set by 'python -m torch.distributed.launch'")
    add_flag(run, "amp", action="store_true", help="mixed precision with torch.autocast (the original: float32)")
    add_flag(run, "amp_dtype", default="auto", choices=("auto", "bf16", "fp16"),
             help="autocast dtype: auto = fp16 with loss scaling on CUDA, bf16 on CPU")
    add_flag(run, "deterministic", action="store_true",
             help="torch's deterministic algorithms: two runs, or a run and its resume, give bitwise the same "
                  "weights (RoIAlign and deformable-conv gradients otherwise sum in a varying order; on CUDA also "
                  "set CUBLAS_WORKSPACE_CONFIG=:4096:8)")
    add_flag(run, "backbone-weights", default=None, metavar="FILE", locked=True,
             help="a local state dict for the backbone (e.g. an ImageNet-trained one); nothing is downloaded "
                  "(default: random initialisation)")


def _add_data_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    data = parser.add_argument_group("data")
    add_flag(data, "batch-size", type=positive_int, default=None, locked=True,
             help="images per iteration over all processes (the paper: 16)")
    add_flag(data, "min-size", type=positive_int, default=None, locked=True,
             help="images are resized so that their short side has this many pixels (the paper: 800)")
    add_flag(data, "max-size", type=positive_int, default=None, locked=True,
             help="... and their long side at most this many (the paper: 1333)")
    add_flag(data, "stuff-area-limit", type=non_negative_int, default=None,
             help="a predicted stuff segment smaller than this many pixels is left void (the original: 4096, for "
                  "COCO-sized images)")
    return data


def _add_size_flags(parser: argparse.ArgumentParser, widths: str, search: bool) -> None:
    sizes = parser.add_argument_group("network sizes (the algorithm is the same at any size)")
    add_flag(sizes, "widths", type=positive_int, nargs=5, default=None, locked=True,
             metavar=("STEM", "C2", "C3", "C4", "C5"), help=f"backbone widths ({widths})")
    if search:
        add_flag(sizes, "stage-repeats", type=positive_int, nargs=4, default=None, locked=True,
                 metavar=("S2", "S3", "S4", "S5"), help="choice blocks per backbone stage (the paper: 8 8 16 8)")
    add_flag(sizes, "fpn-channels", type=positive_int, default=None, locked=True,
             help="FPN width (the paper: 256; a multiple of 32 for GroupNorm)")
    add_flag(sizes, "subnet-channels", type=positive_int, default=None, locked=True,
             help="semantic subnet width (the paper: 128; a multiple of 32)")
    for name, paper in (("rpn-pre-nms-train", 2000), ("rpn-post-nms-train", 2000), ("rpn-pre-nms-test", 1000),
                        ("rpn-post-nms-test", 1000)):
        add_flag(sizes, name, type=positive_int, default=None, locked=True,
                 help=f"RPN proposals per level before NMS / per image after it (the paper: {paper})")
    add_flag(sizes, "rois-per-image", type=positive_int, default=None, locked=True,
             help="RoIs sampled per image for the box and mask heads (the paper: 512)")
    add_flag(sizes, "detections-per-image", type=positive_int, default=None, locked=True,
             help="detections kept per image (the paper: 100)")


def _add_optimiser_flags(schedule: argparse._ArgumentGroup) -> None:
    add_flag(schedule, "base-lr", type=positive_float, default=0.02, locked=True,
             help="learning rate (the paper's 0.02; biases take twice it, without weight decay)")
    add_flag(schedule, "momentum", type=float, default=0.9, locked=True, help="SGD momentum")
    add_flag(schedule, "weight-decay", type=float, default=1e-4, locked=True, help="weight decay (not on biases)")
    add_flag(schedule, "checkpoint-period", type=positive_int, default=None,
             help="iterations between checkpoints (the original: 2500); one is also written at every pass over "
                  "the data and on SIGTERM")


def autopanoptic_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="train_autopanoptic.py",
                    description="Auto-Panoptic (NeurIPS 2020), stage 1: train the one-shot Panoptic-FPN supernet "
                                "(backbone blocks, mask-head and semantic-subnet layers, inter-modular attention) "
                                "with fair path sampling, then run the path-priority greedy search on it (candidate "
                                "paths scored by held-out PQ after BatchNorm recalibration). decode_autodeeplab.py "
                                "then writes the searched architecture from its scoreboard.")
    parser.add_config_flag()
    add_dataset_arguments(parser)
    parser.set_defaults(dataset="synthetic_panoptic")
    _add_run_flags(parser, "autopanoptic_search")
    data = _add_data_flags(parser)
    add_flag(data, "held-out", type=positive_int, default=None, locked=True,
             help="training images held out (seeded, saved) to score the search's candidates by PQ; the supernet "
                  "never trains on them (the paper: 5000)")
    _add_size_flags(parser, "the paper's search: 48 96 240 480 960", search=True)
    schedule = parser.add_argument_group("supernet schedule")
    add_flag(schedule, "max-iter", type=positive_int, default=None, locked=True,
             help="iterations, one path each; the optimiser steps every 12 (the paper: 90000)")
    add_flag(schedule, "warmup-iters", type=non_negative_int, default=None, locked=True,
             help="linear warm-up from 0.1 x the learning rate (the paper: 3000), then cosine to 0")
    _add_optimiser_flags(schedule)
    greedy = parser.add_argument_group("greedy path search (after the supernet, in this stage)")
    add_flag(greedy, "greedy-search", action=argparse.BooleanOptionalAction, default=True,
             help="run the path-priority greedy search once the supernet is trained, one candidate per process at a "
                  "time, resumable with --resume; --no-greedy-search trains the supernet only, and "
                  "decode_autodeeplab.py runs the search on one process (default: on)")
    add_flag(greedy, "search-cycles", type=positive_int, default=None,
             help="cycles of 12 fairly sampled candidate paths (the paper: 5)")
    add_flag(greedy, "bn-recalibration-iters", type=positive_int, default=None,
             help="training batches that recompute BatchNorm statistics for each candidate (the paper: 500)")
    return parser


def autopanoptic_retrain_parser() -> argparse.ArgumentParser:
    """train_new_model.py's arguments for an Auto-Panoptic architecture (the original's multi-step retrain)."""
    parser = Parser(prog="train_new_model.py",
                    description="Retrain a searched Auto-Panoptic architecture (architecture.json, or the original's "
                                "COCO_3.8G / ADE_3.8G files) from scratch and evaluate it by PQ.")
    parser.add_config_flag()
    add_dataset_arguments(parser)
    parser.set_defaults(dataset="synthetic_panoptic")
    add_flag(parser, "saved_arch_path", default=None, locked=True,
             help="the architecture: architecture.json, a run directory holding one, or an original file (required, "
                  "except with --resume: the checkpoint holds it)")
    add_flag(parser, "summary", action="store_true",
             help="print parameters and Multi-Adds per component and exit (no data needed): the network on COCO "
                  "panoptic (80 thing, 53 stuff categories), with the paper's sizes where no size flag is given")
    add_flag(parser, "input_size", type=positive_int, nargs=2, default=[800, 1333], metavar=("H", "W"),
             help="input size for the --summary Multi-Adds (default: 800 1333, the paper's test size)")
    _add_run_flags(parser, "autopanoptic_retrain")
    _add_data_flags(parser)
    _add_size_flags(parser, "the paper's 3.8G network: 72 172 432 864 1728", search=False)
    schedule = parser.add_argument_group("schedule (the original's multi-step)")
    add_flag(schedule, "max-iter", type=positive_int, default=None, locked=True, help="iterations (the paper: 90000)")
    add_flag(schedule, "lr-steps", type=positive_int, nargs="+", default=None, locked=True,
             help="iterations where the learning rate drops by --lr-gamma (the paper: 60000 80000)")
    add_flag(schedule, "lr-gamma", type=positive_float, default=0.1, locked=True, help="the drop's factor")
    add_flag(schedule, "warmup-iters", type=non_negative_int, default=None, locked=True,
             help="linear warm-up from 0.1 x the learning rate (the paper: 500)")
    _add_optimiser_flags(schedule)
    add_flag(schedule, "eval-every", type=positive_int, default=1,
             help="validate (PQ) every N passes over the training data, and at the end (default: %(default)s)")
    return parser
