"""Stage 3: retrain a decoded architecture (or the DeepLabV3+ baseline) from scratch and evaluate it.

SGD with a poly learning rate, cross-entropy ignoring label 255, validation mIoU every epoch,
``checkpoint.pth.tar`` / ``model_best.pth.tar`` and ``--resume``, on the shared training loop
(``engine.trainer``). The network comes from the registry (``modeling.registry``): the one that
retrains the architecture file's search system, or a hand-designed baseline (``--model``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from config_utils.autopanoptic_args import autopanoptic_retrain_parser
from config_utils.common import chosen_dests, explicit_dests, resumed_arguments
from config_utils.recipes import fill_recipe_defaults
from config_utils.retrain_args import retrain_parser
from dataloaders import (SeededSampler, SegmentationDataset, keep_data_split, make_loader, resolve_num_classes,
                         training_sources, validation_loader)
from dataloaders.transforms import denormalize, eval_transform, retrain_train_transform
from engine.checkpoint import Checkpointer, load_checkpoint
from engine.cli import process_setup, run_cli
from engine.distributed import DistributedContext, broadcast_from_main, run_in_process_group, wrap_ddp
from engine.hooks import fit_stage, resume_point
from engine.losses import make_criterion
from engine.lr_schedule import build_scheduler
from engine.precision import PrecisionStep, amp_dtype
from engine.run_dir import LOGGER_NAME, RunDir, check_run_output, open_run, resume_checkpoint
from engine.trainer import Hook, SupervisedStep
from evaluation.semantic import EVALUATORS, evaluate, write_report
from modeling.architecture_file import Genotype, architecture_to_json, load_architecture, save_architecture
from modeling.drop_path import scheduled_probability
from modeling.heads import ASPP_MIN_BATCH, ASPP_MIN_BATCH_REASON
from modeling.registry import ModelSpec, checkpoint_model, get_model, model_for_system, refuse_unread_flags
from retrain import panoptic as panoptic_retrain
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


def network(args: argparse.Namespace, resumed: dict | None) -> tuple[ModelSpec, Genotype | None]:
    """The network to train and the architecture it is built from: the resumed checkpoint's, else ``--model``'s,
    where a searched model is the one registered for the architecture file's system."""
    if resumed is not None:
        return checkpoint_model(resumed, args.resume)
    spec = get_model(args.model)
    if spec.genotype_system is None:
        return spec, None
    genotype = load_architecture(args.saved_arch_path)
    spec = model_for_system(genotype.system)
    args.model = spec.name
    return spec, genotype


def refuse_the_other_retrains_flags(argv: list[str] | None, panoptic: bool) -> None:
    """The semantic retrain counts epochs of crops and the panoptic one iterations of resized images, so each takes
    flags the other does not: one of the other's is refused naming the architectures it applies to, where argparse
    would only call it unrecognized."""
    own, other = ((autopanoptic_retrain_parser(), retrain_parser()) if panoptic
                  else (retrain_parser(), autopanoptic_retrain_parser()))
    own_flags, other_flags = ({flag for action in parser._actions for flag in action.option_strings}
                              for parser in (own, other))
    for token in sys.argv[1:] if argv is None else argv:
        flag = token.split("=", 1)[0]
        if flag.startswith("--") and flag not in own_flags and flag in other_flags:
            applies, given = (("semantic", "an Auto-Panoptic") if panoptic else ("Auto-Panoptic", "a semantic"))
            raise UserError(f"{flag}: applies to {applies} architectures only; this retrain is of {given} one")


def retrains_panoptic(argv: list[str] | None) -> bool:
    """Whether the command retrains an Auto-Panoptic architecture (its file, or the resumed checkpoint, says so):
    that network trains with its own flags and loop (``retrain.panoptic``)."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--saved_arch_path", "--saved-arch-path")
    probe.add_argument("--resume", type=resume_checkpoint)
    known, _ = probe.parse_known_args(argv)
    if known.resume:
        return load_checkpoint(known.resume, stage="retrain").get("system") == panoptic_retrain.SYSTEM
    return bool(known.saved_arch_path) and load_architecture(known.saved_arch_path).system == \
        panoptic_retrain.SYSTEM


def main(argv: list[str] | None = None, hooks: Sequence[Hook] = ()) -> Path | None:
    """Retrain (or print --summary); under torchrun every process calls this, and rank 0 returns the run directory.
    ``hooks`` join the training loop's (before its own), e.g. to watch or interrupt a run in a test."""
    panoptic = retrains_panoptic(argv)
    if panoptic:
        refuse_unread_flags(model_for_system(panoptic_retrain.SYSTEM), explicit_dests(retrain_parser(), argv))
    refuse_the_other_retrains_flags(argv, panoptic)
    if panoptic:
        args, resumed = panoptic_retrain.parse_args(argv)
        stage = panoptic_retrain.retrain
    else:
        args, resumed = parse_args(argv)
        stage = retrain
    if args.summary:
        spec, genotype = network(args, None)
        print(spec.summary(vars(args), genotype, tuple(args.input_size)))
        return None
    check_run_output(args)
    run_dir = run_in_process_group(args, lambda context: stage(args, resumed, context, argv, hooks))
    return run_dir.path if run_dir is not None else None


def retrain(args: argparse.Namespace, resumed: dict[str, Any] | None, context: DistributedContext,
            argv: list[str] | None, hooks: Sequence[Hook] = ()) -> RunDir | None:
    device, batch_size, sync_bn = process_setup(args, context, ASPP_MIN_BATCH, ASPP_MIN_BATCH_REASON)
    spec, genotype = network(args, resumed)
    sources = training_sources(args, context)
    train_set = SegmentationDataset(sources.train, retrain_train_transform(args.crop_size, tuple(args.scale_range)),
                                    args.num_classes)
    val_set = SegmentationDataset(sources.val, eval_transform(None), args.num_classes)
    if len(train_set) < args.batch_size:
        raise UserError(f"--batch_size {args.batch_size}: the training split holds only {len(train_set)} images")
    sampler = SeededSampler(range(len(train_set)), args.seed, shuffle=True, num_replicas=context.world_size,
                            rank=context.rank, drop_last=True)
    train_loader = make_loader(train_set, sampler, batch_size, args.workers, drop_last=True)
    val_loader = validation_loader(val_set, args.workers, context)
    torch.manual_seed(args.seed)  # built before the run directory: a bad --backbone_weights file leaves none
    model = spec.build(vars(args), genotype, args.backbone_weights if resumed is None else None).to(device)
    system = genotype.system if genotype is not None else None
    run_dir, logger = (open_run(args, argv, system or spec.name, "retrain") if context.is_main
                       else (None, logging.getLogger(LOGGER_NAME)))
    keep_data_split(sources, resumed, run_dir, args.resume)
    if run_dir is not None and genotype is not None:
        save_architecture(genotype, run_dir.architecture)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.base_lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    steps_per_epoch = len(train_loader)
    total_steps = args.epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, total_steps, args.lr_scheduler, args.poly_power,
                                args.lr_step * steps_per_epoch, args.lr_gamma, args.warmup_iters, args.warmup_start)
    dtype = amp_dtype(args.amp_dtype, device)
    precision = PrecisionStep(args.amp, device, dtype)
    checkpointer = Checkpointer(
        {"system": system, "stage": "retrain", "args": vars(args), "classes": sources.classes,
         "data_split": sources.data_split,
         "architecture": architecture_to_json(genotype) if genotype is not None else None},
        model, optimizer=optimizer, scheduler=scheduler, scaler=precision)
    resume = resume_point(resumed, checkpointer, run_dir, "--resume", (run_dir.metrics,) if run_dir else ())
    ddp_model = wrap_ddp(nn.SyncBatchNorm.convert_sync_batchnorm(model) if sync_bn else model, context, device)
    logger.info(f"retrain: {args.dataset} ({args.num_classes} classes), train {len(train_set)} / val "
                f"{len(val_set)} images, {spec.describe(vars(args), genotype)}, "
                f"{sum(p.numel() for p in model.parameters()):,} parameters, device {device}, {context.world_size} "
                f"process(es) of {batch_size} images{', SyncBatchNorm' if sync_bn else ''}, amp "
                f"{dtype if args.amp else 'off'}; run directory {run_dir}")

    def drop_path(global_step: int) -> None:
        model.set_drop_path_prob(scheduled_probability(args.drop_path_prob, global_step, total_steps))

    step = SupervisedStep(ddp_model, optimizer, scheduler, precision, device,
                          make_criterion(args.loss, args.ohem_thresh, args.ohem_min_kept),
                          before_forward=drop_path if args.drop_path_prob > 0 else None)
    validate = EVALUATORS["semantic"](model, val_loader, args.num_classes, device, context, sources.palette,
                                      denormalize)
    checkpoint = fit_stage(step, train_loader, epochs=args.epochs, desc="retrain", run_dir=run_dir,
                           checkpointer=checkpointer, context=context, evaluate=validate,
                           eval_interval=args.eval_interval, best_metric="val_miou", resume=resume,
                           curves=(["train_loss", "val_loss", "val_miou"], "retrain"), extra=hooks)

    # The final report: the best checkpoint's network on the whole validation split, per class.
    if run_dir is not None:
        best_state = load_checkpoint(run_dir.best, stage="retrain")
        model.load_state_dict(best_state["model"])
    broadcast_from_main(model, context, parameters=True)
    final = evaluate(model, val_loader, args.num_classes, device, desc="report", context=context)
    if run_dir is None:
        return None
    table = write_report(final, sources.classes["names"], run_dir.report,
                         {"checkpoint": str(run_dir.best), "epoch": best_state["epoch"]})
    logger.info(f"best checkpoint (epoch {best_state['epoch']}) on val, report in {run_dir.report}:\n{table}")
    logger.info(f"retrain finished: best val mIoU {checkpoint.best_text()}; checkpoints in {run_dir}")
    return run_dir


if __name__ == "__main__":
    run_cli(main, "train_new_model.py")
