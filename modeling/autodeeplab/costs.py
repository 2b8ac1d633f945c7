"""Parameters and Multi-Adds of a retrained Auto-DeepLab network, per component (``--summary``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from modeling.autodeeplab.model_retrain import AutoDeepLab
from modeling.autodeeplab.search_space import level_stride

# Table 2 of the paper: Multi-Adds (billions) at 1025x2049 with 19 classes, by F. The paper's counting
# convention adds about 4% to a plain count of convolution multiply-adds (README, "Model summary").
PAPER_MULTI_ADDS = {20: 333.25, 32: 460.93, 48: 695.03}


def component_costs(model: AutoDeepLab, input_size: tuple[int, int]) -> list[tuple[str, int, float]]:
    """(component, trainable parameters, convolution Multi-Adds in billions) rows, the last one the total.

    Parameters follow the paper's convention (kernels, BN γ/β, biases). Multi-Adds are counted on
    the meta device, so no memory or data is needed; ``model`` is moved there.
    """
    model = model.eval().to("meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, *input_size, device="meta"))
    flops = counter.get_flop_counts()

    def row(name: str, prefix: str, module: nn.Module) -> tuple[str, int, float]:
        return name, sum(p.numel() for p in module.parameters()), sum(flops.get(prefix, {}).values()) / 2e9

    rows = [row("stem", "AutoDeepLab.stem", model.stem)]
    rows += [row(f"cell {i} (stride {level_stride(level)})", f"AutoDeepLab.cells.{i}", cell)
             for i, (cell, level) in enumerate(zip(model.cells, model.arch.network_path))]
    return rows + [row("ASPP", "AutoDeepLab.aspp", model.aspp),
                   row("decoder (with logits)", "AutoDeepLab.decoder", model.decoder),
                   row("total", "AutoDeepLab", model)]


def summary(model: AutoDeepLab, input_size: tuple[int, int]) -> str:
    """The --summary table; its last line is the total parameter count as a plain integer."""
    rows = component_costs(model, input_size)
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{'component':<{width}}  {'params':>12}  {'Multi-Adds (G)':>14}"]
    lines += [f"{name:<{width}}  {params:>12,}  {macs:>14.2f}" for name, params, macs in rows]
    lines.append(f"input {input_size[0]}x{input_size[1]}, F={model.filter_multiplier}")
    paper = PAPER_MULTI_ADDS.get(model.filter_multiplier)
    if paper is not None and tuple(input_size) == (1025, 2049):
        lines.append(f"paper Table 2: {paper:.2f} G Multi-Adds (its counting convention; see README)")
    lines.append(str(rows[-1][1]))
    return "\n".join(lines)
