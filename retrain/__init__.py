"""Retraining a network from scratch, by what it predicts (``modeling.registry.ModelSpec.task``): the semantic
retrain (``semantic``: Auto-DeepLab and decoder-search architectures, the DeepLabV3+ baseline) and Auto-Panoptic's
PQ retrain (``panoptic``). ``train_new_model.py`` chooses between them."""

from __future__ import annotations

import argparse

from modeling.architecture_file import Genotype, load_architecture
from modeling.registry import ModelSpec, checkpoint_model, get_model, model_for_system


def network(args: argparse.Namespace, resumed: dict | None) -> tuple[ModelSpec, Genotype | None]:
    """The network to train and the architecture it is built from: the resumed checkpoint's, else ``--model``'s,
    where a searched model is the one registered for the architecture file's system."""
    if resumed is not None:
        return checkpoint_model(resumed, args.resume)
    spec = get_model(args.model)
    if spec.genotype_system is None:
        return spec, None
    genotype = load_architecture(args.saved_arch_path)
    spec = model_for_system(genotype.system)
    args.model = spec.name
    return spec, genotype
