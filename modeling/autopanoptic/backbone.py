"""Auto-Panoptic's backbone: a ShuffleNetV2 body whose every block chooses among 4 ops (DetNAS's space).

A block of stride 2 maps the whole input through its main branch and a depthwise-separable projection and
concatenates the two; a block of stride 1 shuffles the channels, keeps one half and maps the other half
through its main branch (the original's ShuffleNetV2/Xception choice blocks, as DetNAS builds them). The main branch is ShuffleNetV2's
(1×1, depthwise k×k, 1×1, k = 3, 5, 7) or Xception's (three separable 3×3 units). The supernet keeps
all 4 blocks of every layer and runs the one a path names; a searched network keeps only its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from modeling.autopanoptic.genotype import BACKBONE_OPS, PAPER_STAGE_REPEATS
from modeling.autopanoptic.ops import Choice

# stem, then the 4 stages' output channels
SEARCH_WIDTHS = (48, 96, 240, 480, 960)  # the supernet's ("1.3G", DetNAS's naming by ImageNet Multi-Adds)
RETRAIN_WIDTHS = (72, 172, 432, 864, 1728)  # the searched network's ("3.8G")
SUPERNET_BN_MOMENTUM, RETRAIN_BN_MOMENTUM = 0.1, 0.01


def channel_shuffle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's ``channel_shuffle1``: view the channels as 2 groups, interleave them, and split the
    result in halves (channels 0..7 give [0, 4, 1, 5] and [2, 6, 3, 7])."""
    batch, channels, height, width = x.shape
    shuffled = x.view(batch, 2, channels // 2, height, width).transpose(1, 2).reshape(batch, channels, height, width)
    return shuffled[:, :channels // 2], shuffled[:, channels // 2:]


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int, groups: int, momentum: float,
             relu: bool) -> list[nn.Module]:
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(c_out, momentum=momentum)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


def main_branch(op: str, c_in: int, mid: int, c_out: int, stride: int, momentum: float) -> nn.Sequential:
    """The op's main branch, without the ReLU its block applies after it."""
    if op.startswith("shufflenet"):
        kernel = int(op[-1])
        return nn.Sequential(*_conv_bn(c_in, mid, 1, 1, 1, momentum, relu=True),
                             *_conv_bn(mid, mid, kernel, stride, mid, momentum, relu=False),
                             *_conv_bn(mid, c_out, 1, 1, 1, momentum, relu=False))
    return nn.Sequential(*_conv_bn(c_in, c_in, 3, stride, c_in, momentum, relu=False),
                         *_conv_bn(c_in, mid, 1, 1, 1, momentum, relu=True),
                         *_conv_bn(mid, mid, 3, 1, mid, momentum, relu=False),
                         *_conv_bn(mid, mid, 1, 1, 1, momentum, relu=True),
                         *_conv_bn(mid, mid, 3, 1, mid, momentum, relu=False),
                         *_conv_bn(mid, c_out, 1, 1, 1, momentum, relu=False))


class ChoiceBlock(nn.Module):
    """One ShuffleNetV2 block with the op ``op`` (a name of ``BACKBONE_OPS``); ``mid`` is the stage's width / 2."""

    def __init__(self, op: str, c_in: int, c_out: int, stride: int, momentum: float) -> None:
        super().__init__()
        self.stride = stride
        kept = c_in if stride == 2 else c_in // 2  # channels the projection (or the shuffle) carries
        self.main = main_branch(op, c_in if stride == 2 else c_in // 2, c_out // 2, c_out - kept, stride, momentum)
        self.relu = nn.ReLU(inplace=True)
        if stride == 2:
            kernel = 3 if op.startswith("xception") else int(op[-1])
            self.projection = nn.Sequential(*_conv_bn(c_in, c_in, kernel, 2, c_in, momentum, relu=False),
                                            *_conv_bn(c_in, c_in, 1, 1, 1, momentum, relu=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            return torch.cat([self.projection(x), self.relu(self.main(x))], 1)
        kept, branch = channel_shuffle(x)
        return torch.cat([kept, self.relu(self.main(branch))], 1)


class ChoiceBackbone(nn.Module):
    """The body: a stem (3×3 stride-2 conv with bias, BatchNorm, ReLU) and 4 stages of choice blocks, the
    first of each with stride 2. Returns the last block of every stage (strides 4, 8, 16, 32).

    ``ops`` fixes one op per block (a searched network); None builds the supernet, every block holding all
    of ``BACKBONE_OPS``, and ``forward`` then takes the path's op per block.
    """

    def __init__(self, widths: Sequence[int] = SEARCH_WIDTHS, stage_repeats: Sequence[int] = PAPER_STAGE_REPEATS,
                 ops: Sequence[int] | None = None, bn_momentum: float = SUPERNET_BN_MOMENTUM) -> None:
        super().__init__()
        if ops is not None and len(ops) != sum(stage_repeats):
            raise ValueError(f"{len(ops)} backbone ops for {sum(stage_repeats)} blocks")
        stem = nn.Conv2d(3, widths[0], 3, 2, 1, bias=True)
        nn.init.normal_(stem.weight, 0.0, 0.01)
        nn.init.zeros_(stem.bias)
        self.stem = nn.Sequential(stem, nn.BatchNorm2d(widths[0], momentum=bn_momentum), nn.ReLU(inplace=True))
        self.supernet = ops is None
        self.blocks = nn.ModuleList()
        self.stage_ends: list[int] = []
        c_in = widths[0]
        for c_out, repeats in zip(widths[1:], stage_repeats):
            for index in range(repeats):
                stride = 2 if index == 0 else 1
                self.blocks.append(Choice(
                    lambda k, c_in=c_in, c_out=c_out, stride=stride: ChoiceBlock(BACKBONE_OPS[k], c_in, c_out, stride,
                                                                                bn_momentum),
                    len(BACKBONE_OPS), None if ops is None else ops[len(self.blocks)]))
                c_in = c_out
            self.stage_ends.append(len(self.blocks) - 1)
        self.out_channels = list(widths[1:])

    def forward(self, x: torch.Tensor, path: Sequence[int] | None = None) -> list[torch.Tensor]:
        if self.supernet and (path is None or len(path) != len(self.blocks)):
            raise ValueError(f"the supernet needs a path of {len(self.blocks)} backbone ops")
        x = self.stem(x)
        features = []
        for index, block in enumerate(self.blocks):
            x = block(x, path[index] if self.supernet else None)
            if index in self.stage_ends:
                features.append(x)
        return features
