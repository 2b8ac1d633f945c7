"""The decoder search of Nekrasov et al. (CVPR 2019, WACV 2020) as a search system: the controller samples
decoders, each is trained briefly on part of the training split and scored on the rest, and the scores reward the
controller; then the decoding of a search checkpoint (the best-scored decoder) into ``architecture.json``.

The run proceeds in rounds of ``--parallel_candidates`` candidates: rank 0 samples a round from the controller,
every process of a torchrun launch trains its share, and rank 0 feeds the rewards to the controller in candidate
order. A candidate's draws (weights, data order, early-termination rule) are seeded by its index, so the search
is the same whatever the number of processes, and a resumed one continues exactly. A candidate that fails (out of
memory, a non-finite loss) is recorded as failed and never rewards the controller (the original fed it a reward
of 0). The checkpoint after every round holds the controller, its optimiser, the PPO buffer and baseline, the
early-termination state, the split and every candidate's record.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from dataloaders import SeededSampler, SegmentationDataset, keep_data_split, make_loader, training_sources
from dataloaders.transforms import candidate_eval_transform, candidate_train_transform
from engine.checkpoint import Checkpointer, save_checkpoint
from engine.distributed import DistributedContext, broadcast_object, gather_objects
from engine.hooks import TensorBoardLog
from engine.interrupt import RunInterrupted, StopRequest
from engine.precision import PrecisionStep, amp_dtype
from engine.run_dir import RunDir, append_jsonl
from engine.stage import open_stage_run, stage_device
from engine.trainer import Hook, NonFiniteLoss, Trainer
from evaluation.semantic import evaluate
from modeling.nas_segm.encoder import CVPR_TAPS, WACV_TAPS, MobileNetV2Encoder, load_encoder_weights
from modeling.nas_segm.genotype import DecoderGenotype
from modeling.nas_segm.network import DecoderSearchNetwork
from modeling.nas_segm.plots import plot_decoder
from modeling.registry import load_trained_model
from search.nas_segm.agents import make_agent
from search.nas_segm.candidates import (CachedFeatures, CandidateInterrupted, CandidateRecipe, DecoderStep,
                                        EncoderFeatures, EndToEndStep, FeatureCache, PolyakAverage, RunningMaxStop,
                                        ScoreAndDecide, StopBetweenSteps, build_feature_cache, geometric_reward,
                                        make_optimizer)
from search.nas_segm.strategy import CACHING, CONTROLLER, DECIDING, TRAINING, ControllerSearch
from search.registry import SearchSystem, register_system
from utils.errors import UserError
from utils.plots import plot_curves, save_figure
from utils.seeds import derived_seed

SYSTEM = DecoderGenotype.system
CURVES = ("reward", "miou", "baseline", "entropy", "latency_ms")  # TensorBoard's scalars of a scored candidate


def candidate_recipe(args: argparse.Namespace) -> CandidateRecipe:
    pair = tuple
    return CandidateRecipe(
        epochs=pair(args.num_segm_epochs), val_every=pair(args.val_every), batch_size=pair(args.batch_size),
        encoder_optim=args.enc_optim, decoder_optim=args.dec_optim, encoder_lr=pair(args.enc_lr),
        decoder_lr=pair(args.dec_lr), encoder_momentum=pair(args.enc_mom), decoder_momentum=pair(args.dec_mom),
        encoder_wd=pair(args.enc_wd), decoder_wd=pair(args.dec_wd), encoder_grad_clip=args.enc_grad_clip,
        decoder_grad_clip=args.dec_grad_clip, aux_weight=args.dec_aux_weight,
        kd_coeff=args.kd_coeff if args.do_kd else 0.0, polyak=args.do_polyak, omitted=tuple(args.val_omit_classes))


def meta_split(count: int, train_percent: int, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of the training images: ``train_percent`` % train candidates, the rest score them."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = count * train_percent // 100
    return sorted(order[:cut]), sorted(order[cut:])


def initial_encoder(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """The weights every candidate's encoder starts from: --encoder-weights, else a seeded initialisation."""
    torch.manual_seed(args.seed)
    encoder = MobileNetV2Encoder(CVPR_TAPS if args.space == "cvpr" else WACV_TAPS)
    if args.encoder_weights:
        load_encoder_weights(encoder, args.encoder_weights)
    return encoder.state_dict()


def load_teacher(args: argparse.Namespace, device: torch.device) -> torch.nn.Module | None:
    if not args.do_kd:
        return None
    teacher, checkpoint, _ = load_trained_model(args.kd_teacher, device)
    if checkpoint["args"]["num_classes"] != args.num_classes:
        raise UserError(f"--kd-teacher {args.kd_teacher}: predicts {checkpoint['args']['num_classes']} classes, the "
                        f"search has {args.num_classes}")
    return teacher


def candidate_costs(network: DecoderSearchNetwork, size: int, device: torch.device) -> dict[str, Any]:
    """Parameters (the auxiliary heads left out, as the original counts), Multi-Adds and latency of one
    forward pass of one ``size`` x ``size`` image on ``device`` (the median of 3 after a warm-up)."""
    network.eval()
    params = sum(p.numel() for name, p in network.named_parameters() if "aux" not in name)
    image = torch.zeros(1, 3, size, size, device=device)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            network(image)
        times = []
        for _ in range(4):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            network(image)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - started)
    return {"params": params, "multi_adds": counter.get_total_flops() // 2,
            "latency_ms": round(1000 * float(np.median(times[1:])), 3)}


@dataclass
class Stage0Data:
    """What stage 0 trains on: the feature cache, or (--no-stage0-cache) the same images, encoded (and the
    teacher's logits computed) afresh every step, each epoch with new augmentations."""

    cache: FeatureCache | None
    images: SegmentationDataset
    indices: list[int]
    teacher: torch.nn.Module | None

    def loader(self, seed: int, batch_size: int, workers: int) -> DataLoader:
        if self.cache is not None:
            return DataLoader(CachedFeatures(self.cache), batch_size=batch_size, drop_last=True,
                              sampler=SeededSampler(range(len(self.cache)), seed, shuffle=True, drop_last=True))
        return make_loader(self.images, SeededSampler(self.indices, seed, shuffle=True, drop_last=True), batch_size,
                           workers, drop_last=True)

    @property
    def nbytes(self) -> int:
        return self.cache.nbytes if self.cache is not None else 0


@dataclass(frozen=True)
class CandidateData:
    """What every candidate trains and is scored on: stage 0's data, stage 1's images (``train_set`` at the
    ``meta_train`` positions), the held-out images that score it, and the encoder's starting weights."""

    stage0: Stage0Data
    train_set: SegmentationDataset
    meta_train: Sequence[int]
    val_loader: DataLoader
    encoder_state: dict[str, torch.Tensor]


class CandidateRunner:
    """Builds, trains and scores one candidate (one process, no collective), and returns its record."""

    def __init__(self, args: argparse.Namespace, recipe: CandidateRecipe, data: CandidateData, device: torch.device,
                 rank: int, stop: StopRequest, hooks: Sequence[Hook]) -> None:
        self.args, self.recipe, self.data, self.device, self.rank = args, recipe, data, device, rank
        self.stop, self.hooks = stop, list(hooks)
        self.dtype = amp_dtype(args.amp_dtype, device)

    def run(self, plan: dict[str, Any], monitors: list[list[RunningMaxStop]]) -> dict[str, Any]:
        """The record of candidate ``plan["candidate"]``; ``monitors`` is the early-termination state at the start
        of its round (not changed here). Raises nothing for a failing candidate: its record says why."""
        index, args = plan["candidate"], self.args
        genotype = DecoderGenotype.from_json({"space": args.space, "config": plan["config"]}, None, {},
                                             f"candidate {index}")
        record: dict[str, Any] = {"candidate": index, "genotype": plan["config"], "log_prob": plan["log_prob"],
                                  "entropy": plan["entropy"], "rank": self.rank, "checks": [], "stage": 0,
                                  "stopped_early": False}
        started = time.time()
        network = None
        try:
            torch.manual_seed(derived_seed(args.seed, index, TRAINING))
            network = DecoderSearchNetwork(genotype, args.num_classes, args.agg_cell_size, args.sep_repeats,
                                           aux_heads=args.space == "cvpr" and args.dec_aux_weight > 0,
                                           aux_cell=bool(args.aux_cell))
            network.encoder.load_state_dict(self.data.encoder_state)
            network.to(self.device)
            self._train(network, index, monitors, record)
            record.update(candidate_costs(network, args.val_crop_size, self.device), status="ok")
        except CandidateInterrupted:
            return {"candidate": index, "status": "interrupted", "signal": self.stop.signum}
        except (RuntimeError, NonFiniteLoss) as error:  # torch.OutOfMemoryError is a RuntimeError
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            record.update(status="failed", failure=f"{type(error).__name__}: {reason}")
            for key in ("reward", "miou", "mean_accuracy", "fw_iou"):
                record.pop(key, None)
        finally:
            del network
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        record["seconds"] = round(time.time() - started, 2)
        return record

    def _train(self, network: DecoderSearchNetwork, index: int, monitors: list[list[RunningMaxStop]],
               record: dict[str, Any]) -> None:
        recipe, args, seed = self.recipe, self.args, derived_seed(self.args.seed, index, TRAINING)

        def score() -> dict[str, float]:
            summary = evaluate(network, self.data.val_loader, args.num_classes, self.device,
                               desc=f"candidate {index} score", loss=False)
            return geometric_reward(summary["confusion_matrix"], recipe.omitted)

        def decide(stage: int, point: int, value: float) -> bool:
            rng = np.random.default_rng([args.seed, index, DECIDING, stage, point])
            return copy.deepcopy(monitors[stage][point]).step(value, rng)

        stage0 = self.data.stage0.loader(seed, recipe.batch_size[0], args.workers)
        images = make_loader(self.data.train_set,
                             SeededSampler(self.data.meta_train, seed, shuffle=True, drop_last=True),
                             recipe.batch_size[1], args.workers, drop_last=True)
        for stage, loader in enumerate((stage0, images)):
            precision = PrecisionStep(args.amp, self.device, self.dtype)
            decoder_optimizer = make_optimizer(recipe.decoder_optim, network.decoder.parameters(),
                                               recipe.decoder_lr[stage], recipe.decoder_momentum[stage],
                                               recipe.decoder_wd[stage])
            if stage == 0:
                prepare = (None if self.data.stage0.cache is not None
                           else EncoderFeatures(network.encoder, self.data.stage0.teacher, self.device))
                step = DecoderStep(network.decoder, decoder_optimizer, precision, self.device, recipe, prepare)
                averaged = network.decoder
            else:
                encoder_optimizer = make_optimizer(recipe.encoder_optim, network.encoder.parameters(),
                                                   recipe.encoder_lr[1], recipe.encoder_momentum[1],
                                                   recipe.encoder_wd[1])
                step = EndToEndStep(network, encoder_optimizer, decoder_optimizer, precision, self.device, recipe)
                averaged = network
            hooks = [*self.hooks, StopBetweenSteps(self.stop)]
            if recipe.polyak:
                hooks.append(PolyakAverage(averaged.parameters(), recipe.POLYAK_DECAYS[stage]))
            hooks.append(ScoreAndDecide(stage, recipe.val_every[stage], score, decide, record))
            Trainer(step, loader, epochs=recipe.epochs[stage], hooks=hooks,
                    desc=f"candidate {index} stage {stage}").fit()
            if record["stopped_early"]:
                return


def compact(config: Any) -> str:
    return json.dumps(config, separators=(",", ":"))


def describe_record(record: dict[str, Any]) -> str:
    if record["status"] != "ok":
        return f"candidate {record['candidate']}: FAILED ({record['failure']}) after {record['seconds']:.0f} s"
    stage = f"stage {record['stage']}" + (", stopped early" if record["stopped_early"] else "")
    return (f"candidate {record['candidate']}: reward {record['reward']:.4f} (mIoU {record['miou']:.4f}, mean acc "
            f"{record['mean_accuracy']:.4f}, fwIoU {record['fw_iou']:.4f}); {stage}; {record['params']:,} params, "
            f"{record['multi_adds'] / 1e9:.3f} GMAdds, {record['latency_ms']:.1f} ms; {record['seconds']:.0f} s; "
            f"{compact(record['genotype'])}")


def search(args: argparse.Namespace, resumed: dict[str, Any] | None, context: DistributedContext,
           argv: list[str] | None, hooks: Sequence[Hook] = ()) -> RunDir | None:
    """Run (or resume) the decoder search; rank 0 returns the run directory. ``hooks`` join every candidate's
    training loop (before its own)."""
    device = stage_device(args, context)
    recipe = candidate_recipe(args)
    sources = training_sources(args, context)
    meta_train, meta_val = ((resumed["split"]["meta_train"], resumed["split"]["meta_val"]) if resumed is not None
                            else meta_split(len(sources.train), args.meta_train_prct, args.seed))
    if min(len(meta_train), args.n_task0) < recipe.batch_size[0] or len(meta_train) < recipe.batch_size[1]:
        raise UserError(f"--batch-size {recipe.batch_size[0]} {recipe.batch_size[1]}: the candidates train on "
                        f"{len(meta_train)} images ({args.meta_train_prct}% of {len(sources.train)}), stage 0 on "
                        f"{min(len(meta_train), args.n_task0)} of them: fewer than one batch")
    if not meta_val:
        raise UserError(f"--meta-train-prct {args.meta_train_prct}: leaves none of the {len(sources.train)} training "
                        "images to score the candidates")
    run_dir, logger = open_stage_run(args, argv, SYSTEM, "search", context)
    keep_data_split(sources, resumed, run_dir, args.resume)

    encoder_state = initial_encoder(args)
    longer = bool(args.resize_longer_side)
    stage0_set = SegmentationDataset(sources.train, candidate_train_transform(args.resize_side[0], args.crop_size[0],
                                                                              longer), args.num_classes)
    chosen = [meta_train[i] for i in sorted(torch.randperm(len(meta_train), generator=torch.Generator().manual_seed(
        derived_seed(args.seed, CACHING))).tolist()[:args.n_task0])]
    teacher = load_teacher(args, device)
    stage0 = Stage0Data(None, stage0_set, chosen, teacher)
    if args.stage0_cache:
        encoder = MobileNetV2Encoder(CVPR_TAPS if args.space == "cvpr" else WACV_TAPS)
        encoder.load_state_dict(encoder_state)
        cache_loader = make_loader(stage0_set, SeededSampler(chosen, args.seed, shuffle=False), recipe.batch_size[0],
                                   args.workers, drop_last=False)
        stage0 = Stage0Data(build_feature_cache(encoder.to(device), cache_loader, device, device, teacher),
                            stage0_set, chosen, None)
        del encoder, teacher
    train_set = SegmentationDataset(sources.train, candidate_train_transform(args.resize_side[1], args.crop_size[1],
                                                                             longer), args.num_classes)
    val_set = SegmentationDataset(sources.train, candidate_eval_transform(args.val_resize_side, args.val_crop_size,
                                                                          longer), args.num_classes)
    val_loader = make_loader(val_set, SeededSampler(meta_val, 0, shuffle=False), args.val_batch_size, args.workers,
                             drop_last=False)

    torch.manual_seed(derived_seed(args.seed, CONTROLLER))  # whatever was built before (a teacher or not)
    agent = make_agent(args.agent, args.space, args.lstm_hidden_size, args.ctrl_lr, args.seed, args.ctrl_baseline_decay)
    strategy = ControllerSearch(agent, args.space, args.seed, [recipe.checks(stage) for stage in (0, 1)])
    if resumed is not None:
        strategy.load_state_dict(resumed)
        logger.info(f"resumed at candidate {strategy.next_candidate} ({len(strategy.records)} recorded)")
    checkpointer = Checkpointer({"system": SYSTEM, "stage": "search", "args": vars(args), "classes": sources.classes,
                                 "data_split": sources.data_split,
                                 "split": {"meta_train": list(meta_train), "meta_val": list(meta_val)},
                                 "cache_bytes": stage0.nbytes})
    tensorboard = TensorBoardLog(run_dir.tensorboard if run_dir else None)
    tensorboard.open(purge_step=strategy.next_candidate)
    if run_dir is not None:
        run_dir.candidates.write_text("".join(json.dumps(r) + "\n" for r in strategy.records))
        logger.info(f"decoder search ({args.space} space, {args.agent}): {args.dataset} ({args.num_classes} classes), "
                    f"{len(meta_train)} images train the candidates and {len(meta_val)} score them; stage 0 on "
                    f"{len(chosen)} of them, " + (f"cached: {stage0.nbytes / 2**20:.1f} MiB on {device}"
                                                   if args.stage0_cache else "encoded every step")
                    + f"; encoder "
                    f"{args.encoder_weights or 'randomly initialised (give --encoder-weights for a real search)'}; "
                    f"{args.parallel_candidates} candidate(s) per round on {context.world_size} process(es); run "
                    f"directory {run_dir}")
    if args.parallel_candidates < context.world_size and context.is_main:
        logger.warning(f"warning: --parallel_candidates {args.parallel_candidates} is below the {context.world_size} "
                       "processes: some will wait idle")

    with StopRequest(run_dir.checkpoint if run_dir else None) as stop:
        runner = CandidateRunner(args, recipe, CandidateData(stage0, train_set, meta_train, val_loader, encoder_state),
                                 device, context.rank, stop, hooks)
        while strategy.next_candidate < args.num_candidates:
            indices = strategy.next_round(args.parallel_candidates, args.num_candidates)
            plans = broadcast_object(strategy.sample(indices) if context.is_main else None, context)
            snapshot = copy.deepcopy(strategy.monitors)
            mine = [runner.run(plan, snapshot) for plan in plans
                    if (plan["candidate"] - indices.start) % context.world_size == context.rank]
            results = sorted((r for part in gather_objects(mine, context) for r in part), key=lambda r: r["candidate"])
            signum = stop.requested(context)
            signals = [r["signal"] for r in results if r["status"] == "interrupted"]  # the ranks that saw it
            if signum is not None or signals:
                path = run_dir.checkpoint if run_dir else "rank 0's checkpoint.pth.tar"
                raise RunInterrupted(f"stopped during candidates {indices.start}..{indices.stop - 1}, which are "
                                     f"dropped and redone on resume; continue with --resume {path}",
                                     signum if signum is not None else signals[0])
            strategy.record(plans, results, learn=context.is_main)
            if run_dir is not None:
                for result in results:
                    append_jsonl(run_dir.candidates, result)
                    logger.info(describe_record(result))
                    if result["status"] == "ok":
                        tensorboard.add_scalars("candidate", {key: result[key] for key in CURVES}, result["candidate"])
                save_checkpoint(checkpointer.state(**strategy.state_dict()), run_dir.checkpoint)
            if strategy.failures_in_a_row >= args.max_failures:
                raise UserError(f"{strategy.failures_in_a_row} candidates in a row failed, the last with "
                                f"{results[-1]['failure']}; see "
                                f"{run_dir.candidates if run_dir else 'candidates.jsonl'}. "
                                "Lower --batch-size or --crop-size, or raise --max_failures; --resume continues")
    tensorboard.close()
    if run_dir is None:
        return None
    records = strategy.records
    save_figure(plot_curves(records, ["reward", "baseline"], x_key="candidate", title="decoder search"),
                run_dir.curves("search"))
    scored = [r for r in records if r["status"] == "ok"]
    best = max(scored, key=lambda r: r["reward"], default=None)
    logger.info(f"search finished: {len(scored)} of {len(records)} candidates scored, best reward "
                f"{best['reward']:.4f} (candidate {best['candidate']})" if best else
                f"search finished: none of the {len(records)} candidates could be scored")
    logger.info(f"decode it with: python decode_autodeeplab.py --resume {run_dir.checkpoint}")
    return run_dir


def ranked_candidates(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scored candidates, one per distinct genotype (its best score, the earliest on a tie, with how often
    it was sampled), best first."""
    best: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    for record in records:
        if record["status"] != "ok":
            continue
        key = compact(record["genotype"])
        counts[key] = counts.get(key, 0) + 1
        if key not in best or record["reward"] > best[key]["reward"]:
            best[key] = record
    ranked = sorted(best.values(), key=lambda r: (-r["reward"], r["candidate"]))
    return [r | {"times_sampled": counts[compact(r["genotype"])]} for r in ranked]


def ranking_table(checkpoint: dict[str, Any], top_k: int) -> str:
    """The ``top_k`` best distinct candidates of a search checkpoint as a text table."""
    records = checkpoint["candidates"]
    ranked = ranked_candidates(records)
    failed = sum(r["status"] != "ok" for r in records)
    lines = [f"{len(records)} candidates, {len(ranked)} distinct scored, {failed} failed; the best "
             f"{min(top_k, len(ranked))}:",
             f"{'rank':>4} {'cand.':>5} {'reward':>7} {'mIoU':>7} {'mAcc':>7} {'fwIoU':>7} {'stage':>5} {'seen':>4} "
             f"{'params':>10} {'GMAdds':>7} {'ms':>7}  genotype"]
    for rank, r in enumerate(ranked[:top_k], start=1):
        lines.append(f"{rank:>4} {r['candidate']:>5} {r['reward']:>7.4f} {r['miou']:>7.4f} {r['mean_accuracy']:>7.4f} "
                     f"{r['fw_iou']:>7.4f} {r['stage']:>5} {r['times_sampled']:>4} {r['params']:>10,} "
                     f"{r['multi_adds'] / 1e9:>7.3f} {r['latency_ms']:>7.1f}  {compact(r['genotype'])}")
    return "\n".join(lines)


def decode(checkpoint: dict[str, Any], path: Path) -> DecoderGenotype:
    """The best-scored decoder of a search checkpoint, with where it came from."""
    args, records = checkpoint["args"], checkpoint["candidates"]
    ranked = ranked_candidates(records)
    if not ranked:
        raise UserError(f"{path}: no candidate has been scored yet ({len(records)} recorded, all failed or none); "
                        "let the search run longer")
    best = ranked[0]
    source = {"checkpoint": str(path.resolve()), "candidate": best["candidate"], "reward": best["reward"],
              "miou": best["miou"], "dataset": args["dataset"], "num_classes": args["num_classes"],
              "candidates": len(records), "search_agg_cell_size": args["agg_cell_size"],
              "search_sep_repeats": args["sep_repeats"]}
    return DecoderGenotype.from_json({"space": args["space"], "config": best["genotype"]}, None, source, str(path))


register_system(SearchSystem(name=SYSTEM, genotype=DecoderGenotype, search=search, decode=decode, draw=plot_decoder,
                             report=ranking_table))
