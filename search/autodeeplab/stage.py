"""Auto-DeepLab's search stage: the supernet trained bi-level on two seeded halves of the training set
(``search.autodeeplab.bilevel``), the architecture its α and β decode to logged every epoch, and the decoding of a
search checkpoint into ``architecture.json``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dataloaders import (SeededSampler, SegmentationDataset, get_dataset_info, keep_data_split, make_loader,
                         split_indices, training_sources, validation_loader)
from dataloaders.transforms import denormalize, eval_transform, search_train_transform
from engine.checkpoint import Checkpointer, load_model_state
from engine.cli import resolve_device
from engine.distributed import DistributedContext, wrap_ddp
from engine.hooks import StageRun, TensorBoardLog, ValidationPlan, fit_stage, resume_point
from engine.run_dir import RunDir, append_jsonl
from engine.stage import open_stage_run, process_setup
from engine.trainer import Hook, SupervisedStep, Trainer
from evaluation.semantic import SemanticValidation, evaluate
from modeling.autodeeplab.decoding import decode_architecture
from modeling.autodeeplab.genotype import Architecture
from modeling.autodeeplab.model_search import AutoDeepLabSearch
from modeling.autodeeplab.plots import plot_alphas, plot_architecture, plot_betas
from modeling.autodeeplab.random_architecture import random_architecture
from modeling.autodeeplab.search_space import NUM_LEVELS, level_stride, normalize_betas
from modeling.heads import ASPP_MIN_BATCH, ASPP_MIN_BATCH_REASON
from search.autodeeplab.bilevel import Architect, BilevelStep, search_optimizers
from search.registry import SearchSystem, register_system
from utils.errors import UserError
from utils.plots import save_figure
from utils.seeds import derived_seed

SYSTEM = Architecture.system


class ArchitectureLog(Hook):
    """Rank 0, every epoch: the architecture α and β decode to now, as a line of the search log and the path
    strides in the epoch's log line, and α and β as pictures (TensorBoard keeps every epoch, the run directory
    the latest)."""

    def __init__(self, model: AutoDeepLabSearch, run_dir: RunDir, tensorboard: TensorBoardLog) -> None:
        self.model, self.run_dir, self.tensorboard = model, run_dir, tensorboard

    def after_epoch(self, trainer: Trainer) -> None:
        model, epoch = self.model, trainer.epoch
        arch = decode_architecture(model.alphas, model.betas, model.filter_multiplier, model.block_multiplier)
        strides = [level_stride(k) for k in arch.network_path]
        append_jsonl(self.run_dir.search_log,
                     {"epoch": epoch, "network_path": list(arch.network_path), "network_strides": strides,
                      "cell": [[list(pair) for pair in block] for block in arch.cell]})
        with torch.no_grad():
            alpha_probs = torch.softmax(model.alphas.float(), dim=-1).cpu().numpy()
            beta_probs = normalize_betas(model.betas).cpu().numpy()
        for name, figure in (("alphas", plot_alphas(alpha_probs, model.steps)),
                             ("betas", plot_betas(beta_probs, arch.network_path))):
            self.tensorboard.writer.add_figure(f"architecture/{name}", figure, epoch, close=False)
            save_figure(figure, self.run_dir.picture(name))
        trainer.notes.append(f"; path strides {strides}")


def search(args: argparse.Namespace, resumed: dict[str, Any] | None, context: DistributedContext,
           argv: list[str] | None, hooks: Sequence[Hook] = ()) -> RunDir | None:
    """Run (or resume) the search; rank 0 returns the run directory. ``hooks`` run before the built-in ones."""
    process = process_setup(args, context, sync_bn=args.sync_bn, min_batch=ASPP_MIN_BATCH, why=ASPP_MIN_BATCH_REASON)
    device, batch_size, sync_bn = process.device, process.batch_size, process.sync_bn
    sources = training_sources(args, context, args.crop_size, args.resize)
    train_set = SegmentationDataset(sources.train, search_train_transform(args.resize, args.crop_size),
                                    args.num_classes)
    val_set = SegmentationDataset(sources.val, eval_transform(args.resize), args.num_classes)
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
    run_dir, logger = open_stage_run(args, argv, SYSTEM, "search", context)
    keep_data_split(sources, resumed, run_dir, args.resume)
    torch.manual_seed(args.seed)
    model = AutoDeepLabSearch(args.num_classes, args.num_layers, filter_multiplier=args.filter_multiplier,
                              block_multiplier=args.block_multiplier, steps=args.steps,
                              checkpoint_cells=args.checkpoint_cells,
                              partial_channels=args.partial_channels).to(device)
    weight_params, arch_params = model.weight_parameters(), model.arch_parameters()
    weight_optimizer, arch_optimizer, scheduler = search_optimizers(weight_params, arch_params, args,
                                                                    args.epochs * len(loader_a))
    weight_precision, arch_precision = process.precision(), process.precision()
    checkpointer = Checkpointer(
        {"system": SYSTEM, "stage": "search", "args": vars(args), "classes": sources.classes,
         "data_split": sources.data_split,
         "split": {"a": list(split_a), "b": list(split_b)}},
        model, weight_optimizer=weight_optimizer, arch_optimizer=arch_optimizer, scheduler=scheduler,
        weight_scaler=weight_precision, arch_scaler=arch_precision)
    resume = resume_point(resumed, checkpointer, run_dir, "--resume",
                          (run_dir.metrics, run_dir.search_log) if run_dir else ())
    if sync_bn:
        model.synchronize_batchnorm()
    # The weight step runs through DDP (gradients averaged while backward runs); α and β are left out of
    # DDP and averaged by hand in the architecture step, which reads the plain model.
    ddp_model = wrap_ddp(model, context, device, ignore=("alphas", "betas"))
    logger.info(f"search: {args.dataset} ({args.num_classes} classes), trainA {len(split_a)} / trainB "
                f"{len(split_b)} / val {len(val_set)} images, F={args.filter_multiplier}, L={args.num_layers}, "
                f"{sum(p.numel() for p in weight_params):,} weights, device {device}, {context.world_size} "
                f"process(es) of {batch_size} images{', SyncBatchNorm' if sync_bn else ''}, amp "
                f"{process.amp_text}{', compiled step' if args.compile else ''}; run directory {run_dir}")
    if args.alpha_epoch >= args.epochs:
        logger.warning(f"warning: --alpha_epoch {args.alpha_epoch} >= --epochs {args.epochs}: no architecture step "
                       "will run, and the decoded architecture will reflect the random initial α and β")

    step = BilevelStep(SupervisedStep(ddp_model, weight_optimizer, scheduler, weight_precision, device,
                                      params=weight_params, grad_clip=args.grad_clip, what="weight",
                                      compile=args.compile),
                       Architect(model, arch_params, arch_optimizer, arch_precision, loader_b, device, context,
                                 args.alpha_epoch))
    validate = SemanticValidation(model, val_loader, args.num_classes, device, context, sources.palette,
                                      denormalize)
    checkpoint = fit_stage(step, loader_a, StageRun(run_dir, checkpointer, context, resume,
                                                    (["train_loss", "arch_loss", "val_loss", "val_miou"], "search")),
                           ValidationPlan(validate, args.eval_interval, "val_miou"), epochs=args.epochs,
                           desc="search", extra=hooks,
                           system_hooks=lambda tensorboard: [ArchitectureLog(model, run_dir, tensorboard)])
    if run_dir is None:
        return None
    logger.info(f"search finished: best val mIoU {checkpoint.best_text()}; checkpoint {run_dir.checkpoint}; "
                f"decode it with: python decode_autodeeplab.py --resume {run_dir.checkpoint}")
    return run_dir


def decode(checkpoint: dict[str, Any], path: Path) -> Architecture:
    """The architecture a search checkpoint's α and β decode to, with where it came from."""
    weights, args = checkpoint["model"], checkpoint["args"]
    if "alphas" not in weights or "betas" not in weights:
        raise UserError(f"{path}: has no 'alphas'/'betas' in its model state")
    best = checkpoint["best"]["value"] if "best" in checkpoint else checkpoint.get("best_miou")
    source = {"checkpoint": str(path.resolve()), "epoch": checkpoint["epoch"], "dataset": args["dataset"],
              "num_classes": args["num_classes"], "best_val_miou": best,
              "search_filter_multiplier": args["filter_multiplier"]}
    return decode_architecture(weights["alphas"], weights["betas"], args["filter_multiplier"],
                               args["block_multiplier"], source)


class FixedArchitecture(nn.Module):
    """The supernet with α and β fixed one-hot to one architecture: the one-shot estimate of that architecture."""

    def __init__(self, supernet: AutoDeepLabSearch, architecture: Architecture) -> None:
        super().__init__()
        self.supernet, self.architecture = supernet, architecture

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet(x, architecture=self.architecture)


def supernet_estimates(checkpoint: dict[str, Any], path: Path, architectures: Sequence[Architecture]) -> list[float]:
    """What the supernet of a search checkpoint believes of each architecture: its validation mIoU (on the search's
    val split, whole images) with α and β fixed one-hot to that architecture."""
    args = argparse.Namespace(**checkpoint["args"])
    device = resolve_device(args.device)
    supernet = AutoDeepLabSearch(args.num_classes, args.num_layers, filter_multiplier=args.filter_multiplier,
                                 block_multiplier=args.block_multiplier, steps=args.steps,
                                 partial_channels=args.partial_channels)
    load_model_state(supernet, checkpoint["model"], str(path))
    supernet.to(device)
    val_set = SegmentationDataset(get_dataset_info(args.dataset).make_source("val", args), eval_transform(args.resize),
                                  args.num_classes)
    loader = validation_loader(val_set, args.workers, DistributedContext())
    return [evaluate(FixedArchitecture(supernet, architecture), loader, args.num_classes, device,
                     desc=f"architecture {index}", loss=False)["miou"]
            for index, architecture in enumerate(architectures)]


def random_decode(checkpoint: dict[str, Any], path: Path, candidates: int | None, seed: int) -> Architecture:
    """Random search on a search checkpoint's space: ``candidates`` (default 1) architectures drawn uniformly (cell
    and network path), architecture k from (seed, k) alone; with more than one, each is scored by the supernet
    with α and β fixed one-hot to it (``supernet_estimates``) and the best kept (the earliest on a tie: random
    search with weight sharing, Li and Talwalkar, UAI 2019)."""
    args = checkpoint["args"]
    count = candidates or 1
    drawn = [random_architecture(derived_seed(seed, k), args["num_layers"], NUM_LEVELS, args["steps"],
                                 args["filter_multiplier"], args["block_multiplier"]) for k in range(count)]
    source = {"checkpoint": str(path.resolve()), "dataset": args["dataset"], "num_classes": args["num_classes"],
              "strategy": "random", "seed": seed, "candidates": count,
              "search_filter_multiplier": args["filter_multiplier"]}
    if count == 1:
        return replace(drawn[0], source=source)
    estimates = supernet_estimates(checkpoint, path, drawn)
    best = max(range(count), key=lambda k: estimates[k])
    return replace(drawn[best], source=source | {"candidate": best, "supernet_miou": estimates[best],
                                                 "supernet_mious": estimates})


register_system(SearchSystem(name=SYSTEM, genotype=Architecture, search=search, decode=decode,
                             draw=plot_architecture, random_decode=random_decode))
