"""Evaluate a trained network on a dataset split, optionally with multi-scale and flip testing.

    python evaluate.py --ckpt run/cityscapes/retrain/experiment_0/model_best.pth.tar \
        --eval-scales 0.5 0.75 1.0 1.25 1.5 1.75 --flip

Prints the per-class table and writes ``metrics.json``, ``per_class.csv`` and ``confusion_matrix.png``. A
panoptic network (Auto-Panoptic) is scored by PQ, SQ and RQ (all, things, stuff, per category) and the
semantic mIoU, into ``metrics.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from config_utils.common import explicit_dests
from config_utils.eval_args import eval_parser
from dataloaders import (SeededSampler, SegmentationDataset, check_recorded_split, check_split, get_dataset_info,
                         make_loader, resolve_num_classes, validation_loader)
from dataloaders.panoptic import PanopticDataset, PanopticTransform, collate
from dataloaders.registry import inherit_dataset_flags
from dataloaders.transforms import eval_transform
from modeling.registry import checkpoint_classes, load_trained_model
from search import autopanoptic_retrain
from search.autopanoptic_retrain import write_report as write_panoptic_report
from utils.cli import resolve_device, run_cli
from utils.distributed import DistributedContext
from utils.errors import UserError
from utils.evaluation import evaluate, write_report
from utils.output_path import check_output_path
from utils.panoptic_evaluation import evaluate_panoptic


def report_dir(args: argparse.Namespace) -> Path:
    """--out-dir, or beside the checkpoint a folder named by the split and the test-time options."""
    if args.out_dir:
        return Path(args.out_dir)
    tags = [f"eval_{args.split}"] + (["ms"] if list(args.eval_scales) != [1.0] else []) + (["flip"] if args.flip else [])
    return Path(args.ckpt).resolve().parent / "_".join(tags)


def evaluate_panoptic_network(args: argparse.Namespace, model: torch.nn.Module, checkpoint: dict[str, Any],
                              device: torch.device, out_dir: Path) -> Path:
    """PQ/SQ/RQ (all, things, stuff, per category) and the semantic mIoU of an Auto-Panoptic network."""
    if list(args.eval_scales) != [1.0] or args.flip or args.resize:
        raise UserError("--eval-scales/--flip/--resize: a panoptic network is evaluated at its own input size, as "
                        "it was trained (its images are resized by --min-size/--max-size)")
    trained = checkpoint["args"]
    info = get_dataset_info(args.dataset)
    if "panoptic" not in info.tasks:
        raise UserError(f"--dataset {args.dataset}: its labels serve {', '.join(info.tasks)}, and {args.ckpt} is a "
                        "panoptic network")
    if args.split not in info.splits:
        raise UserError(f"--split {args.split}: dataset {args.dataset} has the splits {', '.join(info.splits)}")
    source = info.make_source(args.split, args)
    categories = checkpoint["categories"]
    def kinds(listed: list[dict[str, Any]]) -> list[tuple[int, bool]]:
        return [(category["id"], bool(category["isthing"])) for category in listed]

    if kinds(source.categories) != kinds(categories):
        raise UserError(f"--dataset {args.dataset}: its categories differ from those {args.ckpt} was trained on")
    check_split(source, args.split, args)
    dataset = PanopticDataset(source, PanopticTransform(trained["min_size"], trained["max_size"], train=False))
    loader = make_loader(dataset, SeededSampler(range(len(dataset)), 0, shuffle=False), 1, args.workers,
                         drop_last=False, collate_fn=collate)
    scores = evaluate_panoptic(model, loader, categories, device, desc=f"evaluating {args.dataset} {args.split}",
                               stuff_area_limit=trained["stuff_area_limit"])
    details = {"checkpoint": str(Path(args.ckpt).resolve()), "epoch": checkpoint["epoch"], "dataset": args.dataset,
               "split": args.split, "images": len(source)}
    print(write_panoptic_report(scores, categories, out_dir, details))
    print(f"report written to {out_dir}")
    return out_dir


def main(argv: list[str] | None = None) -> Path:
    parser = eval_parser()
    args = parser.parse_args(argv)
    out_dir = check_output_path("--out-dir", report_dir(args))
    device = resolve_device(args.device)
    model, checkpoint = load_trained_model(args.ckpt, device)
    if checkpoint.get("system") == autopanoptic_retrain.SYSTEM:
        inherit_dataset_flags(args, checkpoint["args"], explicit_dests(parser, argv))
        return evaluate_panoptic_network(args, model, checkpoint, device, out_dir)
    trained_classes = checkpoint["args"]["num_classes"]
    inherit_dataset_flags(args, checkpoint["args"], explicit_dests(parser, argv))
    args.num_classes = resolve_num_classes(args)
    if args.num_classes != trained_classes:
        raise UserError(f"--dataset {args.dataset}: has {args.num_classes} classes, but {args.ckpt} predicts "
                        f"{trained_classes}")
    info = get_dataset_info(args.dataset)
    if args.split not in info.splits:
        raise UserError(f"--split {args.split}: dataset {args.dataset} has the splits {', '.join(info.splits)}")
    source = info.make_source(args.split, args)
    if args.dataset == checkpoint["args"]["dataset"]:  # the data it trained on: the same split, or a clear refusal
        check_recorded_split(checkpoint.get("data_split"), getattr(source, "data_split", None), args.ckpt)
    check_split(source, args.split, args)
    # Full-size images and labels: --resize shrinks only the network's input, and the scores are taken at the
    # labels' own size (as the official evaluations do).
    loader = validation_loader(SegmentationDataset(source, eval_transform(None), args.num_classes),
                               args.workers, DistributedContext())
    summary = evaluate(model, loader, args.num_classes, device, scales=args.eval_scales, flip=args.flip,
                       desc=f"evaluating {args.dataset} {args.split}", resize=args.resize)
    details = {"checkpoint": str(Path(args.ckpt).resolve()), "epoch": checkpoint["epoch"], "dataset": args.dataset,
               "split": args.split, "images": len(source), "eval_scales": list(args.eval_scales), "flip": args.flip,
               "resize": args.resize}
    table = write_report(summary, checkpoint_classes(checkpoint)[0], out_dir, details)
    print(table)
    print(f"report written to {out_dir}")
    return out_dir


if __name__ == "__main__":
    run_cli(main, "evaluate.py")
