"""The registry of trainable networks (timm's ``register_model``, detectron2's ``META_ARCH_REGISTRY``).

Each entry says how to build the network from a retrain run's arguments (and, for a searched network,
the genotype of its architecture file), how to describe it in one line, and what its ONNX export
records about it. ``modeling/__init__.py`` imports every module that registers one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from engine.checkpoint import load_checkpoint, load_model_state
from modeling.architecture_file import Genotype, architecture_from_json
from utils.errors import UserError
from utils.registry import Registry

ModelArgs = dict[str, Any]  # a retrain run's arguments (args.json / the checkpoint's "args")
ARCHITECTURE_FLAG = "saved_arch_path"  # the architecture file every searched network is built from
SUMMARY_FLAGS = frozenset({"summary", "input_size"})  # --summary and the input size of its Multi-Adds


@dataclass(frozen=True)
class ModelSpec:
    """How to build, describe and export one kind of network.

    ``genotype_system`` names the search system whose architecture files the network is built from (None:
    a hand-designed network). ``build(args, genotype, backbone_weights)`` takes a local weights file for the
    pretrained part, if the network has one (only when training starts; a checkpoint's weights replace it).
    ``flags`` names the retrain flags (destinations) that shape this network and no other, such as
    ``filter_multiplier``; with the architecture file of a searched network and ``--summary``'s, they are the
    flags it ``reads``, and ``refuse_unread_flags`` refuses the other networks' flags instead of ignoring them.
    ``task`` is what it predicts, and so how it is retrained, validated, evaluated and run: ``semantic`` (class
    scores per pixel) or ``panoptic`` (instances and stuff segments).
    """

    name: str
    build: Callable[[ModelArgs, Genotype | None, str | None], nn.Module]
    describe: Callable[[ModelArgs, Genotype | None], str]
    export_metadata: Callable[[ModelArgs, Genotype | None], dict[str, str]]
    genotype_system: str | None = None
    summary: Callable[[ModelArgs, Genotype, tuple[int, int]], str] | None = None  # the --summary table
    flags: frozenset[str] = frozenset()
    task: str = "semantic"

    def reads(self) -> frozenset[str]:
        """Every network flag this network reads: its own ``flags``, the architecture file of a searched one, and
        ``--summary`` with its ``--input_size`` where it has that table."""
        return (self.flags | ({ARCHITECTURE_FLAG} if self.genotype_system is not None else set())
                | (SUMMARY_FLAGS if self.summary is not None else set()))

    def chosen_by(self) -> str:
        """How a user chooses this network: by an architecture file of its system, or by ``--model``."""
        return f"{self.genotype_system} architectures" if self.genotype_system is not None else f"--model {self.name}"

MODELS: Registry[ModelSpec] = Registry("model")
SEARCHED_MODEL = "searched"  # --model's name for the network registered for the architecture file's search system


def register_model(spec: ModelSpec) -> ModelSpec:
    return MODELS.register(spec.name, spec)


def get_model(name: str) -> ModelSpec:
    return MODELS.lookup(name, "--model")


def model_for_system(system: str) -> ModelSpec:
    """The network that retrains architectures of the search system ``system``."""
    for spec in MODELS.values():
        if spec.genotype_system == system:
            return spec
    raise UserError(f"no network is registered for {system} architectures")


def refuse_unread_flags(spec: ModelSpec, chosen: set[str]) -> None:
    """Refuse a flag the user chose (``chosen``: destinations) that shapes some registered network but not ``spec``:
    ignored, it would train another network than asked for. One line naming the flag, the network's system and the
    networks that do read it."""
    network_flags = frozenset().union(*(other.reads() for other in MODELS.values()))
    unread = sorted((chosen & network_flags) - spec.reads())
    if unread:
        flag = unread[0]
        readers = ", ".join(other.chosen_by() for other in MODELS.values() if flag in other.reads())
        raise UserError(f"--{flag}: does not apply to {spec.chosen_by()}; it applies to {readers}")


def checkpoint_model(checkpoint: dict[str, Any], source: str) -> tuple[ModelSpec, Genotype | None]:
    """The kind of network a retrain checkpoint holds, and the genotype it was built from (if searched)."""
    spec = get_model(checkpoint["args"].get("model") or "autodeeplab")
    architecture = checkpoint.get("architecture")
    genotype = architecture_from_json(architecture, f"{source} (architecture)") if architecture is not None else None
    if (genotype.system if genotype is not None else None) != spec.genotype_system:
        raise UserError(f"{source}: its architecture does not match its model {spec.name!r}")
    return spec, genotype


class TrainedModel(NamedTuple):
    """A retrained network in eval mode, the checkpoint it came from, and its kind (``spec.task`` says whether it
    segments semantically or panoptically)."""

    model: nn.Module
    checkpoint: dict[str, Any]
    spec: ModelSpec


def load_trained_model(path: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
    """The network a retrain checkpoint holds (``model_best.pth.tar`` or ``checkpoint.pth.tar``), in
    eval mode on ``device``, with the checkpoint itself and the network's kind."""
    checkpoint = load_checkpoint(path, stage="retrain")
    spec, genotype = checkpoint_model(checkpoint, str(path))
    model = spec.build(checkpoint["args"], genotype, None)
    load_model_state(model, checkpoint["model"], str(path))
    return TrainedModel(model.to(device).eval(), checkpoint, spec)


def checkpoint_classes(checkpoint: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """Class names and colours saved with a trained network, so outputs need no dataset on disk."""
    classes = checkpoint.get("classes")
    if classes is None:
        raise UserError("the checkpoint holds no class names and colours (written before they were saved); "
                        "retrain it with this version")
    return list(classes["names"]), np.asarray(classes["palette"], dtype=np.uint8)
