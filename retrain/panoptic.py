"""The retrain stage of Auto-Panoptic (Wu et al., NeurIPS 2020, Sec. 4; the original's configs for the searched
COCO model): the searched network trained from scratch (or from a local backbone file) with the original's
multi-step schedule, validated by PQ, and reported per category. ``train_new_model.py`` runs it for an
Auto-Panoptic architecture.

Every parameter takes the base learning rate (no per-group division: one network, one path), biases twice it
without weight decay; the rate warms up linearly over ``--warmup-iters`` from 0.1 and drops by
``--lr-gamma`` at each of ``--lr-steps``. The best checkpoint is chosen by PQ.
"""

from __future__ import annotations

import argparse
import bisect
from collections.abc import Sequence
from typing import Any

import torch

from config_utils.autopanoptic_args import RETRAIN_RECIPE_FLAGS, autopanoptic_retrain_parser, check_group_norm_widths
from config_utils.common import parse_stage_args
from config_utils.recipes import recipe
from dataloaders import SeededSampler, make_loader, require_panoptic_dataset, training_sources
from dataloaders.panoptic import PanopticDataset, PanopticTransform, collate, trainable_indices
from engine.checkpoint import Checkpointer
from engine.distributed import DistributedContext
from engine.hooks import StageRun, ValidationPlan, fit_stage, resume_point
from engine.run_dir import RunDir
from engine.stage import open_stage_run, process_setup, report_best
from engine.trainer import Hook
from evaluation.panoptic import PanopticValidation, evaluate_panoptic, write_panoptic_report
from modeling.architecture_file import (architecture_from_json, architecture_to_json, load_architecture,
                                        save_architecture)
from modeling.autopanoptic.genotype import PanopticGenotype
from modeling.autopanoptic.network import build
from search.autopanoptic.one_shot import lr_param_groups
from search.autopanoptic.stage import PanopticStep, class_counts, deterministic_algorithms
from utils.errors import UserError

SYSTEM = PanopticGenotype.system
WARMUP_FACTOR = 0.1
SUMMARY_DATASET = "coco_panoptic"  # --summary describes the network on COCO panoptic, at the paper's sizes
COCO_THING_CLASSES, COCO_STUFF_CLASSES = 80, 53


def warmup_multistep_factor(iteration: int, milestones: Sequence[int], gamma: float, warmup_iters: int,
                            warmup_factor: float = WARMUP_FACTOR) -> float:
    """maskrcnn-benchmark's ``WarmupMultiStepLR`` after ``iteration`` scheduler steps: ``gamma`` to the power of
    the milestones passed, times a linear warm-up from ``warmup_factor`` to 1 over ``warmup_iters``."""
    factor = gamma ** bisect.bisect_right(list(milestones), iteration)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def check_args(args: argparse.Namespace) -> None:
    if args.saved_arch_path is None:
        raise UserError("--saved_arch_path: required (the architecture to retrain), unless --resume continues a run")
    check_group_norm_widths(args)
    if sorted(args.lr_steps) != args.lr_steps or args.lr_steps[-1] >= args.max_iter:
        raise UserError(f"--lr-steps {' '.join(map(str, args.lr_steps))}: expected increasing iterations below "
                        f"--max-iter {args.max_iter}")
    args.model = SYSTEM  # the registered network that loads the checkpoint (modeling.registry)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, Any] | None]:
    """The arguments, and the checkpoint being resumed (whose own arguments fill unset flags); for --summary, the
    network's arguments alone."""
    if autopanoptic_retrain_parser().parse_args(argv).summary:
        return summary_args(argv), None
    return parse_stage_args(autopanoptic_retrain_parser(), argv, SYSTEM, "retrain", RETRAIN_RECIPE_FLAGS,
                            prepare=lambda args: require_panoptic_dataset(args.dataset), check=check_args)


def summary_args(argv: list[str] | None) -> argparse.Namespace:
    """--summary's network: the architecture file's, with COCO panoptic's categories and, for every size flag not
    given, the paper's retrain value (so the table needs no data and describes the paper's network)."""
    args = autopanoptic_retrain_parser().parse_args(argv)
    if args.saved_arch_path is None:
        raise UserError("--saved_arch_path: required (the architecture to summarise)")
    genotype = load_architecture(args.saved_arch_path, expected=PanopticGenotype)
    for flag, value in recipe(SYSTEM, "retrain", SUMMARY_DATASET).items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    check_group_norm_widths(args)
    args.thing_classes, args.stuff_classes = COCO_THING_CLASSES, COCO_STUFF_CLASSES
    args.stage_repeats = list(genotype.stage_repeats)
    args.model = SYSTEM
    return args


def genotype_of(args: argparse.Namespace, resumed: dict[str, Any] | None) -> PanopticGenotype:
    if resumed is not None:
        return architecture_from_json(resumed["architecture"], f"{args.resume} (architecture)")
    return load_architecture(args.saved_arch_path, expected=PanopticGenotype)


def retrain(args: argparse.Namespace, resumed: dict[str, Any] | None, context: DistributedContext,
            argv: list[str] | None, hooks: Sequence[Hook] = ()) -> RunDir | None:
    process = process_setup(args, context, sync_bn=True)  # the original's SyncBN, where several GPUs run
    device = process.device
    genotype = genotype_of(args, resumed)
    sources = training_sources(args, context, task="panoptic")
    categories = sources.train.categories
    args.thing_classes, args.stuff_classes = class_counts(categories)
    args.stage_repeats = list(genotype.stage_repeats)
    indices = trainable_indices(sources.train)
    if len(indices) < args.batch_size:
        raise UserError(f"--batch-size {args.batch_size}: the training split has only {len(indices)} usable images")
    train_set = PanopticDataset(sources.train, PanopticTransform(args.min_size, args.max_size, train=True))
    loader = make_loader(train_set, SeededSampler(indices, args.seed, shuffle=True, num_replicas=context.world_size,
                                                  rank=context.rank, drop_last=True), process.batch_size, args.workers,
                         drop_last=True, collate_fn=collate)
    val_set = PanopticDataset(sources.val, PanopticTransform(args.min_size, args.max_size, train=False))
    val_loader = make_loader(val_set, SeededSampler(range(context.rank, len(val_set), context.world_size), 0,
                                                    shuffle=False), 1, args.workers, drop_last=False,
                             collate_fn=collate)
    torch.manual_seed(args.seed)  # built before the run directory: a bad --backbone-weights file leaves none
    model = build(vars(args), genotype, args.backbone_weights if resumed is None else None).to(device)
    if process.sync_bn:  # the backbone's statistics over every GPU's images
        model.backbone = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.backbone)
    run_dir, logger = open_stage_run(args, argv, SYSTEM, "retrain", context)
    if run_dir is not None:
        save_architecture(genotype, run_dir.architecture)
    optimizer = torch.optim.SGD(lr_param_groups(model.named_parameters(), None, args.base_lr, args.weight_decay),
                                lr=args.base_lr, momentum=args.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda iteration: warmup_multistep_factor(
        iteration, args.lr_steps, args.lr_gamma, args.warmup_iters))
    precision = process.precision()
    step = PanopticStep(model, optimizer, scheduler, None, precision, device, context)
    checkpointer = Checkpointer(
        {"system": SYSTEM, "stage": "retrain", "args": vars(args), "categories": categories,
         "classes": sources.classes, "data_split": sources.data_split,
         "architecture": architecture_to_json(genotype)},
        model, optimizer=optimizer, scheduler=scheduler, scaler=precision, step=step)
    resume = resume_point(resumed, checkpointer, run_dir, "--resume", (run_dir.metrics,) if run_dir else ())
    logger.info(f"retrain: {args.dataset} ({args.thing_classes} thing, {args.stuff_classes} stuff categories), train "
                f"{len(indices)} / val {len(val_set)} images, Auto-Panoptic network of {sum(genotype.stage_repeats)} "
                f"blocks at widths {list(args.widths)}, {sum(p.numel() for p in model.parameters()):,} parameters, "
                f"{args.max_iter} iterations of {args.batch_size} image(s), device {device}, {context.world_size} "
                f"process(es){', SyncBatchNorm' if process.sync_bn else ''}, amp {process.amp_text}; run directory "
                f"{run_dir}")
    validate = PanopticValidation(model, val_loader, categories, device, context, args.stuff_area_limit)
    with deterministic_algorithms(args.deterministic):
        checkpoint = fit_stage(step, loader, StageRun(run_dir, checkpointer, context, resume,
                                                      (["train_loss", "pq", "pq_things", "pq_stuff"], "retrain"),
                                                      args.checkpoint_period),
                               ValidationPlan(validate, args.eval_every, "pq"), max_iters=args.max_iter,
                               desc="retrain", extra=hooks)
    return report_best(model, run_dir, context,
                       lambda: evaluate_panoptic(model, val_loader, categories, device, context=context, desc="report",
                                                 stuff_area_limit=args.stuff_area_limit),
                       lambda scores, folder, details: write_panoptic_report(scores, categories, folder, details),
                       logger, "PQ", checkpoint)
