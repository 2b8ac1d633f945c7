"""Parameters and Multi-Adds of a searched Auto-Panoptic network, per component (``--summary``).

Every dense part runs once on PyTorch's meta device under ``torch.utils.flop_counter`` (no memory, no data):
the backbone and FPN on the image padded to a multiple of 32, the RPN head on the five levels, the semantic
subnet (shared by P2..P5, with its 1×1 classifier) and the two attentions on their inputs. The RoI heads' cost
grows with the boxes they see, so they are counted at the original's test setting: 1,000 proposals through the
box head and 100 detections through the mask head (``RPN.POST_NMS_TOP_N_TEST``, ``DETECTIONS_PER_IMG``).
RoIAlign, NMS, normalisation, resizing and additions are not Multi-Adds and are left out, as in the other
systems' tables. The counter has no formula for a deformable convolution, so while counting it runs the
pure-torch one of ``modeling.detection_ops`` (an im2col matrix product the counter sees).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from modeling import detection_ops
from modeling.autopanoptic.genotype import STUFF_TO_THINGS, SUBNET_LAYERS, THINGS_TO_STUFF
from modeling.autopanoptic.network import LEVELS, SIZE_DIVISIBILITY, AutoPanoptic
from utils.torchvision_compat import import_torchvision

PROPOSALS = 1000  # the original's test-time proposals per image (FPN_POST_NMS_TOP_N_TEST)
DETECTIONS = 100  # ... and detections per image (DETECTIONS_PER_IMG), which the mask head sees
BOX_POOL, MASK_POOL = 7, 14  # RoIAlign output sides of the box and mask heads
PAPER_INPUT = (800, 1333)  # the paper's test size: short side 800, long side at most 1333
# The paper reports its searched networks by the backbone's FLOPs, counted as DetNAS counts them: the body as a
# 224x224 ImageNet classifier, with a 1x1 conv to the last width, average pooling and a 1000-way FC.
PAPER_BACKBONE_FLOPS = {(72, 172, 432, 864, 1728): "3.8G"}


@contextlib.contextmanager
def _counted_deform_conv() -> Iterator[None]:
    """torchvision's deformable convolution replaced by the pure-torch one for the duration (both compute the same;
    only the latter's matrix product is visible to the FLOP counter)."""
    ops = import_torchvision().ops
    native = ops.deform_conv2d
    ops.deform_conv2d = detection_ops.deform_conv2d
    try:
        yield
    finally:
        ops.deform_conv2d = native


def _multi_adds(function: Callable[[], Any]) -> tuple[Any, float]:
    """What ``function`` returns and the Multi-Adds (billions) of the matrix products and convolutions it ran."""
    with FlopCounterMode(display=False) as counter:
        result = function()
    return result, counter.get_total_flops() / 2e9


def _parameters(*modules: nn.Module) -> int:
    return sum(parameter.numel() for module in modules for parameter in module.parameters())


def component_costs(model: AutoPanoptic, input_size: tuple[int, int]) -> list[tuple[str, int, float]]:
    """(component, parameters, Multi-Adds in billions) rows for one image of ``input_size``, the last one the
    total. ``model`` (a searched network) is moved to the meta device."""
    if model.supernet:
        raise ValueError("the cost table is for a searched network; a supernet's cost depends on its path")
    model = model.eval().to("meta")
    height, width = (-(-side // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY for side in input_size)
    fpn = model.fpn.layer_blocks[0][0].out_channels
    subnet_ops, attention_ops = [None] * SUBNET_LAYERS, {"things_to_stuff": [None] * THINGS_TO_STUFF,
                                                         "stuff_to_things": [None] * STUFF_TO_THINGS}
    with torch.no_grad(), _counted_deform_conv():
        body, backbone = _multi_adds(lambda: model.backbone(torch.empty(1, 3, height, width, device="meta"), None))
        pyramid, pyramid_cost = _multi_adds(lambda: model.fpn(OrderedDict(zip(LEVELS, body))))
        levels = list(pyramid.values())
        features, subnet = _multi_adds(lambda: model.semantic_features(levels, subnet_ops))
        gains, attention = _multi_adds(lambda: model.attention_gains(levels, features, attention_ops))
        _, classifier = _multi_adds(lambda: model.semantic_logits(features, gains[0]))
        _, rpn = _multi_adds(lambda: model.rpn.head(levels))
        heads = model.roi_heads
        _, box = _multi_adds(lambda: heads.box_predictor(heads.box_head(
            torch.empty(PROPOSALS, fpn, BOX_POOL, BOX_POOL, device="meta"))))
        _, mask = _multi_adds(lambda: heads.mask_predictor(heads.mask_head(
            torch.empty(DETECTIONS, fpn, MASK_POOL, MASK_POOL, device="meta"))))
    rows = [("backbone", _parameters(model.backbone), backbone), ("FPN", _parameters(model.fpn), pyramid_cost),
            ("RPN", _parameters(model.rpn), rpn),
            (f"box head ({PROPOSALS} proposals)", _parameters(heads.box_head, heads.box_predictor), box),
            (f"mask head ({DETECTIONS} detections)", _parameters(heads.mask_head, heads.mask_predictor), mask),
            ("semantic subnet (with classifier)", _parameters(model.subnet, model.semantic_score),
             subnet + classifier),
            ("attentions", _parameters(model.things_to_stuff, model.stuff_to_things), attention)]
    return rows + [("total", sum(row[1] for row in rows), sum(row[2] for row in rows))]


def summary(model: AutoPanoptic, input_size: tuple[int, int]) -> str:
    """The --summary table; its last line is the total parameter count as a plain integer."""
    widths = (model.backbone.stem[0].out_channels, *model.backbone.out_channels)
    rows = component_costs(model, input_size)
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{'component':<{width}}  {'params':>12}  {'Multi-Adds (G)':>14}"]
    lines += [f"{name:<{width}}  {params:>12,}  {macs:>14.2f}" for name, params, macs in rows]
    padded = tuple(-(-side // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY for side in input_size)
    lines.append(f"input {input_size[0]}x{input_size[1]} (padded to {padded[0]}x{padded[1]}), backbone widths "
                 f"{list(widths)}, {model.thing_classes} thing and {model.stuff_classes} stuff categories; the RoI "
                 f"heads at the original's test setting of {PROPOSALS} proposals and {DETECTIONS} detections")
    if widths in PAPER_BACKBONE_FLOPS:
        lines.append(f"the paper reports this network by its backbone's FLOPs, {PAPER_BACKBONE_FLOPS[widths]}, as a "
                     "224x224 ImageNet classifier (see README)")
    lines.append(str(rows[-1][1]))
    return "\n".join(lines)
