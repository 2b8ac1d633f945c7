"""Stage 1: Auto-DeepLab architecture search.

First-order bi-level optimisation on two disjoint, seeded halves of the training set: the
supernet's weights take an SGD step on a trainA batch, then (from --alpha_epoch on) α and β take
an Adam step on a trainB batch. Every epoch validates, logs the decoded architecture and writes
``checkpoint.pth.tar`` (and ``model_best.pth.tar`` on a new best mIoU).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from config_utils.common import explicit_dests, resumed_arguments
from config_utils.search_args import search_parser
from dataloaders import (SeededSampler, SegmentationDataset, get_dataset_info, make_loader, resolve_num_classes,
                         source_palette, split_indices)
from dataloaders.transforms import eval_transform, search_train_transform
from modeling.autodeeplab.decoding import decode_architecture
from modeling.autodeeplab.search_space import level_stride
from modeling.autodeeplab.model_search import AutoDeepLabSearch
from modeling.autodeeplab.search_space import normalize_betas
from utils.checkpoint import load_checkpoint, rng_state
from utils.cli import resolve_device, run_cli
from utils.distributed import (DistributedContext, all_reduce_mean, check_identical, per_process_batch,
                               process_device, run_in_process_group, uses_sync_batchnorm)
from utils.errors import UserError
from modeling.autodeeplab.plots import plot_alphas, plot_betas
from utils.plots import plot_curves, save_figure
from utils.precision import PrecisionStep, amp_dtype
from utils.run_dir import LOGGER_NAME, append_jsonl, read_jsonl
from utils.interrupt import StopRequest
from utils.training import (CHECKPOINT_NAME, batch_loss, check_split, cycle_batches, epoch_batches,
                            fill_dataset_defaults, finish_epoch, log_step, mean_over_ranks, open_run, restore_run,
                            resumed_progress, stop_if_requested, validation_loader, validation_record)

# Flags that shape the run: a resumed run refuses different values for them.
LOCKED_ON_RESUME = ("dataset", "num_classes", "filter_multiplier", "block_multiplier", "steps", "num_layers",
                    "partial_channels", "seed", "epochs", "batch_size", "synthetic_train_samples", "synthetic_seed",
                    "use_sbd", "coco_all_classes")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict | None]:
    """The arguments, and the checkpoint being resumed (whose own arguments fill unset flags)."""
    parser = search_parser()
    args = parser.parse_args(argv)
    if args.filter_multiplier % args.partial_channels:
        raise UserError(f"--partial_channels {args.partial_channels}: must divide --filter_multiplier "
                        f"{args.filter_multiplier} (the channels of every level)")
    if args.resume:
        resumed = load_checkpoint(args.resume, stage="search")
        return resumed_arguments(args.resume, resumed["args"], args, explicit_dests(parser, argv),
                                 LOCKED_ON_RESUME), resumed
    fill_dataset_defaults(args, get_dataset_info(args.dataset), "search")
    args.num_classes = resolve_num_classes(args)
    return args, None


def main(argv: list[str] | None = None) -> Path | None:
    """Run the search; under torchrun every process calls this, and rank 0 returns the run directory."""
    args, resumed = parse_args(argv)
    return run_in_process_group(args, lambda context: search(args, resumed, context, argv))


def search(args: argparse.Namespace, resumed: dict | None, context: DistributedContext,
           argv: list[str] | None) -> Path | None:
    device = process_device(context, args.device) or resolve_device(args.device)
    batch_size = per_process_batch(args.batch_size, context)
    info = get_dataset_info(args.dataset)
    train_source, val_source = info.make_source("train", args), info.make_source("val", args)
    palette = source_palette(info, val_source, args.num_classes)
    classes = {"names": list(val_source.class_names), "palette": palette.tolist()}
    if context.is_main:  # reading every mask once is enough; the other ranks wait at the first collective
        check_split(train_source, "train", args, args.crop_size, args.resize)
        check_split(val_source, "val", args)
    train_set = SegmentationDataset(train_source, search_train_transform(args.resize, args.crop_size), args.num_classes)
    val_set = SegmentationDataset(val_source, eval_transform(args.resize), args.num_classes)
    split_a, split_b = ((resumed["split"]["a"], resumed["split"]["b"]) if resumed is not None
                        else split_indices(len(train_set), args.seed))
    if min(len(split_a), len(split_b)) < args.batch_size:
        raise UserError(f"--batch_size {args.batch_size}: trainA and trainB each hold half of the "
                        f"{len(train_set)} training images, fewer than one batch")
    # Every rank draws the same order of each half and takes its share of every global batch.
    loader_a, loader_b = (
        make_loader(train_set, SeededSampler(split, seed, shuffle=True, num_replicas=context.world_size,
                                             rank=context.rank, drop_last=True), batch_size, args.workers,
                    drop_last=True)
        for split, seed in ((split_a, args.seed), (split_b, args.seed + 1)))
    val_loader = validation_loader(val_set, args.workers, context)
    run_dir, logger = open_run(args, argv) if context.is_main else (None, logging.getLogger(LOGGER_NAME))
    torch.manual_seed(args.seed)
    model = AutoDeepLabSearch(args.num_classes, args.num_layers, filter_multiplier=args.filter_multiplier,
                              block_multiplier=args.block_multiplier, steps=args.steps,
                              checkpoint_cells=args.checkpoint_cells,
                              partial_channels=args.partial_channels).to(device)
    weight_params, arch_params = model.weight_parameters(), model.arch_parameters()
    weight_optimizer = torch.optim.SGD(weight_params, lr=args.lr, momentum=args.momentum,
                                       weight_decay=args.weight_decay)
    arch_optimizer = torch.optim.Adam(arch_params, lr=args.arch_lr, betas=(0.9, 0.999),
                                      weight_decay=args.arch_weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(weight_optimizer, T_max=args.epochs * len(loader_a),
                                                           eta_min=args.min_lr)
    dtype = amp_dtype(args.amp_dtype, device)
    weight_precision, arch_precision = PrecisionStep(args.amp, device, dtype), PrecisionStep(args.amp, device, dtype)
    start_epoch, best_miou = restore_run(
        resumed, run_dir, model,
        {"weight_optimizer": weight_optimizer, "arch_optimizer": arch_optimizer, "scheduler": scheduler,
         "weight_scaler": weight_precision, "arch_scaler": arch_precision},
        logs=("metrics.jsonl", "architecture_history.jsonl"))
    # The weight step runs through DDP (gradients averaged while backward runs); α and β are left out of
    # DDP and averaged by hand in the architecture step, which reads the plain model.
    trainer = model
    sync_bn = uses_sync_batchnorm(context, device, args.sync_bn)
    if sync_bn:
        model.synchronize_batchnorm()
    if context.enabled:
        # DDP matches root parameters both as "alphas" and as ".alphas" (module name "" + "." + name).
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, [prefix + name for name in ("alphas", "betas") for prefix in ("", ".")])
        trainer = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    logger.info(f"search: {args.dataset} ({args.num_classes} classes), trainA {len(split_a)} / trainB "
                f"{len(split_b)} / val {len(val_set)} images, F={args.filter_multiplier}, L={args.num_layers}, "
                f"{sum(p.numel() for p in weight_params):,} weights, device {device}, {context.world_size} "
                f"process(es) of {batch_size} images{', SyncBatchNorm' if sync_bn else ''}, amp "
                f"{dtype if args.amp else 'off'}; run directory {run_dir}")

    if args.alpha_epoch >= args.epochs:
        logger.warning(f"warning: --alpha_epoch {args.alpha_epoch} >= --epochs {args.epochs}: no architecture step "
                       "will run, and the decoded architecture will reflect the random initial α and β")
    steps_per_epoch = len(loader_a)
    first = resumed_progress(resumed, start_epoch)
    writer = (SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_epoch * steps_per_epoch + first["steps"])
              if context.is_main else None)
    checkpoint_path = run_dir / CHECKPOINT_NAME if context.is_main else None

    def training_state() -> dict:
        return {"stage": "search", "args": vars(args), "model": model.state_dict(),
                "weight_optimizer": weight_optimizer.state_dict(), "arch_optimizer": arch_optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "weight_scaler": weight_precision.state_dict(),
                "arch_scaler": arch_precision.state_dict(), "rng": rng_state(), "classes": classes,
                "split": {"a": list(split_a), "b": list(split_b)}, "best_miou": best_miou}

    with StopRequest() as stop:
        for epoch in range(start_epoch, args.epochs):
            model.train()
            arch_step = epoch >= args.alpha_epoch
            so_far = resumed_progress(resumed, epoch)
            started = time.time() - so_far["seconds"]
            losses, arch_losses = list(so_far["losses"]), list(so_far["arch_losses"])
            batches_b = cycle_batches(loader_b, epoch, len(arch_losses))
            progress = tqdm(epoch_batches(loader_a, epoch, so_far["steps"]), total=steps_per_epoch,
                            initial=so_far["steps"], desc=f"search epoch {epoch}", leave=False,
                            disable=None if context.is_main else True)
            for step, (images, masks) in enumerate(progress, start=so_far["steps"]):
                loss = batch_loss(trainer, images, masks, device, "weight", epoch, step, checkpoint_path,
                                  weight_precision.autocast())
                weight_precision.backward(loss, inputs=weight_params)
                if weight_precision.step(weight_optimizer, weight_params, args.grad_clip):
                    scheduler.step()
                losses.append(loss.item())
                if arch_step:
                    images_b, masks_b = next(batches_b)
                    arch_loss = batch_loss(model, images_b, masks_b, device, "architecture", epoch, step,
                                           checkpoint_path, arch_precision.autocast())
                    arch_precision.backward(arch_loss, inputs=arch_params)  # no weight gradients are computed
                    arch_precision.step(arch_optimizer, before_step=lambda: all_reduce_mean(
                        [p.grad for p in arch_params], context))
                    arch_losses.append(arch_loss.item())
                    check_identical(arch_params, "α and β", context)  # ~300 numbers: negligible next to the step
                log_step(writer, progress, losses[-1], scheduler.get_last_lr()[0], epoch * steps_per_epoch + step)
                stop_if_requested(stop, context, checkpoint_path, training_state, epoch, step + 1,
                                  {"losses": losses, "arch_losses": arch_losses, "seconds": time.time() - started})

            record = {"epoch": epoch, "train_loss": mean_over_ranks(losses, context),
                      "lr": scheduler.get_last_lr()[0], "epoch_seconds": round(time.time() - started, 1)}
            if arch_losses:
                record["arch_loss"] = mean_over_ranks(arch_losses, context)
            record |= validation_record(model, val_loader, args, epoch, device, writer, palette, context)
            if not context.is_main:
                continue
            arch = decode_architecture(model.alphas, model.betas, args.filter_multiplier, args.block_multiplier)
            strides = [level_stride(k) for k in arch.network_path]
            append_jsonl(run_dir / "architecture_history.jsonl",
                         {"epoch": epoch, "network_path": list(arch.network_path), "network_strides": strides,
                          "cell": [[list(pair) for pair in block] for block in arch.cell]})
            log_architecture_pictures(model, arch.network_path, writer, run_dir, epoch)
            best_miou = finish_epoch(run_dir, writer, record, training_state(), best_miou,
                                     f"; path strides {strides}")
    if not context.is_main:
        return None
    writer.close()
    save_figure(plot_curves(read_jsonl(run_dir / "metrics.jsonl"), ["train_loss", "arch_loss", "val_loss", "val_miou"],
                            title="search"), run_dir / "search_curves.png")
    logger.info(f"search finished: best val mIoU {best_miou:.4f}; checkpoint {checkpoint_path}; "
                f"decode it with: python decode_autodeeplab.py --resume {checkpoint_path}")
    return run_dir


def log_architecture_pictures(model: AutoDeepLabSearch, path: tuple[int, ...], writer: SummaryWriter,
                              run_dir: Path, epoch: int) -> None:
    """α and β as pictures: TensorBoard gets every epoch, the run directory keeps the latest."""
    with torch.no_grad():
        alpha_probs = torch.softmax(model.alphas.float(), dim=-1).cpu().numpy()
        beta_probs = normalize_betas(model.betas).cpu().numpy()
    for name, figure in (("alphas", plot_alphas(alpha_probs, model.steps)), ("betas", plot_betas(beta_probs, path))):
        writer.add_figure(f"architecture/{name}", figure, epoch, close=False)
        save_figure(figure, run_dir / f"{name}.png")


if __name__ == "__main__":
    run_cli(main, "train_autodeeplab.py")
