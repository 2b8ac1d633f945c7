"""Stage 2: decode a search checkpoint into ``architecture.json`` and ``architecture.png``.

The checkpoint names its search system, whose registered decoder derives the architecture
(``search.registry``). For Auto-DeepLab the network path is the Viterbi path over the normalised β,
and the cell keeps, per block, the two incoming edges whose strongest non-`none` op weighs most
(paper Sec. 4.3). For the nas-segm decoder search it is the best-scored candidate (each distinct decoder
counted once), and the best ones are printed as a table. For Auto-Panoptic it is each layer's best op on the
path-priority greedy search's scoreboard (``greedy_search.json``, filled by the search stage); what the search stage
did not score (``--no-greedy-search``, or a search stopped during it) is scored here first, on one process.
``--strategy random`` writes the random-search baseline of the same space instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from config_utils.decode_args import decode_parser
from engine.checkpoint import load_checkpoint
from engine.cli import run_cli
from engine.run_dir import RunDir
from modeling.architecture_file import Genotype, save_architecture
from search.registry import get_system
from utils.errors import UserError
from utils.output_path import check_output_path
from utils.plots import save_figure


def find_latest_checkpoint(dataset: str, root: str = "run") -> Path:
    """The newest search checkpoint of any system under ``root/dataset``."""
    run = RunDir.latest(root, dataset, None, "search")
    if run is None:
        raise UserError(f"--resume: no search checkpoint given and none found under {root}/{dataset}/; run a search "
                        "first (train_autodeeplab.py, train_nas_segm.py or train_autopanoptic.py) or pass --resume "
                        "RUN/checkpoint.pth.tar")
    return run.checkpoint


def decode_checkpoint(checkpoint: Path, out_dir: Path, top_k: int = 10, strategy: str = "search",
                      random_candidates: int | None = None, seed: int = 0) -> Genotype:
    """Decode ``checkpoint`` with its own system's rule (printing its ranking of candidates, if it has one), or with
    ``strategy="random"`` draw the random-search baseline of its space; write the architecture file and its
    picture."""
    state = load_checkpoint(checkpoint, stage="search")
    system = get_system(state["system"], str(checkpoint))
    if strategy == "random":
        if system.random_decode is None:
            raise UserError(f"--strategy random: a {system.name} search draws its random candidates in the search "
                            "stage (train_nas_segm.py --agent random); decode that search as any other")
        genotype = system.random_decode(state, checkpoint, random_candidates, seed)
    else:
        if system.report is not None:
            print(system.report(state, top_k))
        genotype = system.decode(state, checkpoint)
    out = RunDir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_architecture(genotype, out.architecture)
    save_figure(system.draw(genotype), out.architecture_picture)
    return genotype


def main(argv: list[str] | None = None) -> Genotype:
    args: argparse.Namespace = decode_parser().parse_args(argv)
    checkpoint = Path(args.resume) if args.resume else find_latest_checkpoint(args.dataset)
    if args.random_candidates is not None and args.strategy != "random":
        raise UserError("--random-candidates: only with --strategy random")
    out_dir = (Path(args.out_dir) if args.out_dir else checkpoint.resolve().parent if args.strategy == "search"
               else checkpoint.resolve().parent / f"random_seed{args.seed}")
    check_output_path("--out-dir", out_dir)
    genotype = decode_checkpoint(checkpoint, out_dir, args.top_k, args.strategy, args.random_candidates, args.seed)
    print(genotype.describe())
    print(json.dumps({"architecture": str(RunDir(out_dir).architecture),
                      "picture": str(RunDir(out_dir).architecture_picture)}))
    return genotype


if __name__ == "__main__":
    run_cli(main, "decode_autodeeplab.py")
