"""Benchmark of the decoder search: candidates per hour with and without the stage-0 feature cache.

Runs ``train_nas_segm.py`` as a user would, in one fresh process per setting, once with the stage-0 cache
(stage 0 trains the decoder on encoder features computed once per run) and once with ``--no-stage0-cache``
(the encoder runs on every stage-0 step). Prints per setting:

- ``candidates_per_hour``: 3600 x candidates / the candidates' own seconds (``candidates.jsonl``), the rate
  a long search settles at;
- ``outside_s``: the run's wall time minus the candidates' seconds: imports, data and building the cache
  (once per run), and per candidate the controller's update (PPO: 100 Adam steps), checkpoint and plots;
- ``cache_mib``: the cache's memory (the checkpoint's ``cache_bytes``; 0 without the cache);
- ``peak_rss_mib``: the run's peak resident memory (``wait4``'s ``ru_maxrss``);
- ``reached_stage_1``: how many candidates went on to stage 1, since early termination, which draws
  differently once stage 0's images differ, would otherwise make the rates incomparable.

Flags after ``--`` go to the search unchanged (any dataset and recipe); the default is the embedded
synthetic dataset's recipe at 64 training images:

    python benchmarks/candidate_throughput.py --candidates 4 --threads 2
    python benchmarks/candidate_throughput.py -- --dataset cityscapes --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.checkpoint import load_checkpoint  # noqa: E402
from engine.run_dir import RunDir, read_jsonl  # noqa: E402

DEFAULT_SEARCH = ["--dataset", "synthetic", "--synthetic_train_samples", "64", "--synthetic_val_samples", "4"]
SETTINGS = {"cached": [], "uncached": ["--no-stage0-cache"]}


def run_search(flags: list[str], threads: int) -> tuple[float, float]:
    """Runs the search to completion in a fresh process; its wall seconds and peak RSS (MiB)."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(ROOT / "train_nas_segm.py"), *flags], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"candidate_throughput.py: the search failed (exit {process.returncode}):\n{stderr[-2000:]}")
    peak_kib = usage.ru_maxrss / 1024 if sys.platform == "darwin" else usage.ru_maxrss
    return wall, peak_kib / 1024


def measure(setting: str, search_flags: list[str], candidates: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        run_dir = RunDir(Path(folder) / "run")
        flags = search_flags + SETTINGS[setting] + ["--num_candidates", str(candidates), "--out-dir",
                                                    str(run_dir.path)]
        wall, peak_mib = run_search(flags, threads)
        records = read_jsonl(run_dir.candidates)
        cache_bytes = load_checkpoint(run_dir.checkpoint)["cache_bytes"]
    seconds = sum(record["seconds"] for record in records)
    return {"setting": setting, "candidates": len(records), "threads": threads,
            "candidates_per_hour": round(3600 * len(records) / seconds, 1),
            "candidate_s": round(seconds / len(records), 2), "outside_s": round(wall - seconds, 1),
            "cache_mib": round(cache_bytes / 2**20, 1), "peak_rss_mib": round(peak_mib),
            "reached_stage_1": sum(record.get("stage") == 1 for record in records)}


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     usage="%(prog)s [options] [-- search flags]")
    parser.add_argument("--candidates", type=int, default=4, help="candidates per setting (default: 4)")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the runs (default: 2)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv[:split])
    if args.candidates < 1:
        parser.error("--candidates must be at least 1")
    search_flags = argv[split + 1:] or DEFAULT_SEARCH
    results = [measure(setting, search_flags, args.candidates, args.threads) for setting in args.settings]
    for result in results:
        print(json.dumps(result) if args.json else "  ".join(f"{key} {value}" for key, value in result.items()))
    return results


if __name__ == "__main__":
    main()
