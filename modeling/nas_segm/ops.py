"""The candidate ops of the decoder search, its two aggregation ops and what its classifiers read, built as the
original builds them (its ``src/nn/layer_factory.py`` and ``src/nn/micro_decoders.py``).

Every op is ``OPS[name](c_in, c_out, stride, repeats)``. Convolutions have no bias, BatchNorm is affine,
ReLUs are not in place. Two construction details of the original are kept because the released
architectures' weights and parameter counts depend on them: a separable conv applies its stride in every
one of its ``repeats``, and ``skip_connect`` and the global pooling op ignore the stride.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def resize_to(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``x`` bilinearly resized to ``size`` (H, W), or ``x`` itself when it has that size already."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear",
                                                                      align_corners=False)


def unread_outputs(num_inputs: int, pairs: Sequence[Sequence[int]]) -> list[int]:
    """The outputs a decoder's classifier concatenates, in the original's order: each block or cell output that
    no later one reads (``pairs`` are their inputs; outputs number on from ``num_inputs``). Encoder features
    are never among them, in both spaces, as in the original."""
    collected: list[int] = []
    for index, pair in enumerate(pairs):
        collected = [i for i in collected if i not in pair] + [num_inputs + index]
    return collected


def concat_step_by_step(features: list[torch.Tensor]) -> torch.Tensor:
    """The features concatenated along the channels in their order, as the original's ``collect_all``
    (``src/nn/micro_decoders.py``) does: a running stack takes each next feature, the shorter of the two (by
    height only) first resized to the other's size. A feature collected before taller ones is thus resized
    once per step (stride 32 -> 16 -> 4, not 32 -> 4), which changes the logits of the released networks."""
    stack = features[0]
    for feature in features[1:]:
        if feature.shape[2] > stack.shape[2]:
            stack = resize_to(stack, feature.shape[-2:])
        else:
            feature = resize_to(feature, stack.shape[-2:])
        stack = torch.cat([stack, feature], dim=1)
    return stack


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, dilation * (kernel // 2), dilation, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


class SepConv(nn.Sequential):
    """``repeats`` x [depthwise k x k (``stride``, ``dilation``) -> 1x1 -> BN -> ReLU]; C_in becomes C_out after
    the first. The stride is applied in every repeat, as the original does."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, dilation: int, repeats: int) -> None:
        layers = []
        for repeat in range(repeats):
            channels = c_in if repeat == 0 else c_out
            layers += [nn.Conv2d(channels, channels, kernel, stride, dilation * (kernel // 2), dilation,
                                 groups=channels, bias=False),
                       nn.Conv2d(channels, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        super().__init__(*layers)


class GlobalPoolConv(nn.Module):
    """Global average pooling -> 1x1 -> BN -> ReLU, upsampled back to the input size (ignores the stride)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(x.mean(dim=(2, 3), keepdim=True))
        return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)


class PoolConv(nn.Sequential):
    """1x1 -> BN (no ReLU) -> 3x3 max pooling at ``stride`` (the WACV space's ``max_pool_3x3``)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.MaxPool2d(3, stride, 1))


class Skip(nn.Module):
    """The input, its channels repeated to ``c_out`` (ignores the stride)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        if c_out % c_in:
            raise ValueError(f"skip_connect cannot widen {c_in} channels to {c_out}")
        self.times = c_out // c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, self.times, 1, 1)


class Zero(nn.Module):
    """Zeros of the op's output shape (the CVPR space's ``none``)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.times, self.stride = c_out // c_in, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, ::self.stride, ::self.stride].repeat(1, self.times, 1, 1) * 0


Op = Callable[[int, int, int, int], nn.Module]
OPS: dict[str, Op] = {
    "conv1x1": lambda c_in, c_out, stride, repeats: conv_bn_relu(c_in, c_out, 1, stride),
    "conv3x3": lambda c_in, c_out, stride, repeats: conv_bn_relu(c_in, c_out, 3, stride),
    "conv3x3_dil3": lambda c_in, c_out, stride, repeats: conv_bn_relu(c_in, c_out, 3, stride, 3),
    "conv3x3_dil12": lambda c_in, c_out, stride, repeats: conv_bn_relu(c_in, c_out, 3, stride, 12),
    "sep_conv_3x3": lambda c_in, c_out, stride, repeats: SepConv(c_in, c_out, 3, stride, 1, repeats),
    "sep_conv_5x5": lambda c_in, c_out, stride, repeats: SepConv(c_in, c_out, 5, stride, 1, repeats),
    "sep_conv_3x3_dil3": lambda c_in, c_out, stride, repeats: SepConv(c_in, c_out, 3, stride, 3, repeats),
    "sep_conv_5x5_dil6": lambda c_in, c_out, stride, repeats: SepConv(c_in, c_out, 5, stride, 6, repeats),
    "global_average_pool": lambda c_in, c_out, stride, repeats: GlobalPoolConv(c_in, c_out),
    "max_pool_3x3": lambda c_in, c_out, stride, repeats: PoolConv(c_in, c_out, stride),
    "skip_connect": lambda c_in, c_out, stride, repeats: Skip(c_in, c_out),
    "none": lambda c_in, c_out, stride, repeats: Zero(c_in, c_out, stride),
}
CVPR_OPS = ("conv1x1", "conv3x3", "sep_conv_3x3", "sep_conv_5x5", "global_average_pool", "conv3x3_dil3",
            "conv3x3_dil12", "sep_conv_3x3_dil3", "sep_conv_5x5_dil6", "skip_connect", "none")
WACV_OPS = ("sep_conv_3x3", "sep_conv_5x5", "global_average_pool", "max_pool_3x3", "sep_conv_5x5_dil6",
            "skip_connect")


class Aggregate(nn.Module):
    """Two features to one of ``c_out`` channels: each input of another width is projected (1x1, BN, ReLU), the
    two are brought to one size (the larger one's with ``larger``, else the smaller one's, bilinearly), then
    combined by ``combine``."""

    def __init__(self, c_in0: int, c_in1: int, c_out: int, larger: bool) -> None:
        super().__init__()
        self.adapt = nn.ModuleList([conv_bn_relu(c, c_out) if c != c_out else nn.Identity() for c in (c_in0, c_in1)])
        self.larger = larger

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = self.adapt[0](x), self.adapt[1](y)
        if x.shape[-2:] != y.shape[-2:]:
            pick = max if self.larger else min  # sizes compared as (H, W) tuples, as the original does
            size = pick(tuple(x.shape[-2:]), tuple(y.shape[-2:]))
            x, y = resize_to(x, size), resize_to(y, size)
        return self.combine(x, y)

    def combine(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ParamSum(Aggregate):
    """``psum``: a[c] * x + b[c] * y, with per-channel weights starting at 1."""

    def __init__(self, c_in0: int, c_in1: int, c_out: int, larger: bool) -> None:
        super().__init__(c_in0, c_in1, c_out, larger)
        self.a, self.b = nn.Parameter(torch.ones(c_out)), nn.Parameter(torch.ones(c_out))

    def combine(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.a.view(1, -1, 1, 1) * x + self.b.view(1, -1, 1, 1) * y


class ConcatReduce(Aggregate):
    """``cat``: concatenation -> BN -> ReLU -> 1x1 back to ``c_out`` channels."""

    def __init__(self, c_in0: int, c_in1: int, c_out: int, larger: bool) -> None:
        super().__init__(c_in0, c_in1, c_out, larger)
        self.reduce = nn.Sequential(nn.BatchNorm2d(2 * c_out), nn.ReLU(), nn.Conv2d(2 * c_out, c_out, 1, bias=False))

    def combine(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.reduce(torch.cat([x, y], dim=1))


AGGREGATIONS: tuple[type[Aggregate], ...] = (ParamSum, ConcatReduce)  # the genotype's 0 = psum, 1 = cat
