"""Stage 3: retrain a decoded architecture from scratch and evaluate it.

SGD with a poly learning rate, cross-entropy ignoring label 255, validation mIoU every epoch,
``checkpoint.pth.tar`` / ``model_best.pth.tar`` and ``--resume``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from config_utils.common import explicit_dests, resumed_arguments
from config_utils.retrain_args import retrain_parser
from dataloaders import (SeededSampler, SegmentationDataset, get_dataset_info, make_loader, resolve_num_classes,
                         source_palette)
from dataloaders.transforms import eval_transform, retrain_train_transform
from modeling.drop_path import scheduled_probability
from modeling.autodeeplab.genotype import Architecture
from modeling.autodeeplab.search_space import level_stride
from modeling.autodeeplab.model_retrain import AutoDeepLab
from modeling.trained import build_network
from utils.checkpoint import load_checkpoint, rng_state
from utils.cli import resolve_device, run_cli
from utils.distributed import (DistributedContext, broadcast_from_main, per_process_batch, process_device,
                               run_in_process_group, uses_sync_batchnorm)
from utils.errors import UserError
from utils.evaluation import evaluate, write_report
from utils.plots import plot_curves, save_figure
from utils.precision import PrecisionStep, amp_dtype
from utils.run_dir import LOGGER_NAME, read_jsonl
from utils.interrupt import StopRequest
from utils.losses import make_criterion
from utils.lr_schedule import build_scheduler
from utils.training import (BEST_CHECKPOINT_NAME, CHECKPOINT_NAME, batch_loss, check_split, epoch_batches,
                            fill_dataset_defaults, finish_epoch, log_step, mean_over_ranks, open_run, restore_run,
                            resumed_progress, stop_if_requested, validation_loader, validation_record)


# Flags that shape the run: a resumed run refuses different values for them.
LOCKED_ON_RESUME = ("dataset", "num_classes", "model", "backbone", "output_stride", "filter_multiplier",
                    "saved_arch_path", "seed", "epochs", "batch_size", "synthetic_train_samples", "synthetic_seed",
                    "use_sbd", "coco_all_classes")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict | None]:
    """The arguments, and the checkpoint being resumed (whose own arguments fill unset flags)."""
    parser = retrain_parser()
    args = parser.parse_args(argv)
    if not 0 < args.scale_range[0] <= args.scale_range[1]:
        raise UserError(f"--scale_range {args.scale_range[0]} {args.scale_range[1]}: expected 0 < MIN <= MAX")
    if not 0.0 <= args.drop_path_prob < 1.0:
        raise UserError(f"--drop_path_prob {args.drop_path_prob}: expected a probability in [0, 1)")
    if args.model != "autodeeplab" and (args.drop_path_prob > 0 or args.summary):
        flag = "--summary" if args.summary else "--drop_path_prob"
        raise UserError(f"{flag}: applies to --model autodeeplab (searched cells), not to {args.model}")
    if not 0.0 < args.ohem_thresh <= 1.0:
        raise UserError(f"--ohem_thresh {args.ohem_thresh}: expected a probability in (0, 1]")
    if args.resume and not args.summary:
        resumed = load_checkpoint(args.resume, stage="retrain")
        return resumed_arguments(args.resume, resumed["args"], args, explicit_dests(parser, argv),
                                 LOCKED_ON_RESUME), resumed
    if not args.summary:
        fill_dataset_defaults(args, get_dataset_info(args.dataset), "retrain")
    args.num_classes = resolve_num_classes(args)
    return args, None


# Table 2 of the paper: Multi-Adds (billions) at 1025x2049 with 19 classes, by F. The paper's counting
# convention adds about 4% to a plain count of convolution multiply-adds (README, "Model summary").
PAPER_MULTI_ADDS = {20: 333.25, 32: 460.93, 48: 695.03}


def component_costs(model: AutoDeepLab, input_size: tuple[int, int]) -> list[tuple[str, int, float]]:
    """(component, trainable parameters, convolution Multi-Adds in billions) rows, the last one the total.

    Parameters follow the paper's convention (kernels, BN γ/β, biases). Multi-Adds are counted on
    the meta device, so no memory or data is needed; ``model`` is moved there.
    """
    model = model.eval().to("meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, *input_size, device="meta"))
    flops = counter.get_flop_counts()

    def row(name: str, prefix: str, module: nn.Module) -> tuple[str, int, float]:
        return name, sum(p.numel() for p in module.parameters()), sum(flops.get(prefix, {}).values()) / 2e9

    rows = [row("stem", "AutoDeepLab.stem", model.stem)]
    rows += [row(f"cell {i} (stride {level_stride(level)})", f"AutoDeepLab.cells.{i}", cell)
             for i, (cell, level) in enumerate(zip(model.cells, model.arch.network_path))]
    return rows + [row("ASPP", "AutoDeepLab.aspp", model.aspp),
                   row("decoder (with logits)", "AutoDeepLab.decoder", model.decoder),
                   row("total", "AutoDeepLab", model)]


def summary(model: AutoDeepLab, input_size: tuple[int, int]) -> str:
    """The --summary table; its last line is the total parameter count as a plain integer."""
    rows = component_costs(model, input_size)
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{'component':<{width}}  {'params':>12}  {'Multi-Adds (G)':>14}"]
    lines += [f"{name:<{width}}  {params:>12,}  {macs:>14.2f}" for name, params, macs in rows]
    lines.append(f"input {input_size[0]}x{input_size[1]}, F={model.filter_multiplier}")
    paper = PAPER_MULTI_ADDS.get(model.filter_multiplier)
    if paper is not None and tuple(input_size) == (1025, 2049):
        lines.append(f"paper Table 2: {paper:.2f} G Multi-Adds (its counting convention; see README)")
    lines.append(str(rows[-1][1]))
    return "\n".join(lines)


def describe_network(args: argparse.Namespace, arch: Architecture | None) -> str:
    if arch is None:
        return f"DeepLabV3+ {args.backbone} at output stride {args.output_stride}"
    return f"path {list(arch.network_path)}, F={args.filter_multiplier}"


def main(argv: list[str] | None = None) -> Path | None:
    """Retrain (or print --summary); under torchrun every process calls this, and rank 0 returns the run directory."""
    args, resumed = parse_args(argv)
    if args.summary:
        model = AutoDeepLab(Architecture.load(args.saved_arch_path), args.num_classes, args.filter_multiplier)
        print(summary(model, tuple(args.input_size)))
        return None
    return run_in_process_group(args, lambda context: retrain(args, resumed, context, argv))


def retrain(args: argparse.Namespace, resumed: dict | None, context: DistributedContext,
            argv: list[str] | None) -> Path | None:
    device = process_device(context, args.device) or resolve_device(args.device)
    batch_size = per_process_batch(args.batch_size, context)
    if args.model != "autodeeplab":
        arch = None
    elif resumed is None:
        arch = Architecture.load(args.saved_arch_path)
    else:
        arch = Architecture.from_json_dict(resumed["architecture"], f"{args.resume} (architecture)")
    info = get_dataset_info(args.dataset)
    train_source, val_source = info.make_source("train", args), info.make_source("val", args)
    palette = source_palette(info, val_source, args.num_classes)
    classes = {"names": list(val_source.class_names), "palette": palette.tolist()}
    if context.is_main:  # reading every mask once is enough; the other ranks wait at the first collective
        check_split(train_source, "train", args)
        check_split(val_source, "val", args)
    train_set = SegmentationDataset(train_source, retrain_train_transform(args.crop_size, tuple(args.scale_range)),
                                    args.num_classes)
    val_set = SegmentationDataset(val_source, eval_transform(None), args.num_classes)
    if len(train_set) < args.batch_size:
        raise UserError(f"--batch_size {args.batch_size}: the training split holds only {len(train_set)} images")
    sampler = SeededSampler(range(len(train_set)), args.seed, shuffle=True, num_replicas=context.world_size,
                            rank=context.rank, drop_last=True)
    train_loader = make_loader(train_set, sampler, batch_size, args.workers, drop_last=True)
    val_loader = validation_loader(val_set, args.workers, context)
    torch.manual_seed(args.seed)  # built before the run directory: a bad --backbone_weights file leaves none
    model = build_network(vars(args), arch, args.backbone_weights if resumed is None else None).to(device)
    run_dir, logger = open_run(args, argv) if context.is_main else (None, logging.getLogger(LOGGER_NAME))
    if context.is_main and arch is not None:
        arch.save(run_dir / "architecture.json")
    optimizer = torch.optim.SGD(model.parameters(), lr=args.base_lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    steps_per_epoch = len(train_loader)
    total_steps = args.epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, total_steps, args.lr_scheduler, args.poly_power,
                                args.lr_step * steps_per_epoch, args.lr_gamma, args.warmup_iters, args.warmup_start)
    criterion = make_criterion(args.loss, args.ohem_thresh, args.ohem_min_kept)
    dtype = amp_dtype(args.amp_dtype, device)
    precision = PrecisionStep(args.amp, device, dtype)
    start_epoch, best_miou = restore_run(resumed, run_dir, model,
                                         {"optimizer": optimizer, "scheduler": scheduler, "scaler": precision})
    trainer = model
    sync_bn = uses_sync_batchnorm(context, device, args.sync_bn)
    if context.enabled:
        if sync_bn:
            trainer = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        trainer = DistributedDataParallel(trainer, device_ids=[device.index] if device.type == "cuda" else None)
    logger.info(f"retrain: {args.dataset} ({args.num_classes} classes), train {len(train_set)} / val "
                f"{len(val_set)} images, {describe_network(args, arch)}, "
                f"{sum(p.numel() for p in model.parameters()):,} parameters, device {device}, {context.world_size} "
                f"process(es) of {batch_size} images{', SyncBatchNorm' if sync_bn else ''}, amp "
                f"{dtype if args.amp else 'off'}; run directory {run_dir}")

    first = resumed_progress(resumed, start_epoch)
    writer = (SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_epoch * steps_per_epoch + first["steps"])
              if context.is_main else None)
    checkpoint_path = run_dir / CHECKPOINT_NAME if context.is_main else None

    def training_state() -> dict:
        return {"stage": "retrain", "args": vars(args), "architecture": arch.to_json_dict() if arch else None,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": precision.state_dict(), "rng": rng_state(), "classes": classes, "best_miou": best_miou}

    with StopRequest() as stop:
        for epoch in range(start_epoch, args.epochs):
            trainer.train()
            progress_so_far = resumed_progress(resumed, epoch)
            started, losses = time.time() - progress_so_far["seconds"], list(progress_so_far["losses"])
            progress = tqdm(epoch_batches(train_loader, epoch, progress_so_far["steps"]), total=steps_per_epoch,
                            initial=progress_so_far["steps"], desc=f"retrain epoch {epoch}", leave=False,
                            disable=None if context.is_main else True)
            for step, (images, masks) in enumerate(progress, start=progress_so_far["steps"]):
                if args.drop_path_prob > 0:
                    model.set_drop_path_prob(scheduled_probability(args.drop_path_prob,
                                                                   epoch * steps_per_epoch + step, total_steps))
                loss = batch_loss(trainer, images, masks, device, "training", epoch, step, checkpoint_path,
                                  precision.autocast(), criterion)
                precision.backward(loss)
                if precision.step(optimizer):
                    scheduler.step()
                losses.append(loss.item())
                log_step(writer, progress, losses[-1], scheduler.get_last_lr()[0], epoch * steps_per_epoch + step)
                stop_if_requested(stop, context, checkpoint_path, training_state, epoch, step + 1,
                                  {"losses": losses, "seconds": time.time() - started})

            record = {"epoch": epoch, "train_loss": mean_over_ranks(losses, context),
                      "lr": scheduler.get_last_lr()[0], "epoch_seconds": round(time.time() - started, 1)}
            record |= validation_record(model, val_loader, args, epoch, device, writer, palette, context)
            if context.is_main:
                best_miou = finish_epoch(run_dir, writer, record, training_state(), best_miou)
    if context.is_main:
        writer.close()
        save_figure(plot_curves(read_jsonl(run_dir / "metrics.jsonl"), ["train_loss", "val_loss", "val_miou"],
                                title="retrain"), run_dir / "retrain_curves.png")
        best = load_checkpoint(run_dir / BEST_CHECKPOINT_NAME, stage="retrain")
        model.load_state_dict(best["model"])
    broadcast_from_main(model, context, parameters=True)
    final = evaluate(model, val_loader, args.num_classes, device, desc="report", context=context)
    if not context.is_main:
        return None
    report_dir = run_dir / "report_val"
    table = write_report(final, classes["names"], report_dir,
                         {"checkpoint": str(run_dir / BEST_CHECKPOINT_NAME), "epoch": best["epoch"]})
    logger.info(f"best checkpoint (epoch {best['epoch']}) on val, report in {report_dir}:\n{table}")
    logger.info(f"retrain finished: best val mIoU {best_miou:.4f}; checkpoints in {run_dir}")
    return run_dir


if __name__ == "__main__":
    run_cli(main, "train_new_model.py")
