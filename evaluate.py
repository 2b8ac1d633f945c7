"""Evaluate a trained network on a dataset split, optionally with multi-scale and flip testing.

    python evaluate.py --ckpt run/cityscapes/retrain/experiment_0/model_best.pth.tar \
        --eval-scales 0.5 0.75 1.0 1.25 1.5 1.75 --flip

Prints the per-class table and writes ``metrics.json``, ``per_class.csv`` and ``confusion_matrix.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from config_utils.common import explicit_dests
from config_utils.eval_args import eval_parser
from dataloaders import (SegmentationDataset, check_recorded_split, check_split, get_dataset_info,
                         resolve_num_classes, validation_loader)
from dataloaders.registry import inherit_dataset_flags
from dataloaders.transforms import eval_transform
from modeling.registry import checkpoint_classes, load_trained_model
from utils.cli import resolve_device, run_cli
from utils.distributed import DistributedContext
from utils.errors import UserError
from utils.evaluation import evaluate, write_report


def default_report_dir(args: argparse.Namespace) -> Path:
    tags = [f"eval_{args.split}"] + (["ms"] if list(args.eval_scales) != [1.0] else []) + (["flip"] if args.flip else [])
    return Path(args.ckpt).resolve().parent / "_".join(tags)


def main(argv: list[str] | None = None) -> Path:
    parser = eval_parser()
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    model, checkpoint = load_trained_model(args.ckpt, device)
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
    out_dir = Path(args.out_dir) if args.out_dir else default_report_dir(args)
    details = {"checkpoint": str(Path(args.ckpt).resolve()), "epoch": checkpoint["epoch"], "dataset": args.dataset,
               "split": args.split, "images": len(source), "eval_scales": list(args.eval_scales), "flip": args.flip,
               "resize": args.resize}
    table = write_report(summary, checkpoint_classes(checkpoint)[0], out_dir, details)
    print(table)
    print(f"report written to {out_dir}")
    return out_dir


if __name__ == "__main__":
    run_cli(main, "evaluate.py")
