"""The networks the retrain stage trains, built from their arguments, and back from their checkpoints.

One registry of model kinds: ``autodeeplab`` (a searched architecture, Auto-DeepLab-S/M/L at F=20/32/48)
and ``deeplabv3plus`` (the ResNet baseline every searched architecture is compared with).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modeling.deeplabv3plus import DeepLabV3Plus
from modeling.autodeeplab.genotype import Architecture
from modeling.autodeeplab.model_retrain import AutoDeepLab
from utils.checkpoint import load_checkpoint, load_model_state
from utils.errors import UserError

MODELS = ("autodeeplab", "deeplabv3plus")


def build_network(args: dict[str, Any], arch: Architecture | None, backbone_weights: str | None = None) -> nn.Module:
    """The network ``args`` (a retrain run's arguments) describe; ``arch`` for autodeeplab, else None.

    ``backbone_weights`` (a local file) initialises the baseline's ResNet; a checkpoint's own weights
    replace it when loading, so it is only given when training starts.
    """
    if args.get("model", "autodeeplab") == "autodeeplab":
        return AutoDeepLab(arch, args["num_classes"], args["filter_multiplier"])
    return DeepLabV3Plus(args["num_classes"], args["backbone"], args["output_stride"], backbone_weights)


def load_trained_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """The network a retrain checkpoint holds (``model_best.pth.tar`` or ``checkpoint.pth.tar``), in
    eval mode on ``device``, and the checkpoint itself."""
    checkpoint = load_checkpoint(path, stage="retrain")
    arch = (Architecture.from_json_dict(checkpoint["architecture"], f"{path} (architecture)")
            if checkpoint.get("architecture") is not None else None)
    model = build_network(checkpoint["args"], arch)
    load_model_state(model, checkpoint["model"], str(path))
    return model.to(device).eval(), checkpoint


def checkpoint_classes(checkpoint: dict) -> tuple[list[str], np.ndarray]:
    """Class names and colours saved with a trained network, so outputs need no dataset on disk."""
    classes = checkpoint.get("classes")
    if classes is None:
        raise UserError("the checkpoint holds no class names and colours (written before they were saved); "
                        "retrain it with this version")
    return list(classes["names"]), np.asarray(classes["palette"], dtype=np.uint8)
