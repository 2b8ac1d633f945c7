"""The retrained Auto-DeepLab network, built from any decoded ``Architecture``.

The construction is the official one (TF ``hnasnet`` + DeepLabV3+ head with dense convolutions),
which reproduces the paper's Table 2 parameter counts exactly:

* stem: three 3x3 convs 64/64/128, stride 2 in the first and third;
* one cell per layer at the path's level, C = F * 2**level channels per block. A cell one level
  coarser than its predecessor downsamples inside the ops that read its two inputs; a cell one
  level finer first upsamples H^{l-1} bilinearly. H^{l-1} always gets a ReLU-1x1-BN projection;
  H^{l-2} is resized to H^{l-1}'s size if needed, and projected only when its width differs;
* a final ReLU, an ASPP at rates scaled to the output stride (12/24/36 at stride 8), and a
  DeepLabV3+ decoder fed by the last stride-4 cell (the stem output if the path leaves
  stride 4 at once), upsampled to the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modeling.drop_path import drop_path
from modeling.autodeeplab.genotype import Architecture, CellGenotype
from modeling.heads import ASPP, DeepLabV3PlusDecoder, DeepLabV3PlusSegmentor, FeatureInfo, aspp_rates
from modeling.autodeeplab.search_space import STEM_STRIDE, level_sizes, level_stride
from modeling.autodeeplab.operations import OPS, ReLUConvBN, Stem

STEM_WIDTHS = (64, 64, 128)
ASPP_CHANNELS = 256


class RetrainCell(nn.Module):
    def __init__(self, genotype: CellGenotype, block_multiplier: int, prev_prev_channels: int,
                 prev_channels: int, channels: int, level_change: int):
        super().__init__()
        self.level_change = level_change
        self.block_multiplier = block_multiplier
        self.preprocess_prev = ReLUConvBN(prev_channels, channels, 1)
        self.preprocess_prev_prev = (ReLUConvBN(prev_prev_channels, channels, 1)
                                     if prev_prev_channels != channels else nn.Identity())
        self.inputs = [[cell_input for cell_input, _ in block] for block in genotype]
        self.ops = nn.ModuleList(
            nn.ModuleList(OPS[op](channels, 2 if level_change == 1 and cell_input < 2 else 1, True)
                          for cell_input, op in block)
            for block in genotype)
        self.drop_path_prob = 0.0  # set by the training loop (scheduled drop-path)

    def forward(self, prev_prev: torch.Tensor, prev: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``size`` is this cell's output size; H^{l-1} is upsampled to it when moving up a level."""
        if self.level_change == -1:
            prev = F.interpolate(prev, size=size, mode="bilinear", align_corners=False)
        if prev_prev.shape[-2:] != prev.shape[-2:]:
            prev_prev = F.interpolate(prev_prev, size=prev.shape[-2:], mode="bilinear", align_corners=False)
        states = [self.preprocess_prev_prev(prev_prev), self.preprocess_prev(prev)]
        for inputs, ops in zip(self.inputs, self.ops):
            states.append(sum(self._drop(op, op(states[i])) for i, op in zip(inputs, ops)))
        return torch.cat(states[-self.block_multiplier:], dim=1)

    def _drop(self, op: nn.Module, output: torch.Tensor) -> torch.Tensor:
        return output if isinstance(op, nn.Identity) else drop_path(output, self.drop_path_prob, self.training)


class AutoDeepLab(DeepLabV3PlusSegmentor):
    """A searched architecture as a segmentation network (Auto-DeepLab-S/M/L at F = 20/32/48)."""

    def __init__(self, arch: Architecture, num_classes: int, filter_multiplier: int | None = None):
        super().__init__()
        self.arch = arch
        fm = filter_multiplier or arch.filter_multiplier
        bm = arch.block_multiplier
        self.filter_multiplier = fm
        self.stem = Stem(STEM_WIDTHS)
        prev_prev_channels, prev_channels = self.stem.out_channels
        previous_level = 0
        self.cells = nn.ModuleList()
        for level in arch.network_path:
            channels = fm * 2**level
            self.cells.append(RetrainCell(arch.cell, bm, prev_prev_channels, prev_channels, channels,
                                          level - previous_level))
            prev_prev_channels, prev_channels, previous_level = prev_channels, bm * channels, level
        stride4_layers = [layer for layer, level in enumerate(arch.network_path) if level == 0]
        self.low_level_layer = stride4_layers[-1] if stride4_layers else -1
        low_level_channels = bm * fm if stride4_layers else self.stem.out_channels[1]
        output_stride = level_stride(arch.network_path[-1])
        self.aspp = ASPP(prev_channels, ASPP_CHANNELS, aspp_rates(output_stride, 3), dropout=0.1)
        self.decoder = DeepLabV3PlusDecoder(low_level_channels, ASPP_CHANNELS, num_classes)
        self.feature_info = (FeatureInfo(low_level_channels, STEM_STRIDE), FeatureInfo(prev_channels, output_stride))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(stride-4 low-level feature, last cell output after the final ReLU)."""
        prev_prev, prev = self.stem(x)
        sizes = level_sizes(tuple(prev.shape[-2:]), self.arch.num_levels)
        low_level = prev
        for layer, (cell, level) in enumerate(zip(self.cells, self.arch.network_path)):
            prev_prev, prev = prev, cell(prev_prev, prev, sizes[level])
            if layer == self.low_level_layer:
                low_level = prev
        return low_level, F.relu(prev)

    def set_drop_path_prob(self, probability: float) -> None:
        """The drop-path probability of every cell for the coming steps."""
        if not 0.0 <= probability < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {probability}")
        for cell in self.cells:
            cell.drop_path_prob = probability
