"""Trained networks back from their checkpoints, for evaluation, inference and export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from modeling.genotypes import Architecture
from modeling.model_retrain import AutoDeepLab
from utils.checkpoint import load_checkpoint
from utils.errors import UserError


def load_trained_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """The network a retrain checkpoint holds (``model_best.pth.tar`` or ``checkpoint.pth.tar``), in
    eval mode on ``device``, and the checkpoint itself."""
    checkpoint = load_checkpoint(path, stage="retrain")
    args = checkpoint["args"]
    arch = Architecture.from_json_dict(checkpoint["architecture"], f"{path} (architecture)")
    model = AutoDeepLab(arch, args["num_classes"], args["filter_multiplier"])
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[1:2] or [str(error)]
        raise UserError(f"{path}: the weights do not fit the network its arguments describe ({first[0].strip()})") \
            from None
    return model.to(device).eval(), checkpoint


def checkpoint_classes(checkpoint: dict) -> tuple[list[str], np.ndarray]:
    """Class names and colours saved with a trained network, so outputs need no dataset on disk."""
    classes = checkpoint.get("classes")
    if classes is None:
        raise UserError("the checkpoint holds no class names and colours (written before they were saved); "
                        "retrain it with this version")
    return list(classes["names"]), np.asarray(classes["palette"], dtype=np.uint8)
