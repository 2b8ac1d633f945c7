"""Retraining a network from scratch, by what it predicts (``modeling.registry.ModelSpec.task``): the semantic
retrain (``semantic``: Auto-DeepLab and decoder-search architectures, the DeepLabV3+ baseline) and Auto-Panoptic's
PQ retrain (``panoptic``). ``train_new_model.py`` chooses between them."""

from __future__ import annotations

import argparse

from modeling.architecture_file import Genotype, load_architecture
from modeling.registry import SEARCHED_MODEL, ModelSpec, checkpoint_model, get_model, model_for_system


def network(args: argparse.Namespace, resumed: dict | None) -> tuple[ModelSpec, Genotype | None]:
    """The network to train and the architecture it is built from: the resumed checkpoint's, else ``--model``'s,
    where ``searched`` (or any searched system's name) is the network registered for the architecture file's
    system; ``args.model`` becomes that network's name."""
    if resumed is not None:
        return checkpoint_model(resumed, args.resume)
    if args.model != SEARCHED_MODEL and get_model(args.model).genotype_system is None:
        return get_model(args.model), None
    genotype = load_architecture(args.saved_arch_path)
    spec = model_for_system(genotype.system)
    args.model = spec.name
    return spec, genotype
