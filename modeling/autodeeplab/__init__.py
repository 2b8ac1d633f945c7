"""Auto-DeepLab (Liu et al., CVPR 2019): the cell and network-level search space, the supernet, decoding and
the retrained network, registered as the ``autodeeplab`` model (built from ``autodeeplab`` architecture files).
"""

from __future__ import annotations

import json

from modeling.architecture_file import architecture_to_json
from modeling.autodeeplab.costs import summary
from modeling.autodeeplab.genotype import Architecture
from modeling.autodeeplab.model_retrain import AutoDeepLab
from modeling.registry import ModelArgs, ModelSpec, register_model


def _build(args: ModelArgs, arch: Architecture, backbone_weights: str | None) -> AutoDeepLab:
    return AutoDeepLab(arch, args["num_classes"], args["filter_multiplier"])


register_model(ModelSpec(
    name=Architecture.system,
    build=_build,
    describe=lambda args, arch: f"path {list(arch.network_path)}, F={args['filter_multiplier']}",
    export_metadata=lambda args, arch: {"model": Architecture.system,
                                        "architecture": json.dumps(architecture_to_json(arch)),
                                        "filter_multiplier": str(args["filter_multiplier"])},
    genotype_system=Architecture.system,
    summary=lambda args, arch, size: summary(AutoDeepLab(arch, args["num_classes"], args["filter_multiplier"]), size),
    flags=frozenset({"filter_multiplier", "drop_path_prob"}),
))
