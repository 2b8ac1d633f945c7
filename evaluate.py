"""Evaluate a trained network on a dataset split, optionally with multi-scale and flip testing, or score a folder
of predictions made elsewhere.

    python evaluate.py --ckpt run/cityscapes/retrain/experiment_0/model_best.pth.tar \
        --eval-scales 0.5 0.75 1.0 1.25 1.5 1.75 --flip
    python evaluate.py --dataset cityscapes --pred-dir predictions/masks
    python evaluate.py --dataset coco_panoptic --data_root coco --pred-json out/panoptic.json --pred-dir out/panoptic

Prints the per-class table and writes ``metrics.json``, ``per_class.csv`` and ``confusion_matrix.png``. A
panoptic network (Auto-Panoptic) is scored by PQ, SQ and RQ (all, things, stuff, per category) and the
semantic mIoU, into ``metrics.json``; COCO-panoptic prediction files are scored by PQ, SQ and RQ as
panopticapi's ``pq_compute`` scores them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from config_utils.common import explicit_dests
from config_utils.eval_args import eval_parser
from dataloaders import (SeededSampler, SegmentationDataset, check_recorded_split, check_split, make_loader,
                         panoptic_split_source, resolve_num_classes, split_dataset, validation_loader)
from dataloaders.files import read_label_png
from dataloaders.panoptic import PanopticDataset, PanopticSource, PanopticTransform, collate, read_panoptic_png
from dataloaders.registry import DatasetInfo, inherit_dataset_flags
from dataloaders.transforms import eval_transform
from engine.cli import resolve_device, run_cli
from engine.distributed import DistributedContext
from evaluation.metrics import ConfusionMatrix
from evaluation.panoptic import evaluate_panoptic, write_panoptic_report
from evaluation.panoptic_quality import PanopticQuality, area_note
from evaluation.semantic import evaluate, write_semantic_report
from modeling.registry import checkpoint_classes, load_trained_model
from utils.errors import UserError
from utils.output_path import check_output_path


def report_dir(args: argparse.Namespace) -> Path:
    """--out-dir, or beside the checkpoint (or the prediction folder) a folder named by the split and the
    test-time options."""
    if args.out_dir:
        return Path(args.out_dir)
    if args.pred_dir is not None:
        return Path(args.pred_dir).resolve().parent / f"eval_{args.split}"
    tags = [f"eval_{args.split}"] + (["ms"] if list(args.eval_scales) != [1.0] else []) + (["flip"] if args.flip else [])
    return Path(args.ckpt).resolve().parent / "_".join(tags)


def read_prediction_json(path: Path) -> dict[Any, dict[str, Any]]:
    """The annotations of a COCO-panoptic predictions JSON by image id, each checked to name its PNG and list its
    segments; one line naming the file for anything else."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--pred-json {path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"--pred-json {path}: not a readable JSON ({error!r})") from None
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise UserError(f"--pred-json {path}: a COCO-panoptic predictions JSON is an object with a list "
                        "'annotations'")
    by_image: dict[Any, dict[str, Any]] = {}
    for annotation in annotations:
        if not (isinstance(annotation, dict) and "image_id" in annotation
                and isinstance(annotation.get("file_name"), str) and isinstance(annotation.get("segments_info"), list)):
            raise UserError(f"--pred-json {path}: annotation {str(annotation)[:200]} needs an 'image_id', a str "
                            "'file_name' (its PNG) and a list 'segments_info'")
        if annotation["image_id"] in by_image:
            raise UserError(f"--pred-json {path}: image id {annotation['image_id']!r} has two predictions")
        by_image[annotation["image_id"]] = annotation
    return by_image


def score_panoptic_files(args: argparse.Namespace, source: PanopticSource, out_dir: Path) -> dict[str, Any]:
    """PQ/SQ/RQ of a COCO-panoptic prediction set (``--pred-json`` and its PNGs in ``--pred-dir``) against the
    split's ground truth, with panopticapi's rules and checks: every image needs a prediction (by image id), its
    PNG and segment list must agree, and it must have the image's size."""
    pred_dir = Path(args.pred_dir)
    pred_json = Path(args.pred_json) if args.pred_json else pred_dir.with_suffix(".json")
    predictions = read_prediction_json(pred_json)
    quality = PanopticQuality(source.categories)
    for index in tqdm(range(len(source)), desc=f"scoring {args.dataset} {args.split}", leave=False, disable=None):
        image_id = source.image_id(index)
        annotation = predictions.get(image_id)
        if annotation is None:
            raise UserError(f"--pred-json {pred_json}: no prediction for the image with id {image_id!r} "
                            f"({source.describe(index)})")
        png = pred_dir / annotation["file_name"]
        gt_ids, gt_segments = source.ground_truth(index)
        quality.update(gt_ids, gt_segments, read_panoptic_png(png), annotation["segments_info"],
                       image=f"{png} (image id {image_id})")
    summary = quality.summary()
    scores = {"pq": summary["All"]["pq"], "sq": summary["All"]["sq"], "rq": summary["All"]["rq"],
              "pq_things": summary["Things"]["pq"], "pq_stuff": summary["Stuff"]["pq"], "panoptic": summary}
    details = {"predictions": str(pred_json.resolve()), "prediction_dir": str(pred_dir.resolve()),
               "dataset": args.dataset, "split": args.split, "images": len(source),
               "gt_area_mismatches": len(quality.area_mismatches)}
    print(write_panoptic_report(scores, source.categories, out_dir, details))
    if note := area_note(quality.area_mismatches):
        print(note)
    return scores


def prediction_pngs(pred_dir: Path) -> dict[str, Path]:
    """The PNGs under ``pred_dir`` (searched recursively) by stem; two with one stem are an error."""
    if not pred_dir.is_dir():
        raise UserError(f"--pred-dir {pred_dir}: not a folder")
    found: dict[str, Path] = {}
    for path in sorted(pred_dir.rglob("*.png")):
        other = found.setdefault(path.stem, path)
        if other != path:
            raise UserError(f"--pred-dir {pred_dir}: {other} and {path} both predict an image named {path.stem}")
    return found


def score_semantic_files(args: argparse.Namespace, info: DatasetInfo, out_dir: Path) -> dict[str, Any]:
    """mIoU and the per-class scores of index-PNG predictions (``--pred-dir``, one per image, named like it, as
    inference.py writes them) against the split's labels, at the labels' own size."""
    num_classes = resolve_num_classes(args)
    args.num_classes = num_classes
    source = info.make_source(args.split, args)
    image_path = getattr(source, "image_path", None)
    if image_path is None:
        raise UserError(f"--pred-dir: dataset {args.dataset} is generated, so no image file names its predictions")
    predictions = prediction_pngs(Path(args.pred_dir))
    matrix = ConfusionMatrix(num_classes)
    for index in tqdm(range(len(source)), desc=f"scoring {args.dataset} {args.split}", leave=False, disable=None):
        labels = source.load(index)[1]
        image = image_path(index)
        png = predictions.get(image.stem)
        if png is None:
            raise UserError(f"--pred-dir {args.pred_dir}: no prediction {image.stem}.png for {image}")
        prediction = read_label_png(png)
        if prediction.shape != labels.shape:
            raise UserError(f"{png}: prediction is {prediction.shape[0]}x{prediction.shape[1]} but the labels of "
                            f"{image.name} are {labels.shape[0]}x{labels.shape[1]}")
        if (unknown := np.unique(prediction[prediction >= num_classes])).size:
            raise UserError(f"{png}: values {', '.join(map(str, unknown[:10].tolist()))} are not classes of "
                            f"{args.dataset} (0..{num_classes - 1})")
        matrix.update(torch.tensor(prediction), torch.tensor(labels))
    summary = matrix.summary() | {"confusion_matrix": matrix.matrix.tolist()}
    details = {"prediction_dir": str(Path(args.pred_dir).resolve()), "dataset": args.dataset, "split": args.split,
               "images": len(source)}
    print(write_semantic_report(summary, list(source.class_names)[:num_classes], out_dir, details))
    return summary


def score_prediction_files(args: argparse.Namespace, out_dir: Path) -> Path:
    """Score ``--pred-dir`` against the split named by the dataset flags: no checkpoint, no network."""
    if args.ckpt is not None:
        raise UserError("--ckpt and --pred-dir: evaluate a checkpoint or score prediction files, not both")
    if list(args.eval_scales) != [1.0] or args.flip or args.resize:
        raise UserError("--eval-scales/--flip/--resize: shape a checkpoint's predictions; prediction files are "
                        "scored as they are")
    info = split_dataset(args)
    if "panoptic" in info.tasks:
        score_panoptic_files(args, info.make_source(args.split, args), out_dir)
    elif args.pred_json is not None:
        raise UserError(f"--pred-json: dataset {args.dataset} has semantic labels, scored from --pred-dir's index "
                        "PNGs alone")
    else:
        score_semantic_files(args, info, out_dir)
    print(f"report written to {out_dir}")
    return out_dir


def evaluate_panoptic_network(args: argparse.Namespace, model: torch.nn.Module, checkpoint: dict[str, Any],
                              device: torch.device, out_dir: Path) -> Path:
    """PQ/SQ/RQ (all, things, stuff, per category) and the semantic mIoU of an Auto-Panoptic network."""
    if list(args.eval_scales) != [1.0] or args.flip or args.resize:
        raise UserError("--eval-scales/--flip/--resize: a panoptic network is evaluated at its own input size, as "
                        "it was trained (its images are resized by --min-size/--max-size)")
    trained, categories = checkpoint["args"], checkpoint["categories"]
    source = panoptic_split_source(args, categories, args.ckpt)
    check_split(source, args.split, args)
    dataset = PanopticDataset(source, PanopticTransform(trained["min_size"], trained["max_size"], train=False))
    loader = make_loader(dataset, SeededSampler(range(len(dataset)), 0, shuffle=False), 1, args.workers,
                         drop_last=False, collate_fn=collate)
    scores = evaluate_panoptic(model, loader, categories, device, desc=f"evaluating {args.dataset} {args.split}",
                               stuff_area_limit=trained["stuff_area_limit"])
    details = {"checkpoint": str(Path(args.ckpt).resolve()), "epoch": checkpoint["epoch"], "dataset": args.dataset,
               "split": args.split, "images": len(source), "gt_area_mismatches": len(scores["gt_area_mismatches"])}
    print(write_panoptic_report(scores, categories, out_dir, details))
    if note := area_note(scores["gt_area_mismatches"]):
        print(note)
    print(f"report written to {out_dir}")
    return out_dir


def main(argv: list[str] | None = None) -> Path:
    parser = eval_parser()
    args = parser.parse_args(argv)
    if args.pred_dir is None and args.pred_json is not None:
        raise UserError("--pred-json: needs --pred-dir, the folder of the PNGs it lists")
    if args.pred_dir is None and args.ckpt is None:
        raise UserError("--ckpt: required (the network to evaluate), unless --pred-dir scores prediction files")
    out_dir = check_output_path("--out-dir", report_dir(args))
    if args.pred_dir is not None:
        return score_prediction_files(args, out_dir)
    device = resolve_device(args.device)
    model, checkpoint, spec = load_trained_model(args.ckpt, device)
    if spec.task == "panoptic":
        inherit_dataset_flags(args, checkpoint["args"], explicit_dests(parser, argv))
        return evaluate_panoptic_network(args, model, checkpoint, device, out_dir)
    trained_classes = checkpoint["args"]["num_classes"]
    inherit_dataset_flags(args, checkpoint["args"], explicit_dests(parser, argv))
    args.num_classes = resolve_num_classes(args)
    if args.num_classes != trained_classes:
        raise UserError(f"--dataset {args.dataset}: has {args.num_classes} classes, but {args.ckpt} predicts "
                        f"{trained_classes}")
    source = split_dataset(args).make_source(args.split, args)
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
    table = write_semantic_report(summary, checkpoint_classes(checkpoint)[0], out_dir, details)
    print(table)
    print(f"report written to {out_dir}")
    return out_dir


if __name__ == "__main__":
    run_cli(main, "evaluate.py")
