"""Auto-Panoptic (NeurIPS 2020) as a search system: the one-shot supernet trained with fair path sampling, then
the path-priority greedy search on it, both in the search stage, and the decoding of its scoreboard (Wu et al.,
NeurIPS 2020, Sec. 3; the original's engine/trainer.py and engine/architecture_search.py).

Supernet training: iteration ``it`` (from 1) runs the ``FairPathSampler``'s path on every process; gradients
are summed over each window of 12 iterations and the optimiser steps at its end, with the original's
per-group learning rates (the sum over 12 paths becomes a per-use average) and warm-up cosine schedule, the
scheduler stepping every iteration. Every process runs the same path, so gradients are averaged over the
processes once per window (equal to DistributedDataParallel's average at every backward, since the sum is
linear). The held-out split the search scores candidates on is drawn once (seeded) and saved; the supernet
never trains on it. A checkpoint in the middle of a window holds the gradients summed so far, so a resumed
run continues exactly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dataloaders import SeededSampler, get_dataset_info, make_loader, training_sources
from dataloaders.panoptic import PanopticDataset, PanopticTransform, collate, trainable_indices
from engine.checkpoint import Checkpointer, load_model_state
from engine.cli import resolve_device
from engine.distributed import DistributedContext, all_reduce_mean, broadcast_object, gather_objects
from engine.hooks import StageRun, fit_stage, resume_point
from engine.interrupt import RunInterrupted, StopRequest
from engine.precision import PrecisionStep
from engine.run_dir import RunDir
from engine.stage import open_stage_run, process_setup
from engine.trainer import Hook, NonFiniteLoss, cycle_batches
from evaluation.panoptic import evaluate_panoptic
from modeling.autopanoptic.genotype import PanopticGenotype, layer_choices
from modeling.autopanoptic.network import AutoPanoptic, PanopticSizes, load_backbone_weights
from modeling.autopanoptic.plots import plot_architecture
from search.autopanoptic.one_shot import (FairPathSampler, GreedyPathSearch, RandomPathSearch, ScoredPathSearch,
                                          ends_accumulation, lr_param_groups, starts_accumulation,
                                          warmup_cosine_scheduler, window_length)
from search.registry import SearchSystem, register_system
from utils.atomic import atomic_path
from utils.errors import UserError

SYSTEM = PanopticGenotype.system
GREEDY_STATE, GREEDY_FORMAT = "greedy_search.json", "autopanoptic-greedy-search"
SCORES = ("pq", "sq", "rq", "pq_things", "pq_stuff", "semantic_miou")
LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask",
              "loss_segmentation")


def class_counts(categories: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """(thing, stuff) category counts."""
    things = sum(1 for category in categories if category["isthing"])
    return things, len(categories) - things


def parameter_group(name: str) -> str:
    """The learning-rate group of one of our supernet's parameters, as the original's name rules place its own
    (``search.autopanoptic.one_shot.original_group_of``): choice blocks, stem, mask-head and subnet choice layers (their
    GroupNorm included), the attention layers, and everything shared."""
    if name.startswith("backbone.stem."):
        return "stem"
    for prefix, group in (("backbone.blocks.", "backbone_choice"), ("roi_heads.mask_head.", "mask_choice"),
                          ("subnet.", "subnet_choice"), ("things_to_stuff.", "inter"), ("stuff_to_things.", "inter")):
        if name.startswith(prefix):
            return group
    return "other"


def held_out_split(count: int, held_out: int, seed: int) -> tuple[list[int], list[int]]:
    """Seeded disjoint (train, held-out) positions among ``count`` images; the held-out ones score candidates."""
    if held_out >= count:
        raise UserError(f"--held-out {held_out}: the training split has only {count} usable images; the supernet "
                        "needs some to train on")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[held_out:]), sorted(order[:held_out])


def to_device(images: Sequence[torch.Tensor], targets: Sequence[dict[str, Any]],
              device: torch.device) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    keys = ("boxes", "labels", "masks", "semantic")
    return ([image.to(device, non_blocking=True) for image in images],
            [{key: target[key].to(device, non_blocking=True) for key in keys} for target in targets])


class PanopticStep:
    """One iteration of panoptic training (the original's ``do_train``). With a path sampler (the supernet):
    zero the gradients at a window's start, forward and backward on the iteration's path, step the optimiser at
    the window's end; without one (a searched network), a window is one iteration. Gradients are averaged over
    the processes before each optimiser step; the schedule steps every iteration. ``state_dict`` holds the
    gradients summed so far in the window and the iterations done."""

    def __init__(self, model: AutoPanoptic, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, sampler: FairPathSampler | None,
                 precision: PrecisionStep, device: torch.device, context: DistributedContext) -> None:
        self.model, self.optimizer, self.scheduler, self.sampler = model, optimizer, scheduler, sampler
        self.precision, self.device, self.context = precision, device, context
        self.window = sampler.length if sampler is not None else 1
        self.iterations = 0  # done so far

    def train(self) -> None:
        self.model.train()

    def start_epoch(self, epoch: int, steps_done: int) -> None:
        pass

    def __call__(self, batch: tuple[list[torch.Tensor], list[dict[str, Any]]], global_step: int) -> dict[str, float]:
        iteration = global_step + 1
        if starts_accumulation(iteration, self.window):
            self.optimizer.zero_grad(set_to_none=True)
        images, targets = to_device(*batch, self.device)
        with self.precision.autocast():
            losses = self.model(images, targets, self.sampler.path(iteration) if self.sampler else None)
        total = sum(loss.float() for loss in losses.values())
        if not torch.isfinite(total):
            raise NonFiniteLoss("training", total.item())
        self.precision.backward(total)
        if ends_accumulation(iteration, self.window):
            all_reduce_mean([p.grad for p in self.model.parameters() if p.grad is not None], self.context)
            self.precision.step(self.optimizer)
        with warnings.catch_warnings():  # the schedule steps every iteration, the optimiser every window
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            self.scheduler.step()
        self.iterations = iteration
        return {"train_loss": total.item(), **{name: losses[name].item() for name in LOSS_NAMES}}

    def learning_rate(self) -> float:
        """The schedule's learning rate before the per-group division."""
        return self.optimizer.defaults["lr"] * self.scheduler.get_last_lr()[0] / self.scheduler.base_lrs[0]

    def state_dict(self) -> dict[str, Any]:
        return {"iterations": self.iterations,
                "gradients": {name: p.grad.detach().clone() for name, p in self.model.named_parameters()
                              if p.grad is not None}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iterations = state["iterations"]
        parameters = dict(self.model.named_parameters())
        for parameter in parameters.values():
            parameter.grad = None
        for name, gradient in state["gradients"].items():
            parameters[name].grad = gradient.to(parameters[name].device)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """torch's deterministic algorithms while a run trains (``--deterministic``), as they were afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled or previous)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def search(args: argparse.Namespace, resumed: dict[str, Any] | None, context: DistributedContext,
           argv: list[str] | None, hooks: Sequence[Hook] = ()) -> RunDir | None:
    """Train (or resume training) the supernet, then (``--greedy-search``, the default) run (or finish) the greedy
    search on it, its candidates spread over the processes; rank 0 returns the run directory."""
    process = process_setup(args, context, sync_bn=True)  # the original's SyncBN, where several GPUs run
    device, batch_size = process.device, process.batch_size
    sources = training_sources(args, context, task="panoptic")
    categories = sources.train.categories
    if resumed is not None:
        train_positions, held_out = resumed["split"]["train"], resumed["split"]["held_out"]
    else:
        usable = trainable_indices(sources.train)
        train_positions, held_out = held_out_split(len(usable), args.held_out, args.seed)
        train_positions, held_out = [usable[i] for i in train_positions], [usable[i] for i in held_out]
    if len(train_positions) < args.batch_size:
        raise UserError(f"--batch-size {args.batch_size}: only {len(train_positions)} training images are left "
                        f"once --held-out {args.held_out} are set aside")
    train_set = PanopticDataset(sources.train, PanopticTransform(args.min_size, args.max_size, train=True))
    loader = make_loader(train_set, SeededSampler(train_positions, args.seed, shuffle=True,
                                                  num_replicas=context.world_size, rank=context.rank,
                                                  drop_last=True), batch_size, args.workers, drop_last=True,
                         collate_fn=collate)
    run_dir, logger = open_stage_run(args, argv, SYSTEM, "search", context)
    torch.manual_seed(args.seed)
    things, stuff = class_counts(categories)
    model = AutoPanoptic(things, stuff, None, PanopticSizes.from_args(vars(args)))
    if args.backbone_weights and resumed is None:
        load_backbone_weights(model, args.backbone_weights)
    model.to(device)
    if process.sync_bn:  # the backbone's statistics over every GPU's images
        model.backbone = nn.SyncBatchNorm.convert_sync_batchnorm(model.backbone)
    sampler = FairPathSampler(layer_choices(tuple(args.stage_repeats)), args.seed)
    optimizer = torch.optim.SGD(lr_param_groups(model.named_parameters(), parameter_group, args.base_lr,
                                                args.weight_decay), lr=args.base_lr, momentum=args.momentum)
    scheduler = warmup_cosine_scheduler(optimizer, args.max_iter, args.warmup_iters)
    precision = process.precision()
    step = PanopticStep(model, optimizer, scheduler, sampler, precision, device, context)
    checkpointer = Checkpointer(
        {"system": SYSTEM, "stage": "search", "args": vars(args), "categories": categories,
         "classes": sources.classes, "split": {"train": list(train_positions), "held_out": list(held_out)}},
        model, optimizer=optimizer, scheduler=scheduler, scaler=precision, step=step)
    resume = resume_point(resumed, checkpointer, run_dir, "--resume", (run_dir.metrics,) if run_dir else ())
    logger.info(f"supernet: {args.dataset} ({things} thing, {stuff} stuff categories), {len(train_positions)} "
                f"training / {len(held_out)} held-out images, {sum(args.stage_repeats)} backbone blocks, "
                f"{sum(p.numel() for p in model.parameters()):,} weights, {args.max_iter} iterations of "
                f"{args.batch_size} image(s) ({args.max_iter // step.window} optimiser steps), device {device}, "
                f"{context.world_size} process(es){', SyncBatchNorm' if process.sync_bn else ''}, amp "
                f"{process.amp_text}; run directory {run_dir}")
    with deterministic_algorithms(args.deterministic):
        fit_stage(step, loader, StageRun(run_dir, checkpointer, context, resume,
                                         (["train_loss", "loss_segmentation", "loss_mask"], "supernet"),
                                         args.checkpoint_period),
                  None, max_iters=args.max_iter, desc="supernet", extra=hooks)
    if args.greedy_search:
        path = Path(broadcast_object(str(run_dir.checkpoint) if run_dir else None, context))
        logger.info(f"supernet trained; the greedy search scores {args.search_cycles} cycle(s) of candidates on "
                    f"{len(held_out)} held-out images, one candidate per process at a time")
        scoring = SupernetScoring(checkpointer.state(), path, device)
        scoring.run(GreedyPathSearch(scoring.choices, args.search_cycles, args.seed), GREEDY_STATE, "greedy search",
                    context, logger.info)
    if run_dir is None:
        return None
    logger.info(f"{'search finished' if args.greedy_search else 'supernet trained'}; write the architecture with: "
                f"python decode_autodeeplab.py --resume {run_dir.checkpoint}"
                + ("" if args.greedy_search else " (it runs the greedy search first, on one process)"))
    return run_dir


def recalibrate_batchnorm(model: AutoPanoptic, loader: torch.utils.data.DataLoader, path: Sequence[int],
                          batches: int, device: torch.device) -> None:
    """The original's ``bn_statistic``: every BatchNorm's running mean set to 0 and variance to 1, then ``batches``
    training batches forwarded in training mode on ``path`` without gradients (the momentum-0.1 average). Only
    the backbone has BatchNorm (the heads use GroupNorm), so only it runs."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
            module.num_batches_tracked.zero_()
    model.train()
    blocks = len(model.backbone.blocks)
    with torch.no_grad():
        for _, (images, _targets) in zip(range(batches), cycle_batches(loader, 0)):
            model.backbone(model.batch_images([image.to(device) for image in images]).tensors, path[:blocks])


class CandidateEvaluator:
    """A candidate path's scores: BatchNorm recalibrated on training batches, then PQ on the held-out images; the
    fitness is the PQ. The scores depend on the path alone (the statistics are reset first), so any process may
    evaluate any candidate."""

    def __init__(self, model: AutoPanoptic, recalibration: torch.utils.data.DataLoader,
                 held_out: torch.utils.data.DataLoader, categories: Sequence[dict[str, Any]], args: argparse.Namespace,
                 device: torch.device) -> None:
        self.model, self.recalibration, self.held_out = model, recalibration, held_out
        self.categories, self.args, self.device = categories, args, device

    def __call__(self, path: Sequence[int]) -> dict[str, Any]:
        """``{"path", the SCORES, "seconds"}``."""
        started = time.time()
        recalibrate_batchnorm(self.model, self.recalibration, path, self.args.bn_recalibration_iters, self.device)
        scores = evaluate_panoptic(self.model, self.held_out, self.categories, self.device,
                                   forward=lambda model, images: model(images, path=path), desc="candidate",
                                   stuff_area_limit=self.args.stuff_area_limit)
        return {"path": list(path), **{key: scores[key] for key in SCORES}, "seconds": round(time.time() - started, 2)}


def describe_candidate(record: dict[str, Any]) -> str:
    return (f"PQ {100 * record['pq']:.2f} (things {100 * record['pq_things']:.2f}, "
            f"stuff {100 * record['pq_stuff']:.2f}), semantic mIoU {100 * record['semantic_miou']:.2f}; "
            f"{record['seconds']:.0f} s")


class SupernetScoring:
    """What scores candidate paths of a trained supernet: the supernet itself, the recalibration and held-out
    loaders, and the ``CandidateEvaluator``; ``run`` drives a path search through it, its every score (``records``)
    kept in a state file beside the checkpoint so that an interrupted search (SIGTERM, a crash) continues where it
    stopped. ``checkpoint`` is a search checkpoint's content and ``path`` where it is (or will be) written."""

    def __init__(self, checkpoint: dict[str, Any], path: Path, device: torch.device | None = None) -> None:
        args = argparse.Namespace(**checkpoint["args"])
        device = device or resolve_device(args.device)
        categories = checkpoint["categories"]
        things, stuff = class_counts(categories)
        model = AutoPanoptic(things, stuff, None, PanopticSizes.from_args(vars(args)))
        load_model_state(model, checkpoint["model"], str(path))
        model.to(device)
        source = get_dataset_info(args.dataset).make_source("train", args)
        train_positions, held_out = checkpoint["split"]["train"], checkpoint["split"]["held_out"]
        recalibration = make_loader(PanopticDataset(source, PanopticTransform(args.min_size, args.max_size,
                                                                              train=True)),
                                    SeededSampler(train_positions, args.seed, shuffle=True, drop_last=True),
                                    args.batch_size, args.workers, drop_last=True, collate_fn=collate)
        held_out_loader = make_loader(PanopticDataset(source, PanopticTransform(args.min_size, args.max_size,
                                                                                train=False)),
                                      SeededSampler(held_out, 0, shuffle=False), args.batch_size, args.workers,
                                      drop_last=False, collate_fn=collate)
        self.args, self.checkpoint_path = args, path
        self.stage_repeats = tuple(args.stage_repeats)
        self.choices = layer_choices(self.stage_repeats)
        self.evaluator = CandidateEvaluator(model, recalibration, held_out_loader, categories, args, device)
        self.records: list[dict[str, Any]] = []
        self.supernet = {"checkpoint": str(path.resolve()), "iterations": checkpoint["step"]["iterations"]}

    def run(self, search: ScoredPathSearch, state_name: str, what: str, context: DistributedContext | None = None,
            report: Callable[[str], None] = print) -> Sequence[int]:
        """Evaluate ``search``'s candidates not yet in ``state_name`` (beside the checkpoint) and return its
        architecture. Under torchrun every process calls this: each round gives one candidate to each process,
        every process learns every score, and rank 0 rewrites the state after each round; SIGTERM stops after the
        round in hand. ``report`` gets one line per scored candidate (rank 0)."""
        context = context or DistributedContext()
        state_file = self.checkpoint_path.resolve().parent / state_name
        saved = broadcast_object(read_greedy_state(state_file, self.supernet) if context.is_main and
                                 state_file.is_file() else None, context)
        if saved is not None:
            search.load_state_dict(saved["search"])
            self.records = saved["records"]
            if context.is_main:
                report(f"resuming the {what} of {state_file}: {len(search.fitness)} candidate(s) already scored")
        total, pending = sum(len(cycle) for cycle in search.candidates), search.pending()
        with StopRequest(state_file, "run the same command again to continue") as stop:
            for start in range(0, len(pending), context.world_size):
                mine = pending[start + context.rank:start + context.rank + 1]
                for record in [r for part in gather_objects([self.evaluator(p) for p in mine], context) for r in part]:
                    search.record(tuple(record["path"]), record["pq"])
                    self.records.append(record)
                    if context.is_main:
                        report(f"candidate {len(search.fitness)}/{total}: {describe_candidate(record)}")
                if context.is_main:
                    with atomic_path(state_file) as temporary:
                        Path(temporary).write_text(json.dumps({
                            "format": GREEDY_FORMAT, "format_version": 1, "supernet": self.supernet,
                            "search": search.state_dict(), "records": self.records}) + "\n")
                signum = stop.requested(context)
                if signum is not None:
                    raise RunInterrupted(f"{what} stopped by {signal.Signals(signum).name} after "
                                         f"{len(search.fitness)} of {total} candidates; {state_file} holds them: run "
                                         "the same command again to continue", signum)
        return search.architecture()

    def source(self, search: ScoredPathSearch, architecture: Sequence[int], **extra: Any) -> dict[str, Any]:
        """Where an architecture chosen by ``search`` came from: the supernet, the candidates, its own score."""
        scored = {tuple(record["path"]): record for record in self.records}
        best = max(self.records, key=lambda record: record["pq"])
        chosen = scored.get(tuple(architecture))
        return {"checkpoint": self.supernet["checkpoint"], "dataset": self.args.dataset,
                "supernet_iterations": self.supernet["iterations"], "candidates_scored": len(search.fitness),
                "best_candidate": {"path": best["path"], **{key: best[key] for key in SCORES}},
                **({"supernet_pq": chosen["pq"]} if chosen is not None else {}), **extra}


def decode(checkpoint: dict[str, Any], path: Path) -> PanopticGenotype:
    """The path-priority greedy search's architecture: its cycles of fairly sampled candidate paths, each scored by
    PQ on the held-out images after BatchNorm recalibration, ranked into per-layer scoreboards, and the best op per
    layer. Every scored candidate is in ``greedy_search.json`` beside the checkpoint (the search stage fills it);
    candidates not scored there (``--no-greedy-search``, a search stopped during it) are scored here first, on one
    process, the file rewritten after each, so an interrupted search (SIGTERM, a crash) continues where it
    stopped."""
    scoring = SupernetScoring(checkpoint, path)
    greedy = GreedyPathSearch(scoring.choices, scoring.args.search_cycles, scoring.args.seed)
    architecture = scoring.run(greedy, GREEDY_STATE, "greedy search")
    return PanopticGenotype.from_path(list(architecture), scoring.stage_repeats, scoring.source(
        greedy, architecture, strategy="greedy", cycles=scoring.args.search_cycles,
        scoreboard=[board.tolist() for board in greedy.scoreboard()],
        runner_up_models=[list(model_path) for model_path in greedy.top_models()[1:]]))


def random_decode(checkpoint: dict[str, Any], path: Path, candidates: int | None, seed: int) -> PanopticGenotype:
    """Random search on a trained supernet: ``candidates`` uniformly drawn paths (default: as many as the greedy
    search scores), each scored as the greedy search scores its candidates, the best kept; state in
    ``random_search_seed<seed>.json`` beside the checkpoint. With one candidate nothing is scored: the path is a
    uniformly random architecture of the space."""
    args = argparse.Namespace(**checkpoint["args"])
    stage_repeats = tuple(args.stage_repeats)
    choices = layer_choices(stage_repeats)
    count = candidates if candidates is not None else args.search_cycles * window_length(choices)
    random_search = RandomPathSearch(choices, count, seed)
    if count == 1:
        return PanopticGenotype.from_path(list(random_search.candidates[0][0]), stage_repeats, {
            "checkpoint": str(path.resolve()), "dataset": args.dataset, "strategy": "random", "seed": seed,
            "candidates_scored": 0})
    scoring = SupernetScoring(checkpoint, path)
    architecture = scoring.run(random_search, f"random_search_seed{seed}.json", "random search")
    return PanopticGenotype.from_path(list(architecture), stage_repeats, scoring.source(
        random_search, architecture, strategy="random", seed=seed))


def read_greedy_state(state_file: Path, supernet: dict[str, Any]) -> dict[str, Any]:
    """A saved greedy search, refused (one clear line) when corrupt or made on another supernet checkpoint."""
    try:
        saved = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{state_file}: not a readable greedy search state ({error}); delete it to start again") \
            from None
    if not isinstance(saved, dict) or saved.get("format") != GREEDY_FORMAT:
        raise UserError(f"{state_file}: expected format '{GREEDY_FORMAT}'; delete it to start again")
    if saved.get("supernet") != supernet:
        raise UserError(f"{state_file}: its candidates were scored on another supernet checkpoint "
                        f"({saved.get('supernet')}); delete it to search this one ({supernet})")
    return saved


register_system(SearchSystem(name=SYSTEM, genotype=PanopticGenotype, search=search, decode=decode,
                             draw=plot_architecture, random_decode=random_decode))
