"""Arguments of the retrain stage (train_new_model.py)."""

from __future__ import annotations

import argparse

from config_utils.common import add_training_flags
from dataloaders import add_dataset_arguments
from engine.lr_schedule import SCHEDULES
from modeling.autodeeplab.genotype import PAPER_ARCHITECTURE_PATH
from modeling.deeplabv3plus import BACKBONES, OUTPUT_STRIDES
from modeling.registry import MODELS, SEARCHED_MODEL
from utils.flags import Parser, add_flag, non_negative_int, positive_int


def retrain_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="train_new_model.py",
                    description="Train a searched architecture (architecture.json) from scratch as a "
                                "segmentation network and evaluate it.")
    parser.add_config_flag()
    add_dataset_arguments(parser)
    add_training_flags(parser, experiment="retrain")
    add_flag(parser, "model", default=SEARCHED_MODEL, choices=[SEARCHED_MODEL, *sorted(MODELS)], locked=True,
             help=f"{SEARCHED_MODEL} (the network that --saved_arch_path's search system registers; a system's own "
                  "name, such as autodeeplab, works too) or deeplabv3plus (the ResNet baseline) (default: %(default)s)")
    baseline = parser.add_argument_group("deeplabv3plus baseline")
    add_flag(baseline, "backbone", default="resnet101", choices=sorted(BACKBONES), locked=True,
             help="torchvision ResNet backbone (default: %(default)s)")
    add_flag(baseline, "output_stride", type=int, default=16, choices=OUTPUT_STRIDES, locked=True,
             help="backbone output stride, by dilating its last stage(s) (default: %(default)s)")
    add_flag(baseline, "backbone_weights", "--encoder-weights", "--encoder_weights", default=None, metavar="PATH",
             help="a local state dict to start the backbone from: a torchvision ResNet for deeplabv3plus, a "
                  "MobileNetV2 (ours or torchvision's) for a nas-segm decoder (nothing is ever downloaded)")
    add_flag(parser, "saved_arch_path", default=str(PAPER_ARCHITECTURE_PATH), locked=True,
             help="architecture.json, or a run directory holding one (default: the paper's architecture)")
    add_flag(parser, "filter_multiplier", type=positive_int, default=20, locked=True,
             help="F of the retrained network: 20/32/48 give Auto-DeepLab-S/M/L (default: %(default)s)")
    add_flag(parser, "scale_range", type=float, nargs=2, default=[0.5, 2.0], metavar=("MIN", "MAX"),
             help="random scale augmentation range before cropping (default: 0.5 2.0)")
    add_flag(parser, "summary", action="store_true",
             help="print parameters and Multi-Adds per component and exit (no data needed)")
    add_flag(parser, "input_size", type=positive_int, nargs=2, default=[1025, 2049], metavar=("H", "W"),
             help="input size for the --summary Multi-Adds (default: 1025 2049, the paper's)")
    opt = parser.add_argument_group("optimisation")
    add_flag(opt, "base_lr", "--lr", type=float, default=0.05, help="initial learning rate (the paper's 0.05)")
    add_flag(opt, "lr_scheduler", default="poly", choices=SCHEDULES,
             help="per-iteration schedule: poly (the paper's), step or cosine (default: %(default)s)")
    add_flag(opt, "poly_power", type=float, default=0.9)
    add_flag(opt, "lr_step", type=positive_int, default=30, help="step schedule: epochs between decays")
    add_flag(opt, "lr_gamma", type=float, default=0.1, help="step schedule: decay factor")
    add_flag(opt, "warmup_iters", type=non_negative_int, default=0,
             help="linear warm-up over this many iterations (default: none)")
    add_flag(opt, "warmup_start", type=float, default=0.1, help="learning-rate factor at the first warm-up iteration")
    add_flag(opt, "drop_path_prob", type=float, default=0.0,
             help="scheduled drop-path: final probability, reached linearly by the end of training (the paper's best "
                  "results use it; default: off)")
    add_flag(opt, "loss", default="ce", choices=("ce", "ohem"),
             help="cross-entropy, or OHEM cross-entropy over the hard pixels (default: %(default)s)")
    add_flag(opt, "ohem_thresh", type=float, default=0.7,
             help="OHEM: keep pixels whose true-class probability is at most this")
    add_flag(opt, "ohem_min_kept", type=positive_int, default=100_000, help="OHEM: keep at least this many pixels")
    add_flag(opt, "momentum", type=float, default=0.9)
    add_flag(opt, "weight_decay", type=float, default=4e-5, help="the official network's weight decay")
    return parser
