"""Does the search beat chance? The protocol of Sciuto et al. (ICLR 2020, "Evaluating the search phase of neural
architecture search") for one search system of this project:

1. the system's search, once per search seed, decoded into its architecture;
2. K architectures drawn uniformly from the same space (``decode_autodeeplab.py --strategy random`` for the
   one-shot systems, ``train_nas_segm.py --agent random`` for the decoder search, whose candidates are the random
   architectures and whose rewards are their estimates);
3. every architecture, searched and random, retrained by ``train_new_model.py`` with the same recipe, budget, data
   and retrain seeds; its score is the last validation of the retrain (mIoU, or PQ for Auto-Panoptic);
4. the report: the searched architectures' scores (mean and spread over the search seeds) beside the random ones'
   distribution, the searched mean's percentile among them, and the ranking fidelity of the search's own estimate
   (Kendall's tau-b between what the search believed of every architecture and its retrained score: the supernet's
   validation mIoU with alpha and beta one-hot for Auto-DeepLab, the candidate reward for the decoder search, the
   supernet's held-out PQ after BatchNorm recalibration for Auto-Panoptic), and each part's cost in CPU seconds
   and in wall-clock seconds;
5. with ``--random-search``, Sciuto et al.'s random policy beside the search, per search seed: random search with
   the search's own budget and estimate (Li and Talwalkar, UAI 2019), its pick retrained like the rest. For the
   decoder search that is the search run again with ``--agent random`` (as many candidates, the same reward); for
   the one-shot systems, architectures drawn uniformly and scored by that seed's supernet as the search scores its
   candidates (Auto-Panoptic: as many as its greedy search scored), the best kept.

Every stage runs as a user runs it, in a fresh process (one at a time: two torch processes on two cores slow each
other down many times), and the CPU seconds of each are taken from the kernel's accounting of the child. Each part's
result is written to ``benchmark_state.json`` in the output folder as soon as it is done, so a rerun of the same
command continues where the last one stopped and never redoes a finished search or retrain; a run that had started
and not finished is started again from scratch (every run is seeded, so the result is the same). Each part is keyed
by its command and what its inputs hold (a retrain by the architecture it trains), so more random architectures, more
seeds or another search recipe redo only the parts they change. A stage that fails stops the benchmark with its
error: a crashed run is never recorded as a score; a retrain whose loss diverges is recorded as a failure (that
architecture does not train with the recipe) and left out of the statistics, listed by name.

    python benchmarks/search_vs_random.py --system nas-segm
    python benchmarks/search_vs_random.py --system autodeeplab --search-seeds 0 1 2 --random 12
    python benchmarks/search_vs_random.py --system autopanoptic --results benchmarks/results

``--results DIR`` also writes ``search_vs_random_<system>.json`` and ``.png`` there (the committed results the
README's table is made from). ``--budget toy`` runs every stage at a size that only checks the plumbing.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from engine.run_dir import RunDir, read_jsonl  # noqa: E402
from modeling.architecture_file import save_architecture  # noqa: E402
from modeling.nas_segm.genotype import DecoderGenotype  # noqa: E402
from utils.atomic import atomic_path  # noqa: E402

STATE_FORMAT, STATE_VERSION = "search-vs-random-state", 1
RESULT_FORMAT, RESULT_VERSION = "search-vs-random", 1


@dataclass(frozen=True)
class Budget:
    """One system's benchmark setting: the flags of its search, decode and retrain stages (the data flags go to
    all of them, so every stage sees the same images and split)."""

    data: tuple[str, ...]
    search: tuple[str, ...]
    retrain: tuple[str, ...]
    decode: tuple[str, ...] = ()
    # Architectures a one-shot random search scores with the supernet; None: as many as the search itself scored
    # (recorded by Auto-Panoptic's greedy search as ``candidates_scored``).
    random_search_candidates: int | None = None


@dataclass(frozen=True)
class System:
    """How the benchmark drives one search system: its search script, the metric its retrain validates (the key in
    ``metrics.jsonl``) and its budgets by name."""

    name: str
    search_script: str
    metric: str
    budgets: dict[str, Budget] = field(default_factory=dict)


CONTEXT = ("--dataset", "synthetic_context", "--synthetic_size", "64")
PANOPTIC_CONTEXT = ("--dataset", "synthetic_panoptic_context", "--synthetic_size", "96")
SYSTEMS = {
    "autodeeplab": System("autodeeplab", "train_autodeeplab.py", "val_miou", {
        # The demo's 4-layer space: the 12-layer supernet cannot move alpha and beta in minutes on a CPU.
        "default": Budget(
            data=CONTEXT + ("--synthetic_train_samples", "192", "--synthetic_val_samples", "48"),
            search=("--num_layers", "4", "--filter_multiplier", "4", "--crop_size", "64", "--batch_size", "4",
                    "--epochs", "10", "--alpha_epoch", "3"),
            retrain=("--filter_multiplier", "8", "--crop_size", "64", "--batch_size", "8", "--epochs", "20",
                     "--base_lr", "0.02", "--scale_range", "0.8", "1.25"),
            # The gradient search scores no candidates; ten supernet evaluations cost about a tenth of the search.
            random_search_candidates=10),
        "toy": Budget(
            data=("--dataset", "synthetic_context", "--synthetic_size", "40", "--synthetic_train_samples", "8",
                  "--synthetic_val_samples", "2"),
            search=("--num_layers", "2", "--steps", "2", "--block_multiplier", "2", "--filter_multiplier", "2",
                    "--crop_size", "32", "--batch_size", "2", "--epochs", "2", "--alpha_epoch", "1"),
            retrain=("--filter_multiplier", "2", "--crop_size", "32", "--batch_size", "2", "--epochs", "1"),
            random_search_candidates=2),
    }),
    "nas-segm": System("nas-segm", "train_nas_segm.py", "val_miou", {
        "default": Budget(
            data=CONTEXT + ("--synthetic_train_samples", "192", "--synthetic_val_samples", "48"),
            search=("--num_candidates", "16", "--num-segm-epochs", "4", "8", "--val-every", "4", "4",
                    "--enc-lr", "2e-3", "2e-3", "--dec-lr", "1e-2", "5e-3", "--no-do-polyak"),
            retrain=("--crop_size", "64", "--batch_size", "8", "--epochs", "20", "--base_lr", "0.05",
                     "--scale_range", "0.8", "1.25")),
        "toy": Budget(
            data=("--dataset", "synthetic_context", "--synthetic_size", "40", "--synthetic_train_samples", "20",
                  "--synthetic_val_samples", "2"),
            search=("--num_candidates", "2", "--batch-size", "4", "4", "--crop-size", "32", "32", "--resize-side",
                    "32", "32", "--val-crop-size", "32", "--val-resize-side", "32", "--num-segm-epochs", "1", "1",
                    "--val-every", "1", "1", "--n-task0", "8"),
            retrain=("--crop_size", "64", "--batch_size", "2", "--epochs", "1", "--synthetic_size", "64",
                     "--base_lr", "0.01")),
    }),
    "autopanoptic": System("autopanoptic", "train_autopanoptic.py", "pq", {
        "default": Budget(
            # Things are found only after the learning rate drops past iteration 320 (a random architecture: things
            # PQ 0 at 240 iterations, 0.14 at 400), so the retrain takes the demo's 480 with drops at 320 and 420.
            data=PANOPTIC_CONTEXT + ("--synthetic_train_samples", "160", "--synthetic_val_samples", "32"),
            search=("--held-out", "16", "--max-iter", "480", "--warmup-iters", "48", "--checkpoint-period", "240",
                    "--bn-recalibration-iters", "5"),
            retrain=("--max-iter", "480", "--lr-steps", "320", "420", "--warmup-iters", "30",
                     "--checkpoint-period", "480", "--eval-every", "6")),
        "toy": Budget(
            data=("--dataset", "synthetic_panoptic_context", "--synthetic_size", "64", "--synthetic_train_samples",
                  "12", "--synthetic_val_samples", "2"),
            search=("--min-size", "64", "--max-size", "64", "--held-out", "4", "--max-iter", "12", "--warmup-iters",
                    "2", "--checkpoint-period", "12", "--search-cycles", "1", "--bn-recalibration-iters", "1"),
            retrain=("--min-size", "64", "--max-size", "64", "--max-iter", "4", "--lr-steps", "2", "3",
                     "--warmup-iters", "1", "--checkpoint-period", "4", "--eval-every", "1")),
    }),
}


# --- statistics -----------------------------------------------------------------------------------------------


def percentile_of(score: float, population: Sequence[float]) -> float:
    """Where ``score`` stands in ``population``, in percent: the share strictly below it plus half the share equal
    to it (the 'mean' definition: 50 for a score equal to every member)."""
    if not population:
        raise ValueError("an empty population has no percentiles")
    below = sum(value < score for value in population)
    equal = sum(value == score for value in population)
    return 100.0 * (below + 0.5 * equal) / len(population)


def kendall_tau(first: Sequence[float], second: Sequence[float]) -> float:
    """Kendall's tau-b of two paired sequences: (concordant - discordant) pairs over the geometric mean of the
    pairs untied in each sequence; NaN where a sequence is constant. Counted over all pairs (n is small here)."""
    if len(first) != len(second):
        raise ValueError(f"paired sequences of {len(first)} and {len(second)} values")
    concordant_minus_discordant = untied_first = untied_second = 0
    for i in range(len(first)):
        for j in range(i + 1, len(first)):
            a, b = np.sign(first[i] - first[j]), np.sign(second[i] - second[j])
            concordant_minus_discordant += a * b
            untied_first += a != 0
            untied_second += b != 0
    if untied_first == 0 or untied_second == 0:
        return math.nan
    return float(concordant_minus_discordant / math.sqrt(untied_first * untied_second))


def summarise(searched: Sequence[float], random: Sequence[float],
              random_search: Sequence[float] = ()) -> dict[str, Any]:
    """The searched scores beside the random ones' distribution (and the random search's picks, where given)."""
    mean = float(np.mean(searched))
    summary = {"searched_mean": mean, "searched_std": float(np.std(searched)), "searched_min": float(min(searched)),
               "searched_max": float(max(searched)), "random_min": float(min(random)),
               "random_median": float(np.median(random)), "random_p75": float(np.percentile(random, 75)),
               "random_max": float(max(random)), "random_spread": float(max(random) - min(random)),
               "searched_mean_percentile": percentile_of(mean, random),
               "searched_percentiles": [percentile_of(score, random) for score in searched]}
    if random_search:
        random_search_mean = float(np.mean(random_search))
        summary |= {"random_search_mean": random_search_mean, "random_search_std": float(np.std(random_search)),
                    "random_search_mean_percentile": percentile_of(random_search_mean, random)}
    return summary


# --- running the stages -----------------------------------------------------------------------------------------


class BenchmarkError(Exception):
    """A stage failed or the output folder belongs to another benchmark: one line for the user."""


class Diverged(BenchmarkError):
    """A retrain's loss became inf or NaN: deterministic for a seeded run, so a result about that architecture and
    recipe (it does not train), recorded as a failure, never as a score."""


DIVERGED = re.compile(r"loss is (nan|inf|-inf)\b")


def child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_stage(script: str, flags: Sequence[str], threads: int, log: Path) -> float:
    """Run ``script`` with ``flags`` in a fresh process, its output in ``log``; its CPU seconds."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / script), *flags]
    print("  $ python " + " ".join([script, *flags]), flush=True)
    before = child_cpu_seconds()
    with open(log, "w") as output:
        result = subprocess.run(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = (log.read_text(errors="replace").strip().splitlines() or ["(no output)"])[-1]
        error = Diverged if DIVERGED.search(tail) else BenchmarkError
        raise error(f"{script} failed (exit {result.returncode}): {tail}; the whole output is in {log}")
    return child_cpu_seconds() - before


def genotype_digest(path: Path) -> str:
    """What an architecture file describes, apart from where it came from: two files of the same architecture
    (a random draw repeated, a search that decodes to the same result) share it."""
    data = json.loads(path.read_text())
    described = {key: data.get(key) for key in ("system", "genotype", "search_space")}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def part_key(script: str, flags: Sequence[str], inputs: Sequence[str]) -> str:
    """A part's identity: its command and what its inputs hold. A part is reused only under the same key."""
    return hashlib.sha256(json.dumps([script, list(flags), list(inputs)]).encode()).hexdigest()[:16]


class State:
    """``benchmark_state.json``: every finished part's key and result, rewritten atomically after each part. A
    part whose key changed (other flags, another architecture) is run again; the others are kept, so a benchmark
    given more random architectures, or another search recipe, redoes only what that changes."""

    def __init__(self, path: Path, system: str) -> None:
        self.path, self.system, self.parts = path, system, {}
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise BenchmarkError(f"{path}: not a readable benchmark state ({error}); delete it to start "
                                     "again") from None
            if saved.get("format") != STATE_FORMAT or saved.get("system") != system:
                raise BenchmarkError(f"{path}: holds a benchmark of system {saved.get('system')!r}, not {system!r}; "
                                     "use another --out-dir")
            self.parts = saved["parts"]

    def done(self, name: str, key: str | None = None) -> dict[str, Any] | None:
        """The result of part ``name`` if it finished (under ``key``, when given)."""
        part = self.parts.get(name)
        return part if part is not None and (key is None or part.get("key") == key) else None

    def record(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        self.parts[name] = result
        with atomic_path(self.path) as temporary:
            temporary.write_text(json.dumps({"format": STATE_FORMAT, "format_version": STATE_VERSION,
                                             "system": self.system, "parts": self.parts}, indent=1) + "\n")
        return result


class Benchmark:
    """The parts of one benchmark, each run once per key (``part``) and remembered in the state."""

    def __init__(self, system: System, budget: Budget, out: Path, threads: int, state: State) -> None:
        self.system, self.budget, self.out, self.threads, self.state = system, budget, out, threads, state

    def part(self, name: str, script: str, flags: Sequence[str], run_dir: Path | None,
             inputs: Sequence[str] = ()) -> dict[str, Any]:
        """Run one stage unless the state has it under the same key; a run directory left by an unfinished or
        outdated attempt is removed first. A retrain that diverges is recorded as failed."""
        key = part_key(script, flags, inputs)
        finished = self.state.done(name, key)
        if finished is not None:
            print(f"{name}: done before ({finished['cpu_s']:.0f} CPU s)")
            return finished
        print(f"{name}:", flush=True)
        if run_dir is not None and run_dir.exists():
            shutil.rmtree(run_dir)
        logs = self.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        started, cpu_before = time.time(), child_cpu_seconds()
        result: dict[str, Any] = {"key": key}
        try:
            run_stage(script, flags, self.threads, logs / f"{name}.txt")
        except Diverged as error:
            if script != "train_new_model.py":
                raise
            result["failed"] = str(error)
        result |= {"cpu_s": round(child_cpu_seconds() - cpu_before, 1), "wall_s": round(time.time() - started, 1)}
        if "failed" not in result and script == "train_new_model.py":
            scores = [record[self.system.metric] for record in read_jsonl(RunDir(run_dir).metrics)
                      if self.system.metric in record]
            if not scores or not math.isfinite(scores[-1]):
                raise BenchmarkError(f"{run_dir}: the retrain recorded no finite {self.system.metric}")
            result["score"] = scores[-1]
        return self.state.record(name, result)

    def search(self, seed: int, label: str = "search", extra: Sequence[str] = ()) -> tuple[Path, str]:
        """The search of ``seed`` (given ``extra`` flags; ``label`` names its parts) and its decoded architecture
        file, with the search part's key."""
        run_dir = self.out / f"{label}_seed{seed}"
        searched = self.part(f"{label}_seed{seed}", self.system.search_script,
                             [*self.budget.data, *self.budget.search, *extra, "--seed", str(seed), "--out-dir",
                              str(run_dir)], run_dir)
        decode = "decode" if label == "search" else f"{label}_decode"
        self.part(f"{decode}_seed{seed}", "decode_autodeeplab.py", ["--resume", str(run_dir), *self.budget.decode],
                  None, [searched["key"]])
        return RunDir(run_dir).architecture, searched["key"]

    def random_architectures(self, count: int, seed: int, space_from: Path, space_key: str) -> list[Path]:
        """``count`` uniformly drawn architecture files of the space of the search in ``space_from`` (one-shot
        systems), or of a random decoder search's candidates (nas-segm)."""
        if self.system.name == "nas-segm":
            return self._random_decoders(count, seed)
        files = []
        for k in range(count):
            out_dir = self.out / f"random_{k}"
            self.part(f"draw_random_{k}", "decode_autodeeplab.py",
                      ["--resume", str(space_from), "--strategy", "random", "--random-candidates", "1", "--seed",
                       str(seed + k), "--out-dir", str(out_dir)], None, [space_key])
            files.append(RunDir(out_dir).architecture)
        return files

    def _random_decoders(self, count: int, seed: int) -> list[Path]:
        run_dir = self.out / "random_search"
        self.part("random_search", self.system.search_script,
                  [*self.budget.data, *self.budget.search, "--agent", "random", "--num_candidates", str(count),
                   "--seed", str(seed), "--out-dir", str(run_dir)], run_dir)
        space = json.loads((run_dir / "args.json").read_text())["space"]
        files = []
        for record in read_jsonl(RunDir(run_dir).candidates)[:count]:
            if record["status"] != "ok":
                raise BenchmarkError(f"random candidate {record['candidate']} failed ({record['failure']}); see "
                                     f"{RunDir(run_dir).candidates}")
            genotype = DecoderGenotype.from_json({"space": space, "config": record["genotype"]}, None, {
                "strategy": "random", "candidate": record["candidate"], "reward": record["reward"],
                "checkpoint": str(RunDir(run_dir).checkpoint)}, str(RunDir(run_dir).candidates))
            out_dir = self.out / f"random_{record['candidate']}"
            out_dir.mkdir(parents=True, exist_ok=True)
            save_architecture(genotype, RunDir(out_dir).architecture)
            files.append(RunDir(out_dir).architecture)
        return files

    def random_search(self, seed: int, search_dir: Path, search_key: str, searched: Path) -> Path:
        """The architecture file of random search with the search's budget and estimate, for search seed ``seed``:
        the decoder search with ``--agent random`` (same flags, so as many candidates and the same reward); for a
        one-shot system, architectures drawn uniformly and scored by the supernet in ``search_dir``, the best kept.
        The one-shot random search reuses that supernet: Auto-Panoptic's is trained on uniformly sampled paths, as
        a random search's own would be; Auto-DeepLab's weights were trained beside the search's alpha and beta."""
        if self.system.name == "nas-segm":
            return self.search(seed, "random_search", ("--agent", "random"))[0]
        from modeling.architecture_file import load_architecture

        candidates = self.budget.random_search_candidates
        if candidates is None:
            candidates = load_architecture(searched).source.get("candidates_scored")
            if not isinstance(candidates, int) or candidates < 1:
                raise BenchmarkError(f"{searched}: records no number of candidates its search scored "
                                     "('candidates_scored'); give the budget a random_search_candidates")
        out_dir = self.out / f"random_search_seed{seed}"
        self.part(f"random_search_seed{seed}", "decode_autodeeplab.py",
                  ["--resume", str(search_dir), "--strategy", "random", "--random-candidates", str(candidates),
                   "--seed", str(seed), "--out-dir", str(out_dir)], out_dir, [search_key])
        return RunDir(out_dir).architecture

    def retrain(self, label: str, architecture: Path, seed: int) -> float | None:
        """The retrained score of ``architecture`` with retrain seed ``seed`` (the last validation's metric), or None
        where the retrain diverged (recorded as such)."""
        run_dir = self.out / "retrain" / f"{label}_seed{seed}"
        finished = self.part(f"retrain_{label}_seed{seed}", "train_new_model.py",
                             [*self.budget.data, *self.budget.retrain, "--saved_arch_path", str(architecture),
                              "--seed", str(seed), "--out-dir", str(run_dir)], run_dir,
                             [genotype_digest(architecture)])
        if "failed" in finished:
            print(f"  {label}, retrain seed {seed}: FAILED ({finished['failed']})")
            return None
        print(f"  {label}, retrain seed {seed}: {self.system.metric} {finished['score']:.4f}")
        return finished["score"]


# --- what the search believed -------------------------------------------------------------------------------


def supernet_estimates(system: str, search_dir: Path, architectures: Sequence[Path]) -> list[float]:
    """The one-shot supernet's estimate of each architecture: Auto-DeepLab's validation mIoU with alpha and beta
    one-hot, Auto-Panoptic's held-out PQ after BatchNorm recalibration."""
    from engine.checkpoint import load_checkpoint
    from modeling.architecture_file import load_architecture

    checkpoint_path = RunDir(search_dir).checkpoint
    checkpoint = load_checkpoint(checkpoint_path, stage="search")
    genotypes = [load_architecture(path) for path in architectures]
    if system == "autodeeplab":
        from search.autodeeplab.stage import supernet_estimates as autodeeplab_estimates

        return autodeeplab_estimates(checkpoint, checkpoint_path, genotypes)
    from search.autopanoptic.stage import SupernetScoring

    scoring = SupernetScoring(checkpoint, checkpoint_path)
    return [scoring.evaluator(genotype.path)["pq"] for genotype in genotypes]


def rewards(architectures: Sequence[Path]) -> list[float]:
    """The decoder search's estimate of each architecture: the reward recorded with it."""
    from modeling.architecture_file import load_architecture

    return [load_architecture(path).source["reward"] for path in architectures]


# --- report -----------------------------------------------------------------------------------------------------


def plot_result(result: dict[str, Any]) -> Any:
    """Random architectures' scores as a strip (jittered), the searched ones marked, the random median and 75th
    percentile as lines."""
    from utils.plots import new_figure

    random_scores, searched = result["random_scores"], result["searched_scores"]
    fig = new_figure(figsize=(7, 2.8))
    ax = fig.subplots()
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(random_scores))
    ax.scatter(random_scores, jitter, s=36, color="0.55", label=f"random architectures ({len(random_scores)})",
               zorder=2)
    ax.scatter(searched, np.zeros(len(searched)), s=140, marker="*", color="tab:red", zorder=3,
               label=f"searched ({len(searched)} search seeds)")
    if result.get("random_search_scores"):
        picks = result["random_search_scores"]
        ax.scatter(picks, np.full(len(picks), 0.25), s=70, marker="D", color="tab:blue", zorder=3,
                   label=f"random search's picks, same budget ({len(picks)})")
    stats = result["summary"]
    ax.axvline(stats["random_median"], color="0.3", linestyle="--", linewidth=1, label="random median")
    ax.axvline(stats["random_p75"], color="0.3", linestyle=":", linewidth=1, label="random 75th percentile")
    ax.set_yticks([])
    ax.set_ylim(-0.5, 0.5)
    ax.set_xlabel(f"retrained {result['metric']} ({result['dataset']})")
    ax.set_title(f"{result['system']}: searched vs random (percentile {stats['searched_mean_percentile']:.0f}, "
                 f"Kendall tau {result['kendall_tau']:.2f})", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def output_folder(args: argparse.Namespace) -> Path:
    """--out-dir, else run/search_vs_random/<system>_<budget>: where the runs, the state and the result go."""
    return Path(args.out_dir or ROOT / "run" / "search_vs_random" / f"{args.system}_{args.budget}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    system = SYSTEMS[args.system]
    budget = system.budgets[args.budget]
    out = output_folder(args)
    out.mkdir(parents=True, exist_ok=True)
    state = State(out / "benchmark_state.json", system.name)
    bench = Benchmark(system, budget, out, args.threads, state)

    searches = {seed: bench.search(seed) for seed in args.search_seeds}
    searched_files = [searches[seed][0] for seed in args.search_seeds]
    first = args.search_seeds[0]
    random_files = bench.random_architectures(args.random, args.random_seed, out / f"search_seed{first}",
                                              searches[first][1])
    labels = [f"searched_seed{seed}" for seed in args.search_seeds] + [f"random_{k}" for k in range(args.random)]
    files = searched_files + random_files
    # The random search's picks are retrained and reported beside the searched ones, but stay out of Kendall's tau:
    # its estimate is the same as for the random architectures, so tau keeps one meaning with and without them.
    random_search = {f"random_search_seed{seed}": bench.random_search(seed, out / f"search_seed{seed}",
                                                                       searches[seed][1], searches[seed][0])
                     for seed in (args.search_seeds if args.random_search else ())}
    retrained = {label: [bench.retrain(label, path, seed) for seed in args.retrain_seeds]
                 for label, path in [*zip(labels, files), *random_search.items()]}
    failures = [f"{label} (retrain seed {seed})" for label in [*labels, *random_search]
                for seed, score in zip(args.retrain_seeds, retrained[label]) if score is None]
    scores = {label: [score for score in retrained[label] if score is not None] for label in retrained}
    # An architecture none of whose retrains trained has no score: it is listed among the failures instead.
    mean_scores = [float(np.mean(scores[label])) if scores[label] else math.nan for label in labels]

    if system.name == "nas-segm":
        believed = {"rewards": rewards(files)}
    else:
        believed = {}
        for seed in args.search_seeds:
            names = [f"estimate_supernet{seed}_{label}" for label in labels]
            keys = [part_key("estimate", [], [searches[seed][1], genotype_digest(path)]) for path in files]
            missing = [i for i, (name, key) in enumerate(zip(names, keys)) if state.done(name, key) is None]
            if missing:
                print(f"estimates: the supernet of search seed {seed} scores {len(missing)} architectures", flush=True)
                cpu_before, started = time.process_time(), time.time()
                values = supernet_estimates(system.name, out / f"search_seed{seed}", [files[i] for i in missing])
                cpu = (time.process_time() - cpu_before) / len(missing)
                wall = (time.time() - started) / len(missing)
                for i, value in zip(missing, values):
                    state.record(names[i], {"key": keys[i], "value": value, "cpu_s": round(cpu, 1),
                                            "wall_s": round(wall, 1)})
            believed[f"supernet_seed{seed}"] = [state.done(name)["value"] for name in names]
    scored = [i for i, score in enumerate(mean_scores) if not math.isnan(score)]
    taus = {key: kendall_tau([values[i] for i in scored], [mean_scores[i] for i in scored])
            for key, values in believed.items()}

    searched_scores = [score for score in mean_scores[:len(args.search_seeds)] if not math.isnan(score)]
    random_scores = [score for label in labels[len(args.search_seeds):] for score in scores[label]]
    random_search_scores = [float(np.mean(scores[label])) for label in random_search if scores[label]]
    if not searched_scores or not random_scores:
        raise BenchmarkError(f"no {'searched' if not searched_scores else 'random'} architecture could be "
                             f"retrained ({', '.join(failures)} diverged); see {out / 'logs'}")
    cpu = {"search": 0.0, "decode": 0.0, "random_draw": 0.0, "retrain_searched": 0.0, "retrain_random": 0.0,
           "estimates": 0.0} | ({"random_search": 0.0, "retrain_random_search": 0.0} if random_search else {})
    wall = dict.fromkeys(cpu, 0.0)
    used = ({f"search_seed{seed}" for seed in args.search_seeds} | {f"decode_seed{seed}" for seed in args.search_seeds}
            | {f"draw_random_{k}" for k in range(args.random)} | {"random_search"}
            | {f"retrain_{label}_seed{seed}" for label in retrained for seed in args.retrain_seeds}
            | ({f"estimate_supernet{seed}_{label}" for seed in args.search_seeds for label in labels}
               if system.name != "nas-segm" else set())
            | {name for label in random_search for name in (label, label.replace("_seed", "_decode_seed"))})
    parts = {name: part for name, part in state.parts.items() if name in used}
    wall_known = all("wall_s" in part for part in parts.values())  # parts recorded before wall times have none
    for name, part in parts.items():
        kind = ("search" if name.startswith("search_") else "decode" if name.startswith("decode_")
                else "random_search" if name.startswith("random_search_") else
                "random_draw" if name.startswith(("draw_random", "random_search")) else
                "retrain_searched" if name.startswith("retrain_searched") else
                "retrain_random_search" if name.startswith("retrain_random_search") else
                "retrain_random" if name.startswith("retrain_random") else "estimates")
        cpu[kind] += part["cpu_s"]
        wall[kind] += part.get("wall_s", 0.0)
    result = {
        "format": RESULT_FORMAT, "format_version": RESULT_VERSION, "system": system.name, "metric": system.metric,
        "dataset": budget.data[budget.data.index("--dataset") + 1], "budget": args.budget,
        "flags": {"data": list(budget.data), "search": list(budget.search), "retrain": list(budget.retrain)},
        "search_seeds": list(args.search_seeds), "retrain_seeds": list(args.retrain_seeds),
        "random_seed": args.random_seed, "searched_scores": searched_scores, "random_scores": random_scores,
        **({"random_search_scores": random_search_scores} if random_search else {}),
        "failed_retrains": failures,
        "architectures": [{"label": label, "file": str(path), "scores": scores[label],
                           **{key: values[i] for key, values in believed.items()}}
                          for i, (label, path) in enumerate(zip(labels, files))]
        + [{"label": label, "file": str(path), "scores": scores[label]} for label, path in random_search.items()],
        "summary": summarise(searched_scores, random_scores, random_search_scores),
        "kendall_tau": float(np.nanmean(list(taus.values()))) if not all(map(math.isnan, taus.values()))
        else math.nan, "kendall_tau_by_estimate": taus,
        "cpu_seconds": with_total(cpu), **({"wall_seconds": with_total(wall)} if wall_known else {}),
        "commit": git_commit(), "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads per stage",
    }
    return result


def with_total(seconds: dict[str, float]) -> dict[str, float]:
    """Seconds by kind of part, rounded to a tenth, with their total."""
    return {key: round(value, 1) for key, value in seconds.items()} | {"total": round(sum(seconds.values()), 1)}


def write_result(result: dict[str, Any], folder: Path, stem: str) -> None:
    from utils.plots import save_figure

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / f"{stem}.json") as temporary:
        temporary.write_text(json.dumps(result, indent=1) + "\n")
    save_figure(plot_result(result), folder / f"{stem}.png")


def describe(result: dict[str, Any]) -> str:
    stats, metric = result["summary"], result["metric"]
    return "\n".join([
        f"{result['system']} on {result['dataset']} ({result['budget']} budget), {metric}:",
        f"  searched ({len(result['searched_scores'])} seeds): mean {stats['searched_mean']:.4f} +- "
        f"{stats['searched_std']:.4f}  ({', '.join(f'{s:.4f}' for s in result['searched_scores'])})",
        f"  random ({len(result['random_scores'])}): min {stats['random_min']:.4f}, median "
        f"{stats['random_median']:.4f}, 75th percentile {stats['random_p75']:.4f}, max {stats['random_max']:.4f} "
        f"(spread {stats['random_spread']:.4f})",
        f"  the searched mean is at the {stats['searched_mean_percentile']:.1f}th percentile of the random ones",
        *([f"  random search with the search's budget: mean {stats['random_search_mean']:.4f} "
           f"({', '.join(f'{s:.4f}' for s in result['random_search_scores'])}), at the "
           f"{stats['random_search_mean_percentile']:.1f}th percentile of the random architectures"]
          if "random_search_mean" in stats else []),
        f"  Kendall tau, the search's estimate vs the retrained score: {result['kendall_tau']:.3f} "
        f"({', '.join(f'{k} {v:.3f}' for k, v in result['kendall_tau_by_estimate'].items())})",
        f"  retrains that diverged (no score): {', '.join(result['failed_retrains']) or 'none'}",
        "  CPU seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result["cpu_seconds"].items()),
        *(["  wall seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result["wall_seconds"].items())]
          if "wall_seconds" in result else [])])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    parser.add_argument("--budget", default="default", choices=("default", "toy"),
                        help="default: the measured setting (about an hour on 2 CPU cores); toy: the plumbing only")
    parser.add_argument("--search-seeds", type=int, nargs="+", default=[0, 1],
                        help="one search per seed (default: %(default)s)")
    parser.add_argument("--random", type=int, default=8, help="random architectures (default: %(default)s)")
    parser.add_argument("--random-seed", type=int, default=1000,
                        help="seed of the random architectures, apart from the search seeds (default: %(default)s)")
    parser.add_argument("--random-search", action="store_true",
                        help="also run random search with the search's own budget and estimate once per search seed "
                             "and retrain its pick (Sciuto et al.'s random policy beside the search)")
    parser.add_argument("--retrain-seeds", type=int, nargs="+", default=[0],
                        help="every architecture is retrained once per seed (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="OMP threads of every stage (default: %(default)s)")
    parser.add_argument("--out-dir", default=None,
                        help="the runs and the state (default: run/search_vs_random/<system>_<budget>); the same "
                             "command on the same folder continues an interrupted benchmark")
    parser.add_argument("--results", default=None,
                        help="also write search_vs_random_<system>.json and .png into this folder")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.random < 1 or args.threads < 1:
        parser.error("--random and --threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        result = run(args)
    except BenchmarkError as error:
        sys.exit(f"search_vs_random.py: {error}")
    out = output_folder(args)
    write_result(result, out, "result")
    if args.results:
        write_result(result, Path(args.results), f"search_vs_random_{args.system}")
    print(json.dumps(result) if args.json else describe(result))
    return result


if __name__ == "__main__":
    main()
