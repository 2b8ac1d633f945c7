"""The registry of search systems: what the stage scripts need to know of each.

A system registers its genotype class (what its ``architecture.json`` holds), its search (the stage
run: ``train_autodeeplab.py`` runs the Auto-DeepLab one), how a search checkpoint is decoded into an
architecture, and how that architecture is drawn. ``search/__init__.py`` imports every system.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from engine.distributed import DistributedContext, run_in_process_group
from engine.run_dir import RunDir
from engine.trainer import Hook
from modeling.architecture_file import Genotype
from utils.registry import Registry

Search = Callable[[argparse.Namespace, "dict[str, Any] | None", DistributedContext, "list[str] | None",
                   Sequence[Hook]], "RunDir | None"]


@dataclass(frozen=True)
class SearchSystem:
    """``search(args, resumed checkpoint, context, argv, extra hooks)`` runs the search stage and returns rank
    0's run directory; ``decode(checkpoint, path)`` derives the architecture a search checkpoint holds;
    ``draw(genotype)`` pictures it; ``report(checkpoint, top_k)``, where a search weighs many candidates, is
    the table of the best ones that the decode stage prints. ``random_decode(checkpoint, path, candidates, seed)``,
    where the search is one-shot, is the random-search baseline on the same supernet: ``candidates`` uniformly
    drawn architectures of its space (None: the system's default), scored as the search scores its own where
    there are several, the best kept. (A system whose random search runs in its search stage has none.)"""

    name: str
    genotype: type
    search: Search
    decode: Callable[[dict[str, Any], Path], Genotype]
    draw: Callable[[Genotype], Figure]
    report: Callable[[dict[str, Any], int], str] | None = None
    random_decode: Callable[[dict[str, Any], Path, "int | None", int], Genotype] | None = None


SYSTEMS: Registry[SearchSystem] = Registry("search system")


def register_system(system: SearchSystem) -> SearchSystem:
    if getattr(system.genotype, "system", None) != system.name:
        raise ValueError(f"search system {system.name!r}: its genotype class names system "
                         f"{getattr(system.genotype, 'system', None)!r}")
    return SYSTEMS.register(system.name, system)


def get_system(name: str, origin: str) -> SearchSystem:
    return SYSTEMS.lookup(name, origin)


def run_search(name: str, origin: str, args: argparse.Namespace, resumed: dict[str, Any] | None,
               argv: list[str] | None, hooks: Sequence[Hook] = ()) -> Path | None:
    """Run system ``name``'s search in the launcher's process group (if any); rank 0 returns the run directory."""
    search = get_system(name, origin).search
    run_dir = run_in_process_group(args, lambda context: search(args, resumed, context, argv, hooks))
    return run_dir.path if run_dir is not None else None
