"""The MobileNetV2 encoder of Nekrasov et al.'s decoder search, as the original builds it (its
``src/nn/encoders.py``, from Light-Weight RefineNet's ``MBv2``), returning the features its decoders read.

It differs from ``torchvision.models.mobilenet_v2`` in one place that changes the weights: the first
inverted-residual block (expansion t=1) keeps its 1x1 expansion conv (32 -> 32, BN, ReLU6), which
torchvision drops when t = 1 (+1,088 parameters). Like the original it has no last 1x1 conv (320 -> 1280)
and no classifier, and it builds the stages only up to the deepest feature returned.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from modeling.heads import FeatureInfo

# (expansion t, output channels, blocks, stride of the first block), as in the MobileNetV2 paper
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS = 32
CVPR_TAPS = (1, 2, 4, 6)  # 24 ch at stride 4, 32 at 8, 96 at 16, 320 at 32
WACV_TAPS = (1, 2)  # 24 ch at stride 4, 32 at 8


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise (``stride``), 1x1 projection, each with BatchNorm (ReLU6 after the first
    two); the input is added back when the shape allows. The expansion is kept even at t = 1."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


class MobileNetV2Encoder(nn.Module):
    """``layer1`` (the stem) and ``layer2..`` (one per stage of ``STAGES``, up to the deepest tap); ``forward``
    returns the outputs of the stages in ``taps`` (0-based stage indices), described by ``feature_info``."""

    def __init__(self, taps: Sequence[int] = CVPR_TAPS) -> None:
        super().__init__()
        if not taps or sorted(set(taps)) != list(taps) or not 0 <= taps[0] <= taps[-1] < len(STAGES):
            raise ValueError(f"taps must be increasing stage indices in 0..{len(STAGES) - 1}, got {list(taps)}")
        self.taps = tuple(taps)
        self.layer1 = nn.Sequential(nn.Conv2d(3, STEM_CHANNELS, 3, 2, 1, bias=False), nn.BatchNorm2d(STEM_CHANNELS),
                                    nn.ReLU6(inplace=True))
        channels, stride, info = STEM_CHANNELS, 2, []
        for index, (expansion, c_out, blocks, first_stride) in enumerate(STAGES[:taps[-1] + 1]):
            self.add_module(f"layer{index + 2}", nn.Sequential(*(
                InvertedResidual(channels if block == 0 else c_out, c_out, first_stride if block == 0 else 1, expansion)
                for block in range(blocks))))
            channels, stride = c_out, stride * first_stride
            if index in self.taps:
                info.append(FeatureInfo(c_out, stride))
        self.feature_info = tuple(info)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.layer1(x)
        features = []
        for index in range(self.taps[-1] + 1):
            x = getattr(self, f"layer{index + 2}")(x)
            if index in self.taps:
                features.append(x)
        return features
