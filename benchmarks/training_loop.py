"""Benchmark of the stage scripts' training loop: seconds per step of a search and of a retrain, end to end.

Runs ``train_autodeeplab.py`` and ``train_new_model.py`` on the synthetic dataset in fresh processes, as a
user would, and prints per stage the median seconds per training step over the epochs after the first
(each epoch's ``epoch_seconds`` from ``metrics.jsonl``, which excludes validation), the first epoch's seconds
beyond that steady rate (what ``--compile`` spends compiling), and the whole run's wall time. The flags are plain
CLI flags, so the same command measures any earlier commit too; flags after ``--`` go to both stages.

    python benchmarks/training_loop.py --epochs 4 --json
    python benchmarks/training_loop.py --epochs 4 --json -- --compile
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH = 4
DATA = ["--dataset", "synthetic", "--synthetic_val_samples", "4", "--synthetic_size", "64", "--crop_size", "64",
        "--batch_size", str(BATCH)]
# script, its flags, and the share of the training images one epoch steps through (the search's trainA is half)
STAGES = {
    "search": ("train_autodeeplab.py", ["--filter_multiplier", "4", "--num_layers", "6", "--alpha_epoch", "0"], 0.5),
    "retrain": ("train_new_model.py", ["--filter_multiplier", "8"], 1.0),
}


def measure(stage: str, epochs: int, threads: int, samples: int, extra: list[str]) -> dict:
    script, flags, share = STAGES[stage]
    args = DATA + ["--synthetic_train_samples", str(samples)] + flags + extra
    steps_per_epoch = int(samples * share) // BATCH
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        env = os.environ | {"OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        started = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / script), *args, "--epochs", str(epochs), "--out-dir",
                        str(run_dir)], cwd=ROOT, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - started
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    per_step = [record["epoch_seconds"] / steps_per_epoch for record in records[1:]]
    step = statistics.median(per_step)
    return {"stage": stage, "flags": " ".join(extra), "epochs": epochs, "samples": samples,
            "steps_per_epoch": steps_per_epoch, "threads": threads, "step_s": round(step, 4),
            "first_epoch_extra_s": round(records[0]["epoch_seconds"] - step * steps_per_epoch, 1),
            "wall_s": round(wall, 1)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per stage (the first is not measured)")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the runs")
    parser.add_argument("--samples", type=int, default=64, help="synthetic training images (default: 64)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("extra", nargs="*", help="flags after -- go to both stage scripts (e.g. -- --compile)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is not measured)")
    if args.samples < 2 * BATCH:
        parser.error(f"--samples must be at least {2 * BATCH} (one batch in each half of the search's split)")
    results = [measure(stage, args.epochs, args.threads, args.samples, args.extra) for stage in args.stages]
    for result in results:
        print(json.dumps(result) if args.json else "  ".join(f"{key} {value}" for key, value in result.items()))
    return results


if __name__ == "__main__":
    main()
