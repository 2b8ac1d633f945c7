"""Stage 2: decode a search checkpoint into ``architecture.json`` and ``architecture.png``.

The network path is the Viterbi path over the normalised β; the cell keeps, per block, the two
incoming edges whose strongest non-`none` op weighs most (paper Sec. 4.3).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from config_utils.decode_args import decode_parser
from modeling.autodeeplab.decoding import decode_architecture
from modeling.autodeeplab.genotype import Architecture
from modeling.autodeeplab.search_space import level_stride
from utils.checkpoint import load_checkpoint
from utils.cli import run_cli
from utils.errors import UserError
from modeling.autodeeplab.plots import plot_architecture
from utils.plots import save_figure

DEFAULT_CHECKPOINT = "checkpoint.pth.tar"


def find_latest_checkpoint(dataset: str, root: str = "run") -> Path:
    """The newest search checkpoint under ``root/dataset`` (a search run keeps architecture_history.jsonl)."""
    candidates = sorted((p for p in Path(root, dataset).glob(f"*/experiment_*/{DEFAULT_CHECKPOINT}")
                         if (p.parent / "architecture_history.jsonl").is_file()),
                        key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise UserError(f"--resume: no search checkpoint given and none found under {root}/{dataset}/; "
                        "run train_autodeeplab.py first or pass --resume RUN/checkpoint.pth.tar")
    return candidates[-1]


def decode_checkpoint(checkpoint: Path, out_dir: Path) -> Architecture:
    state = load_checkpoint(checkpoint, stage="search")
    weights, args = state["model"], state["args"]
    if "alphas" not in weights or "betas" not in weights:
        raise UserError(f"{checkpoint}: has no 'alphas'/'betas' in its model state")
    source = {"checkpoint": str(checkpoint.resolve()), "epoch": state["epoch"], "dataset": args["dataset"],
              "num_classes": args["num_classes"], "best_val_miou": state["best_miou"],
              "search_filter_multiplier": args["filter_multiplier"]}
    arch = decode_architecture(weights["alphas"], weights["betas"], args["filter_multiplier"],
                               args["block_multiplier"], source)
    out_dir.mkdir(parents=True, exist_ok=True)
    arch.save(out_dir / "architecture.json")
    save_figure(plot_architecture(arch), out_dir / "architecture.png")
    return arch


def describe(arch: Architecture) -> str:
    lines = [f"network path (levels): {list(arch.network_path)}",
             f"network path (strides): {[level_stride(k) for k in arch.network_path]}",
             "cell (inputs: 0 = H^{l-2}, 1 = H^{l-1}, 2+i = block i):"]
    lines += [f"  block {b}: " + " + ".join(f"{op}(input {i})" for i, op in block) for b, block in enumerate(arch.cell)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Architecture:
    args: argparse.Namespace = decode_parser().parse_args(argv)
    checkpoint = Path(args.resume) if args.resume else find_latest_checkpoint(args.dataset)
    out_dir = Path(args.out_dir) if args.out_dir else checkpoint.resolve().parent
    arch = decode_checkpoint(checkpoint, out_dir)
    print(describe(arch))
    print(json.dumps({"architecture": str(out_dir / "architecture.json"),
                      "picture": str(out_dir / "architecture.png")}))
    return arch


if __name__ == "__main__":
    run_cli(main, "decode_autodeeplab.py")
