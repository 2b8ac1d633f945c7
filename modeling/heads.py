"""Segmentation heads: ASPP and the DeepLabV3+ decoder (dense convolutions, as the paper counts them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(c_in: int, c_out: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size, padding=padding, dilation=dilation, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def aspp_rates(output_stride: int, num_rates: int) -> list[int]:
    """Atrous rates scaled to the feature stride: 96/s, 192/s, 288/s (12/24/36 at stride 8)."""
    return [max(1, 96 * (i + 1) // output_stride) for i in range(num_rates)]


ASPP_MIN_BATCH = 2  # images per training batch (per process, unless BatchNorm is synchronised): see ASPP
ASPP_MIN_BATCH_REASON = "BatchNorm in the ASPP image-pooling branch"


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: image pooling, a 1x1 branch and one 3x3 branch per rate.

    The image-pooling branch has a BatchNorm over a 1x1 map, so training needs ``ASPP_MIN_BATCH``
    images per batch (per process, unless the statistics are synchronised over the processes).
    """

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int], dropout: float = 0.0):
        super().__init__()
        self.pool_branch = conv_bn_relu(in_channels, out_channels)
        self.branches = nn.ModuleList([conv_bn_relu(in_channels, out_channels)] +
                                      [conv_bn_relu(in_channels, out_channels, 3, rate) for rate in rates])
        self.project = nn.Sequential(conv_bn_relu(out_channels * (len(rates) + 2), out_channels),
                                     nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool_branch(F.adaptive_avg_pool2d(x, 1)).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([pooled] + [branch(x) for branch in self.branches], dim=1))


class DeepLabV3PlusDecoder(nn.Module):
    """Fuses the ASPP output with a stride-4 feature: 1x1 to 48 channels, concat, two 3x3 convs, logits."""

    def __init__(self, low_level_channels: int, aspp_channels: int, num_classes: int, channels: int = 256):
        super().__init__()
        self.low_level = conv_bn_relu(low_level_channels, 48)
        self.fuse = nn.Sequential(conv_bn_relu(aspp_channels + 48, channels, 3),
                                  conv_bn_relu(channels, channels, 3))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, aspp_out: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        aspp_out = F.interpolate(aspp_out, size=low_level.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([aspp_out, self.low_level(low_level)], dim=1)))


@dataclass(frozen=True)
class FeatureInfo:
    """One feature an encoder returns: its channels and its stride relative to the input."""

    channels: int
    stride: int


class DeepLabV3PlusSegmentor(nn.Module):
    """An encoder followed by the ASPP and the DeepLabV3+ decoder, logits upsampled to the input size.

    Subclasses build ``aspp`` and ``decoder`` and give ``encode(x) -> (low_level, features)`` with
    ``feature_info`` stating the channels and stride of the two (mmseg's ``EncoderDecoder``).
    """

    feature_info: tuple[FeatureInfo, FeatureInfo]
    aspp: ASPP
    decoder: DeepLabV3PlusDecoder

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low_level, features = self.encode(x)
        logits = self.decoder(self.aspp(features), low_level)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
