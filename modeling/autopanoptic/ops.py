"""The ops Auto-Panoptic's heads and inter-modular attention choose among (the original's
``modeling/search_space.py``): depthwise-separable, deformable (DCNv2) and atrous convolutions for the mask-head
and semantic-subnet layers, each followed by GroupNorm(32) and ReLU; squeeze-and-excitation attention with
reduction 4, 8 or 6 (the paper's "r16", which the original's code builds with 6) between the thing and stuff
branches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modeling.autopanoptic.genotype import HEAD_OPS, INTER_REDUCTIONS
from modeling.detection_ops import install as install_detection_ops
from utils.torchvision_compat import import_torchvision

torchvision = import_torchvision()
install_detection_ops()  # torchvision's compiled deform_conv2d where it works, ours where it does not
GROUP_NORM_GROUPS = 32


class Choice(nn.Module):
    """One choice layer: in a supernet (``op`` None) every op ``build(k)`` for k < ``choices``, and ``forward``
    runs the one its ``choice`` names; in a searched network only ``build(op)``."""

    def __init__(self, build: Callable[[int], nn.Module], choices: int, op: int | None = None) -> None:
        super().__init__()
        self.fixed = op is not None
        self.ops = nn.ModuleList(build(k) for k in ([op] if op is not None else range(choices)))

    def forward(self, x: Any, choice: int | None = None) -> torch.Tensor:
        if self.fixed:
            return self.ops[0](x)
        if choice is None:
            raise ValueError("a supernet's choice layer needs the path's op")
        return self.ops[choice](x)


class SeparableConv(nn.Module):
    """Depthwise k×k then pointwise 1×1, both with bias and no norm between (the original's ``DWConv``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, kernel, padding=kernel // 2, groups=c_in)
        self.pointwise = nn.Conv2d(c_in, c_out, 1)
        for conv in (self.depthwise, self.pointwise):
            nn.init.xavier_normal_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class ModulatedDeformConv(nn.Module):
    """DCNv2 as the original's ``ModulatedDeformConvPack``: a zero-initialised conv predicts 2k² offsets and
    k² mask logits; the mask is their sigmoid. At initialisation it therefore computes 0.5·conv(x) + bias."""

    def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__()
        self.kernel, self.padding = kernel, kernel // 2
        self.weight = nn.Parameter(torch.empty(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out))
        bound = 1.0 / math.sqrt(c_in * kernel * kernel)
        nn.init.uniform_(self.weight, -bound, bound)
        self.conv_offset = nn.Conv2d(c_in, 3 * kernel * kernel, kernel, padding=kernel // 2)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dy_dx_first, dy_dx_second, mask = self.conv_offset(x).chunk(3, dim=1)
        offset = torch.cat([dy_dx_first, dy_dx_second], dim=1)
        return torchvision.ops.deform_conv2d(x, offset, self.weight, self.bias, padding=(self.padding, self.padding),
                                             mask=mask.sigmoid())


def atrous_conv(c_in: int, c_out: int, kernel: int) -> nn.Conv2d:
    """k×k with dilation 2, padded to keep the size (pad 2 for 3×3, 4 for 5×5)."""
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel - 1, dilation=2)
    nn.init.xavier_normal_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def head_op(op: int, c_in: int, c_out: int) -> nn.Sequential:
    """Op ``op`` of ``HEAD_OPS`` followed by GroupNorm(32) and ReLU, as every head layer is."""
    name = HEAD_OPS[op]
    kernel = int(name[-1])
    if name.startswith("dw_conv"):
        conv: nn.Module = SeparableConv(c_in, c_out, kernel)
    elif name.startswith("deform_conv"):
        conv = ModulatedDeformConv(c_in, c_out, kernel)
    else:
        conv = atrous_conv(c_in, c_out, kernel)
    return nn.Sequential(conv, nn.GroupNorm(GROUP_NORM_GROUPS, c_out), nn.ReLU(inplace=True))


class Attention(nn.Module):
    """The original's ``SELayer``: global average pool of the (concatenated) inputs, Linear to out//r, ReLU,
    Linear to out, and one minus the sigmoid: a gain ``a`` in (0, 1) the caller applies as ``f + a·f``."""

    def __init__(self, c_in: int, c_out: int, reduction: int) -> None:
        super().__init__()
        self.squeeze = nn.Linear(c_in, c_out // reduction)
        self.excite = nn.Linear(c_out // reduction, c_out)

    def forward(self, inputs: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        x = torch.cat(list(inputs), 1) if isinstance(inputs, (list, tuple)) else inputs
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        gain = 1 - torch.sigmoid(self.excite(F.relu(self.squeeze(pooled))))
        return gain[:, :, None, None]


def head_layer(c_in: int, c_out: int, op: int | None = None) -> Choice:
    """A mask-head or semantic-subnet layer choosing among ``HEAD_OPS``."""
    return Choice(lambda k: head_op(k, c_in, c_out), len(HEAD_OPS), op)


def attention_layer(c_in: int, c_out: int, op: int | None = None) -> Choice:
    """An inter-modular attention layer choosing its reduction among ``INTER_REDUCTIONS``."""
    return Choice(lambda k: Attention(c_in, c_out, INTER_REDUCTIONS[k]), len(INTER_REDUCTIONS), op)
