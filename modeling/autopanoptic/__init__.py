"""Auto-Panoptic (Wu et al., NeurIPS 2020): its search space and network, registered as the ``autopanoptic``
genotype and model, with its ``--summary`` table."""

from __future__ import annotations

from typing import Any

import torch

from modeling.autopanoptic.costs import summary
from modeling.autopanoptic.genotype import PanopticGenotype
from modeling.autopanoptic.network import AutoPanoptic, PanopticSizes, build
from modeling.registry import ModelArgs, ModelSpec, register_model
from utils.errors import UserError


def _no_export(args: dict[str, Any], genotype: PanopticGenotype | None) -> dict[str, str]:
    raise UserError("export: an Auto-Panoptic network (Mask R-CNN with a semantic branch) has no ONNX export; "
                    "use inference.py for its panoptic PNGs")


def _summary(args: ModelArgs, genotype: PanopticGenotype, input_size: tuple[int, int]) -> str:
    """The cost table of the network ``args`` describe, built on the meta device (no weights are drawn)."""
    with torch.device("meta"):
        model = AutoPanoptic(args["thing_classes"], args["stuff_classes"], genotype, PanopticSizes.from_args(args))
    return summary(model, input_size)


register_model(ModelSpec(
    name=PanopticGenotype.system,
    build=build,
    describe=lambda args, genotype: (f"Auto-Panoptic network, {sum(genotype.stage_repeats)} backbone blocks at widths "
                                     f"{list(args['widths'])}"),
    export_metadata=_no_export,
    genotype_system=PanopticGenotype.system,
    summary=_summary,
    flags=frozenset({"backbone_weights"}),
    task="panoptic",
))
