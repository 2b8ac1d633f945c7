"""A whole search system's pipeline on the embedded synthetic dataset, sized for a laptop CPU.

search (train_autodeeplab.py, or train_nas_segm.py with ``--system nas-segm``, or train_autopanoptic.py with
``--system autopanoptic``) -> decode (decode_autodeeplab.py) -> retrain and evaluate (train_new_model.py), each through its own ``main`` with the
flags printed, so every step can be rerun by hand. ``--images DIR`` also copies the pictures the README
shows into DIR (Auto-DeepLab).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from types import ModuleType

import decode_autodeeplab
import train_autodeeplab
import train_autopanoptic
import train_nas_segm
import train_new_model
from engine.cli import run_cli
from engine.run_dir import RunDir, new_run_dir, read_jsonl
from modeling.architecture_file import Genotype

# The demo searches a 4-layer version of the space: the full 12-layer supernet takes ~5 s a step
# here, too slow for α and β to move in minutes, and a 12-cell network trained from scratch learns
# nothing in a few hundred steps. The stage scripts default to the paper's 12 layers.
DATA = ["--dataset", "synthetic", "--synthetic_size", "64", "--synthetic_val_samples", "32"]
SEARCH = DATA + ["--synthetic_train_samples", "96", "--num_layers", "4", "--filter_multiplier", "4",
                 "--crop_size", "64", "--batch_size", "4", "--epochs", "10", "--alpha_epoch", "3"]
RETRAIN = DATA + ["--synthetic_train_samples", "256", "--filter_multiplier", "8", "--crop_size", "64",
                  "--batch_size", "8", "--epochs", "40", "--base_lr", "0.02", "--scale_range", "0.8", "1.25"]
# The decoder search: 8 candidates on a randomly initialised encoder. Each trains 4 epochs on cached features,
# then 12 end to end; an epoch here is 18 steps, too short for the original's Polyak average (decay 0.99 per step,
# copied into the weights every epoch), which would hold the weights near their start, so the demo trains without
# it, at higher learning rates.
NAS_SEGM_SEARCH = DATA + ["--synthetic_train_samples", "160", "--num_candidates", "8", "--num-segm-epochs", "4", "12",
                          "--val-every", "4", "4", "--enc-lr", "2e-3", "2e-3", "--dec-lr", "1e-2", "5e-3",
                          "--no-do-polyak"]
NAS_SEGM_RETRAIN = DATA + ["--synthetic_train_samples", "256", "--crop_size", "64", "--batch_size", "8", "--epochs",
                           "40", "--base_lr", "0.05", "--scale_range", "0.8", "1.25"]
# Auto-Panoptic: the scale-down recipe of synthetic_panoptic (10 backbone blocks, 96-pixel images), with 480
# supernet iterations (40 optimiser steps of 12 fair paths), 2 cycles of 12 candidates, and 480 retrain iterations.
PANOPTIC_DATA = ["--dataset", "synthetic_panoptic", "--synthetic_train_samples", "160", "--synthetic_val_samples", "16"]
AUTOPANOPTIC_SEARCH = PANOPTIC_DATA + ["--held-out", "16", "--max-iter", "480", "--warmup-iters", "48",
                                      "--checkpoint-period", "240", "--bn-recalibration-iters", "5"]
AUTOPANOPTIC_RETRAIN = PANOPTIC_DATA + ["--max-iter", "480", "--lr-steps", "320", "420", "--warmup-iters", "30",
                                       "--checkpoint-period", "240", "--eval-every", "2"]
README_PICTURES = {"search/architecture.png": "architecture.png", "search/search_curves.png": "search_curves.png",
                   "search/betas.png": "betas.png", "search/alphas.png": "alphas.png",
                   "retrain/retrain_curves.png": "retrain_curves.png"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=None,
                        help="where the three runs go (default: a new run/synthetic/demo/experiment_<N>)")
    parser.add_argument("--images", default=None, help="also copy the README pictures into this directory")
    parser.add_argument("--system", default="autodeeplab", choices=("autodeeplab", "nas-segm", "autopanoptic"),
                        help="the search system to run (default: %(default)s)")
    args = parser.parse_args()
    out = new_run_dir(args.out_dir, "synthetic", "demo")
    if args.system == "nas-segm":
        return nas_segm_demo(out)
    if args.system == "autopanoptic":
        return autopanoptic_demo(out)
    started = time.time()
    search, retrain = RunDir(out / "search"), RunDir(out / "retrain")
    arch = run_stages(train_autodeeplab, "train_autodeeplab.py", SEARCH, RETRAIN, search, retrain)

    search_best = max(r.get("val_miou", 0.0) for r in read_jsonl(search.metrics))
    final = read_jsonl(retrain.metrics)[-1]
    print(f"\nfound architecture:\n{arch.describe()}")
    print(f"\nsupernet best val mIoU {search_best:.4f}; retrained final val mIoU {final['val_miou']:.4f} "
          f"(pixel accuracy {final['val_pixel_accuracy']:.4f}); {time.time() - started:.0f} s in all")
    outputs = {
        "search run": search.path,
        "search checkpoints": [search.checkpoint, search.best],
        "architecture": [search.architecture, search.architecture_picture],
        "search pictures": [search.picture("alphas"), search.picture("betas"), search.curves("search")],
        "retrain checkpoints": [retrain.checkpoint, retrain.best],
        "retrain curves": retrain.curves("retrain"),
        "TensorBoard logs": f"tensorboard --logdir {out}",
    }
    print("\noutputs:")
    for name, paths in outputs.items():
        print(f"  {name}: " + (", ".join(map(str, paths)) if isinstance(paths, list) else str(paths)))
    if args.images:
        images = Path(args.images)
        images.mkdir(parents=True, exist_ok=True)
        for source, target in README_PICTURES.items():
            shutil.copyfile(out / source, images / target)
        (images / "demo_summary.json").write_text(json.dumps(
            {"network_path": list(arch.network_path), "cell": [[list(p) for p in b] for b in arch.cell],
             "search_best_val_miou": search_best, "retrain_final_val_miou": final["val_miou"],
             "seconds": round(time.time() - started)}, indent=2) + "\n")
        print(f"  README pictures copied to {images}/")


def run_stages(search_script: ModuleType, search_name: str, search_flags: list[str], retrain_flags: list[str],
               search: RunDir, retrain: RunDir) -> Genotype:
    """Search, decode and retrain in ``search`` and ``retrain``, each command printed first; returns the decoded
    architecture."""
    search_args = search_flags + ["--out-dir", str(search)]
    print(f"1/3 search:  python {search_name} " + " ".join(search_args), flush=True)
    search_script.main(search_args)
    decode_args = ["--resume", str(search.checkpoint)]
    print("2/3 decode:  python decode_autodeeplab.py " + " ".join(decode_args), flush=True)
    genotype = decode_autodeeplab.main(decode_args)
    retrain_args = retrain_flags + ["--saved_arch_path", str(search.architecture), "--out-dir", str(retrain)]
    print("3/3 retrain: python train_new_model.py " + " ".join(retrain_args), flush=True)
    train_new_model.main(retrain_args)
    return genotype


def nas_segm_demo(out: Path) -> None:
    """The decoder search: a few candidates, the ranking and the chosen decoder, then its retrain."""
    started = time.time()
    search, retrain = RunDir(out / "search"), RunDir(out / "retrain")
    genotype = run_stages(train_nas_segm, "train_nas_segm.py", NAS_SEGM_SEARCH, NAS_SEGM_RETRAIN, search, retrain)
    final = read_jsonl(retrain.metrics)[-1]
    print(f"\nchosen decoder (best reward {genotype.source['reward']:.4f}, candidate {genotype.source['candidate']}):\n"
          f"{genotype.describe()}")
    print(f"\nretrained final val mIoU {final['val_miou']:.4f} (pixel accuracy {final['val_pixel_accuracy']:.4f}); "
          f"{time.time() - started:.0f} s in all")
    print(f"\noutputs:\n  candidates: {search.candidates}\n  architecture: {search.architecture}, "
          f"{search.architecture_picture}\n  retrain checkpoints: {retrain.checkpoint}, {retrain.best}\n"
          f"  TensorBoard logs: tensorboard --logdir {out}")


def autopanoptic_demo(out: Path) -> None:
    """Auto-Panoptic: the supernet, the greedy path search (its candidates' PQ printed), the chosen network's
    retrain and its PQ."""
    started = time.time()
    search, retrain = RunDir(out / "search"), RunDir(out / "retrain")
    genotype = run_stages(train_autopanoptic, "train_autopanoptic.py", AUTOPANOPTIC_SEARCH, AUTOPANOPTIC_RETRAIN,
                          search, retrain)
    report = json.loads((retrain.report / "metrics.json").read_text())
    best = genotype.source["best_candidate"]
    print(f"\nchosen architecture ({genotype.source['candidates_scored']} candidates scored; the best one's held-out "
          f"PQ {100 * best['pq']:.2f}):\n{genotype.describe()}")
    print(f"\nretrained val PQ {100 * report['pq']:.2f} (things {100 * report['pq_things']:.2f}, stuff "
          f"{100 * report['pq_stuff']:.2f}), semantic mIoU {100 * report['semantic_miou']:.2f}; "
          f"{time.time() - started:.0f} s in all")
    print(f"\noutputs:\n  candidates: {search.path / 'greedy_search.json'}\n  architecture: {search.architecture}, "
          f"{search.architecture_picture}\n  retrain checkpoints: {retrain.checkpoint}, {retrain.best}\n  report: "
          f"{retrain.report}\n  TensorBoard logs: tensorboard --logdir {out}")


if __name__ == "__main__":
    run_cli(main, "demo.py")
