"""The candidate operations, defined once and used by both the supernet and the retrained network.

Definitions follow the paper and its official network (TF ``nas_cell.py``):

* ``sep_conv_KxK``: two stacked ReLU -> depthwise KxK -> pointwise 1x1 -> BN layers; only the
  first carries the stride.
* ``dil_conv_KxK`` (the paper's "atrous conv with rate 2"): ReLU -> dense KxK conv with dilation
  2 -> BN. Asked to downsample, it resizes the input to half size and applies a dilation-1 conv,
  as the official network does.
* pools are 3x3 (average pooling ignores padding); ``skip_connect`` is the identity, or a
  factorized reduction when it has to downsample.
* ``none`` is never built: the supernet skips it (its output is zero) and decoding never picks it.

Every downsampling path maps a size h to ceil(h / 2), the same as a 3x3 stride-2 convolution
with padding 1, so feature maps of all branches line up for any input size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def half_size(size: int) -> int:
    """Spatial size after one stride-2 step (ceil(h / 2))."""
    return (size + 1) // 2


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked ReLU-depthwise-pointwise-BN layers; the first one carries the stride."""

    def __init__(self, channels: int, kernel_size: int, stride: int, affine: bool):
        layers: list[nn.Module] = []
        for layer_stride in (stride, 1):
            layers += [
                nn.ReLU(inplace=False),
                nn.Conv2d(channels, channels, kernel_size, stride=layer_stride, padding=kernel_size // 2,
                          groups=channels, bias=False),
                nn.Conv2d(channels, channels, 1, bias=False),
                nn.BatchNorm2d(channels, affine=affine),
            ]
        super().__init__(*layers)


class AtrousConv(nn.Module):
    """ReLU -> dense KxK conv with dilation 2 -> BN; stride 2 resizes first, then a dilation-1 conv."""

    def __init__(self, channels: int, kernel_size: int, stride: int, affine: bool):
        super().__init__()
        self.stride = stride
        dilation = 2 if stride == 1 else 1
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=dilation * (kernel_size // 2),
                              dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(channels, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        if self.stride == 2:
            size = (half_size(x.shape[-2]), half_size(x.shape[-1]))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.bn(self.conv(x))


class FactorizedReduce(nn.Module):
    """Stride-2 identity substitute: two 1x1 stride-2 convs on offset grids, concatenated."""

    def __init__(self, channels: int, affine: bool):
        super().__init__()
        self.conv_a = nn.Conv2d(channels, channels // 2, 1, stride=2, bias=False)
        self.conv_b = nn.Conv2d(channels, channels - channels // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(channels, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        return self.bn(torch.cat([self.conv_a(x), self.conv_b(shifted)], dim=1))


def _skip(channels: int, stride: int, affine: bool) -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(channels, affine)


OpFactory = Callable[[int, int, bool], nn.Module]

OPS: dict[str, OpFactory] = {
    "max_pool_3x3": lambda c, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "avg_pool_3x3": lambda c, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1,
                                                           count_include_pad=False),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda c, stride, affine: SepConv(c, 3, stride, affine),
    "sep_conv_5x5": lambda c, stride, affine: SepConv(c, 5, stride, affine),
    "dil_conv_3x3": lambda c, stride, affine: AtrousConv(c, 3, stride, affine),
    "dil_conv_5x5": lambda c, stride, affine: AtrousConv(c, 5, stride, affine),
}
PARAMETER_FREE_OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect")


class Stem(nn.Module):
    """Three 3x3 conv-BN layers, stride 2 in the first and third (the paper's retrain stem).

    Returns (stride-2 feature, stride-4 feature): the first is the H^{l-2} input of the first
    cell, taken after the second BN as in the official network; the second is H^{l-1}.
    There is no ReLU after the last BN because every cell applies ReLU to its inputs.
    """

    def __init__(self, widths: tuple[int, int, int], in_channels: int = 3):
        super().__init__()
        w1, w2, w3 = widths
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, w1, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(w1), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(nn.Conv2d(w1, w2, 3, padding=1, bias=False), nn.BatchNorm2d(w2))
        self.conv3 = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(w2, w3, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(w3))
        self.out_channels = (w2, w3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        early = self.conv2(self.conv1(x))
        return early, self.conv3(early)
