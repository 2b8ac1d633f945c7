"""Arguments of the decoder search (train_nas_segm.py), with the original's flag names (DrSleep/nas-segm-pytorch);
each spelling also works with underscores. Flags that take one value per training stage of a candidate (stage 0:
the decoder on cached encoder features; stage 1: end to end) take two. Unset flags come from the dataset's recipe
(``config_utils.recipes``): the CVPR 2019 settings on PASCAL VOC, the WACV 2020 ones on Cityscapes and CamVid.
"""

from __future__ import annotations

import argparse

from config_utils.common import add_device_flag, add_resume_flag
from dataloaders import add_dataset_arguments
from utils.flags import Parser, add_flag, non_negative_int, positive_float, positive_int


def nas_segm_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="train_nas_segm.py",
                    description="Decoder architecture search with an RL controller (Nekrasov et al., CVPR 2019 / "
                                "WACV 2020): an LSTM samples decoders for a MobileNetV2 encoder, each is trained "
                                "briefly and scored on a held-out part of the training set, and the score rewards "
                                "the controller.")
    parser.add_config_flag()
    add_dataset_arguments(parser)
    run = parser.add_argument_group("run")
    add_flag(run, "space", default=None, choices=("cvpr", "wacv"), locked=True,
             help="cvpr: cells with auxiliary heads on 4 encoder features; wacv: templates on 2 (default: the "
                  "dataset's recipe: cvpr on pascal, wacv elsewhere)")
    add_flag(run, "agent", "--ctrl-agent", default="ppo", choices=("ppo", "reinforce", "random"), locked=True,
             help="how the controller learns from rewards (default: %(default)s, as the original); random: random "
                  "search, every candidate drawn uniformly from the space, the baseline the others must beat")
    add_flag(run, "num_candidates", type=positive_int, default=None,
             help="candidates to sample and train (default: the recipe's; the original ran until stopped). A "
                  "finished search continues with --resume and a larger value")
    add_flag(run, "parallel_candidates", type=positive_int, default=1, locked=True,
             help="candidates sampled per controller update, trained side by side by the processes of a torchrun "
                  "launch (default: 1, the original's one at a time). The candidates sampled depend on this and "
                  "on --seed only, never on the number of processes")
    add_flag(run, "max_failures", type=positive_int, default=5,
             help="stop the search after this many failed candidates in a row (out of memory, non-finite loss)")
    add_flag(run, "seed", "--random-seed", type=int, default=9314, locked=True,
             help="seed of the split, the sampled candidates and their training (default: the original's)")
    add_flag(run, "workers", "--num-workers", type=non_negative_int, default=0, help="DataLoader worker processes")
    add_flag(run, "out-dir", default=None,
             help="run directory (default: a new run/<dataset>/nas_segm_search/experiment_<N>)")
    add_flag(run, "checkname", default="nas_segm_search", help="experiment name used in the default run directory")
    add_resume_flag(run, "search")
    add_device_flag(run)
    add_flag(run, "local_rank", type=int, default=None, help="set by 'python -m torch.distributed.launch'")
    add_flag(run, "amp", action="store_true", help="mixed precision with torch.autocast while candidates train")
    add_flag(run, "amp_dtype", default="auto", choices=("auto", "bf16", "fp16"),
             help="autocast dtype: auto = fp16 with loss scaling on CUDA, bf16 on CPU")

    controller = parser.add_argument_group("controller")
    add_flag(controller, "ctrl-lr", type=positive_float, default=1e-4, locked=True, help="controller Adam learning rate")
    add_flag(controller, "lstm-hidden-size", type=positive_int, default=100, locked=True,
             help="hidden units of the controller's two-layer LSTM")
    add_flag(controller, "ctrl-baseline-decay", type=float, default=0.95, locked=True,
             help="decay of the reward baseline's moving average")

    data = parser.add_argument_group("candidate data")
    add_flag(data, "meta-train-prct", type=int, default=90, locked=True,
             help="percentage of the training split that trains candidates; the rest scores them (the official "
                  "validation split is never used by the search)")
    add_flag(data, "n-task0", type=positive_int, default=None, locked=True,
             help="training images whose encoder features are cached once for stage 0 (default: the recipe's)")
    add_flag(data, "stage0-cache", action=argparse.BooleanOptionalAction, default=True, locked=True,
             help="compute the encoder's features of the stage-0 images once per search and keep them on the device "
                  "(the original's; about 4.3 GB for VOC with distillation). --no-stage0-cache encodes them every "
                  "step instead, with fresh augmentations: less memory, slower candidates")
    add_flag(data, "batch-size", type=positive_int, nargs=2, default=None, locked=True, metavar=("S0", "S1"),
             help="batch size per stage")
    add_flag(data, "crop-size", type=positive_int, nargs=2, default=None, locked=True, metavar=("S0", "S1"),
             help="training crop per stage")
    add_flag(data, "resize-side", type=positive_int, nargs=2, default=None, locked=True, metavar=("S0", "S1"),
             help="images are scaled by a random factor in [0.7, 1.4], but never below this shorter side (or above "
                  "this longer side with --resize-longer-side)")
    add_flag(data, "resize-longer-side", action=argparse.BooleanOptionalAction, default=None, locked=True,
             help="--resize-side bounds the longer side (Cityscapes in the WACV search)")
    add_flag(data, "val-resize-side", type=positive_int, default=None, locked=True,
             help="scoring: the shorter (or longer) side is brought to at least (at most) this")
    add_flag(data, "val-crop-size", type=positive_int, default=None, locked=True, help="scoring: the central crop")
    add_flag(data, "val-batch-size", type=positive_int, default=None, help="scoring batch size")
    add_flag(data, "val-omit-classes", type=non_negative_int, nargs="*", default=None, locked=True,
             help="classes left out of the reward (the original omits VOC's background, 0)")

    training = parser.add_argument_group("candidate training")
    add_flag(training, "num-segm-epochs", type=positive_int, nargs=2, default=None, locked=True, metavar=("S0", "S1"),
             help="epochs per stage")
    add_flag(training, "val-every", type=positive_int, nargs=2, default=None, locked=True, metavar=("S0", "S1"),
             help="score the candidate every N epochs of each stage (must divide its epochs); a poor score stops it "
                  "(the original's running-max rule)")
    add_flag(training, "enc-optim", default=None, choices=("sgd", "adam"), locked=True,
             help="encoder optimiser (stage 1)")
    add_flag(training, "dec-optim", default=None, choices=("sgd", "adam"), locked=True, help="decoder optimiser")
    for part in ("enc", "dec"):
        add_flag(training, f"{part}-lr", type=positive_float, nargs=2, default=None, locked=True,
                 metavar=("S0", "S1"), help=f"{part}oder learning rate per stage")
        add_flag(training, f"{part}-mom", type=float, nargs=2, default=None, locked=True, metavar=("S0", "S1"),
                 help=f"{part}oder SGD momentum per stage")
        add_flag(training, f"{part}-wd", type=float, nargs=2, default=None, locked=True, metavar=("S0", "S1"),
                 help=f"{part}oder weight decay (L2) per stage")
        add_flag(training, f"{part}-grad-clip", type=float, default=3.0, locked=True,
                 help=f"clip the {part}oder's gradient norm to this (0 disables)")
    add_flag(training, "dec-aux-weight", type=float, default=None, locked=True,
             help="weight of each auxiliary head's loss (cvpr; default: the recipe's)")
    add_flag(training, "do-polyak", action=argparse.BooleanOptionalAction, default=True, locked=True,
             help="Polyak-average the trained weights (decay 0.9 in stage 0, 0.99 in stage 1)")
    add_flag(training, "do-kd", action=argparse.BooleanOptionalAction, default=False, locked=True,
             help="distil from --kd-teacher in stage 0 (the CVPR search distilled from a RefineNet-152)")
    add_flag(training, "kd-teacher", default=None, metavar="CHECKPOINT", locked=True,
             help="a retrained network of this project (RUN/model_best.pth.tar) whose logits stage 0 distils")
    add_flag(training, "kd-coeff", type=float, default=0.3, locked=True, help="weight of the distillation loss")

    decoder = parser.add_argument_group("candidate networks")
    add_flag(decoder, "agg-cell-size", type=positive_int, default=48, locked=True,
             help="channels inside the decoder while searching (the released networks use 64)")
    add_flag(decoder, "sep-repeats", type=positive_int, default=1, locked=True,
             help="separable convs repeated this often while searching (the released networks use 2)")
    add_flag(decoder, "aux-cell", action=argparse.BooleanOptionalAction, default=None, locked=True,
             help="cvpr: another instance of the cell before each auxiliary classifier (default: the recipe's)")
    add_flag(decoder, "encoder-weights", default=None, metavar="FILE", locked=True,
             help="a local MobileNetV2 state dict to start every candidate's encoder from (ours, or a torchvision "
                  "ImageNet file); without it the encoder starts from a seeded random initialisation")
    return parser
