"""The semantic retrain (Auto-DeepLab, the decoder search's networks and the DeepLabV3+ baseline): a decoded
architecture or a hand-designed network trained from scratch and evaluated, as ``train_new_model.py`` runs it.

SGD with a poly learning rate, cross-entropy ignoring label 255, validation mIoU every epoch,
``checkpoint.pth.tar`` / ``model_best.pth.tar`` and ``--resume``, on the shared training loop
(``engine.trainer``). The network comes from the registry (``modeling.registry``): the one that
retrains the architecture file's search system, or a hand-designed baseline (``--model``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from config_utils.common import chosen_dests, explicit_dests, resumed_arguments
from config_utils.recipes import fill_recipe_defaults
from config_utils.retrain_args import retrain_parser
from dataloaders import (SeededSampler, SegmentationDataset, keep_data_split, make_loader, resolve_num_classes,
                         training_sources, validation_loader)
from dataloaders.transforms import denormalize, eval_transform, retrain_train_transform
from engine.checkpoint import Checkpointer, load_checkpoint
from engine.distributed import DistributedContext, wrap_ddp
from engine.hooks import StageRun, ValidationPlan, fit_stage, resume_point
from engine.losses import make_criterion
from engine.lr_schedule import build_scheduler
from engine.run_dir import RunDir
from engine.stage import open_stage_run, process_setup, report_best
from engine.trainer import Hook, SupervisedStep
from evaluation.semantic import SemanticValidation, evaluate, write_semantic_report
from modeling.architecture_file import architecture_to_json, save_architecture
from modeling.drop_path import scheduled_probability
from modeling.heads import ASPP_MIN_BATCH, ASPP_MIN_BATCH_REASON
from modeling.registry import refuse_unread_flags
from retrain import network
from utils.errors import UserError
from utils.flags import locked_dests

RECIPE_SYSTEM = "autodeeplab"  # the baseline trains with the searched networks' recipe, so only the network differs


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict | None]:
    """The arguments, and the checkpoint being resumed (whose own arguments fill unset flags)."""
    parser = retrain_parser()
    args = parser.parse_args(argv)
    if not 0 < args.scale_range[0] <= args.scale_range[1]:
        raise UserError(f"--scale_range {args.scale_range[0]} {args.scale_range[1]}: expected 0 < MIN <= MAX")
    if not 0.0 <= args.drop_path_prob < 1.0:
        raise UserError(f"--drop_path_prob {args.drop_path_prob}: expected a probability in [0, 1)")
    if not 0.0 < args.ohem_thresh <= 1.0:
        raise UserError(f"--ohem_thresh {args.ohem_thresh}: expected a probability in (0, 1]")
    chosen = chosen_dests(retrain_parser, argv, args)
    resumed = load_checkpoint(args.resume, stage="retrain") if args.resume and not args.summary else None
    refuse_unread_flags(network(args, resumed)[0], chosen)
    if resumed is not None:
        return resumed_arguments(args.resume, resumed["args"], args, explicit_dests(parser, argv),
                                 locked_dests(parser)), resumed
    if not args.summary:
        fill_recipe_defaults(args, RECIPE_SYSTEM, "retrain", required=("epochs", "batch_size", "crop_size"))
    args.num_classes = resolve_num_classes(args)
    return args, None


def retrain(args: argparse.Namespace, resumed: dict[str, Any] | None, context: DistributedContext,
            argv: list[str] | None, hooks: Sequence[Hook] = ()) -> RunDir | None:
    process = process_setup(args, context, sync_bn=args.sync_bn, min_batch=ASPP_MIN_BATCH, why=ASPP_MIN_BATCH_REASON)
    device = process.device
    spec, genotype = network(args, resumed)
    sources = training_sources(args, context)
    train_set = SegmentationDataset(sources.train, retrain_train_transform(args.crop_size, tuple(args.scale_range)),
                                    args.num_classes)
    val_set = SegmentationDataset(sources.val, eval_transform(None), args.num_classes)
    if len(train_set) < args.batch_size:
        raise UserError(f"--batch_size {args.batch_size}: the training split holds only {len(train_set)} images")
    sampler = SeededSampler(range(len(train_set)), args.seed, shuffle=True, num_replicas=context.world_size,
                            rank=context.rank, drop_last=True)
    train_loader = make_loader(train_set, sampler, process.batch_size, args.workers, drop_last=True)
    val_loader = validation_loader(val_set, args.workers, context)
    torch.manual_seed(args.seed)  # built before the run directory: a bad --backbone_weights file leaves none
    model = spec.build(vars(args), genotype, args.backbone_weights if resumed is None else None).to(device)
    system = genotype.system if genotype is not None else None
    run_dir, logger = open_stage_run(args, argv, system or spec.name, "retrain", context)
    keep_data_split(sources, resumed, run_dir, args.resume)
    if run_dir is not None and genotype is not None:
        save_architecture(genotype, run_dir.architecture)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.base_lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    steps_per_epoch = len(train_loader)
    total_steps = args.epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, total_steps, args.lr_scheduler, args.poly_power,
                                args.lr_step * steps_per_epoch, args.lr_gamma, args.warmup_iters, args.warmup_start)
    precision = process.precision()
    checkpointer = Checkpointer(
        {"system": system, "stage": "retrain", "args": vars(args), "classes": sources.classes,
         "data_split": sources.data_split,
         "architecture": architecture_to_json(genotype) if genotype is not None else None},
        model, optimizer=optimizer, scheduler=scheduler, scaler=precision)
    resume = resume_point(resumed, checkpointer, run_dir, "--resume", (run_dir.metrics,) if run_dir else ())
    ddp_model = wrap_ddp(nn.SyncBatchNorm.convert_sync_batchnorm(model) if process.sync_bn else model, context, device)
    logger.info(f"retrain: {args.dataset} ({args.num_classes} classes), train {len(train_set)} / val "
                f"{len(val_set)} images, {spec.describe(vars(args), genotype)}, "
                f"{sum(p.numel() for p in model.parameters()):,} parameters, device {device}, {context.world_size} "
                f"process(es) of {process.batch_size} images{', SyncBatchNorm' if process.sync_bn else ''}, amp "
                f"{process.amp_text}{', compiled step' if args.compile else ''}; run directory {run_dir}")

    def drop_path(global_step: int) -> None:
        model.set_drop_path_prob(scheduled_probability(args.drop_path_prob, global_step, total_steps))

    step = SupervisedStep(ddp_model, optimizer, scheduler, precision, device,
                          make_criterion(args.loss, args.ohem_thresh, args.ohem_min_kept),
                          before_forward=drop_path if args.drop_path_prob > 0 else None, compile=args.compile)
    validate = SemanticValidation(model, val_loader, args.num_classes, device, context, sources.palette,
                                      denormalize)
    checkpoint = fit_stage(step, train_loader, StageRun(run_dir, checkpointer, context, resume,
                                                        (["train_loss", "val_loss", "val_miou"], "retrain")),
                           ValidationPlan(validate, args.eval_interval, "val_miou"), epochs=args.epochs,
                           desc="retrain", extra=hooks)

    # The final report: the best checkpoint's network on the whole validation split, per class.
    return report_best(model, run_dir, context,
                       lambda: evaluate(model, val_loader, args.num_classes, device, desc="report", context=context),
                       lambda scores, folder, details: write_semantic_report(scores, sources.classes["names"], folder,
                                                                             details),
                       logger, "mIoU", checkpoint)
