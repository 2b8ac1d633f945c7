"""Auto-Panoptic's network: Panoptic FPN (Mask R-CNN plus a semantic branch) with searched parts and the
inter-modular attention between the thing and stuff branches (Wu et al., NeurIPS 2020, Sec. 3).

The order of one forward: backbone C2..C5 → FPN P2..P6 (GroupNorm, P6 a stride-2 subsample of P5)
→ things-to-stuff attention from P3..P6 → the shared semantic subnet on P2..P5, upsampled to P2 →
stuff-to-things attention from those features → P_i ← P_i + a_i·P_i → RPN and RoI heads (torchvision's,
with our GroupNorm box head and searched mask head) → the semantic features gain s_i·f_i, are
concatenated, classified and upsampled ×4. Both attentions read un-modulated features.

Detection runs on torchvision's ``RegionProposalNetwork`` (keeping the training proposals per batch, as the
original does) and ``RoIHeads``; this module batches and normalises the images itself (BGR 0-255 minus the
original's pixel mean, padded to a multiple of 32) so that the semantic targets stay aligned pixel for pixel. A
supernet (``genotype`` None) takes the path of every forward; a searched network is built from its genotype.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.checkpoint import load_model_state
from modeling.autopanoptic.backbone import (RETRAIN_BN_MOMENTUM, RETRAIN_WIDTHS, SEARCH_WIDTHS, SUPERNET_BN_MOMENTUM,
                                            ChoiceBackbone)
from modeling.autopanoptic.genotype import (MASK_LAYERS, PAPER_STAGE_REPEATS, STUFF_TO_THINGS, SUBNET_LAYERS,
                                            THINGS_TO_STUFF, PanopticGenotype)
from modeling.autopanoptic.ops import GROUP_NORM_GROUPS, attention_layer, head_layer
from modeling.detection_ops import install as install_detection_ops
from utils.errors import UserError
from utils.labels import IGNORE_INDEX
from utils.torchvision_compat import import_torchvision

torchvision = import_torchvision()
install_detection_ops()
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor  # noqa: E402
from torchvision.models.detection.roi_heads import RoIHeads  # noqa: E402
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead  # noqa: E402
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign  # noqa: E402
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool  # noqa: E402

PIXEL_MEAN_BGR = (102.9801, 115.9465, 122.7717)  # the original's, on BGR images in 0..255 (std 1)
SIZE_DIVISIBILITY = 32
SEGMENTATION_WEIGHT = 0.3  # the original's LAMDA_SEGMENTATION (detection losses weigh 1)
LEVELS = ("p2", "p3", "p4", "p5", "p6")


@dataclass(frozen=True)
class PanopticSizes:
    """The sizes a network is built at: the paper's by default; a small machine shrinks them without
    changing the algorithm."""

    widths: tuple[int, ...] = SEARCH_WIDTHS
    stage_repeats: tuple[int, ...] = PAPER_STAGE_REPEATS
    fpn_channels: int = 256
    subnet_channels: int = 128
    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 2000
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_test: int = 1000
    rois_per_image: int = 512
    detections_per_image: int = 100

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> PanopticSizes:
        """The sizes a run's arguments (``args.json`` or a checkpoint's) build the network at."""
        return cls(tuple(args["widths"]), tuple(args["stage_repeats"]), args["fpn_channels"], args["subnet_channels"],
                   args["rpn_pre_nms_train"], args["rpn_post_nms_train"], args["rpn_pre_nms_test"],
                   args["rpn_post_nms_test"], args["rois_per_image"], args["detections_per_image"])


class GroupNormBoxHead(nn.Module):
    """The original's ``FPN2MLPFeatureExtractor`` with GroupNorm: fc6 and fc7 (1024 wide, no bias), each
    followed by GroupNorm(32) and ReLU."""

    def __init__(self, in_features: int, width: int = 1024) -> None:
        super().__init__()
        self.fc6, self.fc7 = nn.Linear(in_features, width, bias=False), nn.Linear(width, width, bias=False)
        self.norm6, self.norm7 = nn.GroupNorm(GROUP_NORM_GROUPS, width), nn.GroupNorm(GROUP_NORM_GROUPS, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm6(self.fc6(x.flatten(1))))
        return F.relu(self.norm7(self.fc7(x)))


class SearchedMaskHead(nn.Module):
    """The 4 mask-head choice layers on 14×14 RoI features. ``RoIHeads`` calls it with the features only, so
    the network sets ``path`` (the 4 ops) before every forward of a supernet."""

    def __init__(self, channels: int, ops: Sequence[int] | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(head_layer(channels, channels, None if ops is None else ops[k])
                                    for k in range(MASK_LAYERS))
        self.path: Sequence[int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x, None if self.path is None else self.path[index])
        return x


class BatchTopProposals(RegionProposalNetwork):
    """torchvision's RPN, except that training keeps the ``post_nms_top_n`` proposals of highest objectness over
    the whole batch rather than per image: the original's ``FPN_POST_NMS_PER_BATCH`` (maskrcnn-benchmark's
    ``RPNPostProcessor.select_over_all_levels``). Per image, torchvision would keep up to ``post_nms_top_n`` of
    each of the process's images. Testing keeps them per image, as both do."""

    def filter_proposals(self, proposals: torch.Tensor, objectness: torch.Tensor,
                         image_shapes: list[tuple[int, int]],
                         num_anchors_per_level: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        boxes, scores = super().filter_proposals(proposals, objectness, image_shapes, num_anchors_per_level)
        if not self.training:
            return boxes, scores
        return top_over_batch(boxes, scores, self.post_nms_top_n())


def top_over_batch(boxes: Sequence[torch.Tensor], scores: Sequence[torch.Tensor],
                   count: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each image's boxes and scores restricted to the ``count`` highest scores of the whole batch, in their
    order within the image (each image's own ``count`` best hold them all)."""
    flat = torch.cat(list(scores))
    if flat.numel() <= count:
        return list(boxes), list(scores)
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[flat.topk(count).indices] = True
    kept = chosen.split([len(image_scores) for image_scores in scores])
    return ([image_boxes[keep] for image_boxes, keep in zip(boxes, kept)],
            [image_scores[keep] for image_scores, keep in zip(scores, kept)])


def upsample_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear with ``align_corners=True``, as the original resizes every feature it fuses."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class AutoPanoptic(nn.Module):
    """The panoptic network for ``thing_classes`` thing and ``stuff_classes`` stuff categories.

    ``forward(images, targets=None, path=None)`` takes a list of float RGB images in 0..1 ([3, H, W], any
    sizes). In training it returns the loss dict (RPN and RoI losses plus ``loss_segmentation``, already
    weighted by 0.3); in eval, per image, the detections (``boxes`` at the input size, ``labels`` 1..things,
    ``scores``, ``masks`` [N, 1, 28, 28] probabilities in box coordinates, as the mask head gives them) and
    ``semantic`` logits [1 + stuff, H, W] (label 0: any thing). The masks are left for the caller to paste at
    whatever size it brings the image back to (``evaluation.panoptic.paste_masks``), as the original
    pastes them at the original image size.
    """

    def __init__(self, thing_classes: int, stuff_classes: int, genotype: PanopticGenotype | None = None,
                 sizes: PanopticSizes = PanopticSizes()) -> None:
        super().__init__()
        if genotype is not None and tuple(genotype.stage_repeats) != tuple(sizes.stage_repeats):
            raise ValueError(f"the genotype's stage repeats {list(genotype.stage_repeats)} differ from the "
                             f"network's {list(sizes.stage_repeats)}")
        self.supernet = genotype is None
        self.thing_classes, self.stuff_classes = thing_classes, stuff_classes
        fpn, subnet = sizes.fpn_channels, sizes.subnet_channels
        momentum = SUPERNET_BN_MOMENTUM if genotype is None else RETRAIN_BN_MOMENTUM
        self.backbone = ChoiceBackbone(sizes.widths, sizes.stage_repeats,
                                       None if genotype is None else genotype.backbone, momentum)
        self.fpn = FeaturePyramidNetwork(self.backbone.out_channels, fpn, extra_blocks=LastLevelMaxPool(),
                                         norm_layer=partial(nn.GroupNorm, GROUP_NORM_GROUPS))

        def op(ops: Sequence[int] | None, index: int) -> int | None:
            return None if ops is None else ops[index]

        subnet_ops = None if genotype is None else genotype.subnet
        self.subnet = nn.ModuleList(head_layer(fpn if k == 0 else subnet, subnet, op(subnet_ops, k))
                                    for k in range(SUBNET_LAYERS))
        things_to_stuff = None if genotype is None else genotype.things_to_stuff
        stuff_to_things = None if genotype is None else genotype.stuff_to_things
        self.things_to_stuff = nn.ModuleList(attention_layer(4 * fpn, subnet, op(things_to_stuff, k))
                                             for k in range(THINGS_TO_STUFF))
        self.stuff_to_things = nn.ModuleList(attention_layer(4 * subnet, fpn, op(stuff_to_things, k))
                                             for k in range(STUFF_TO_THINGS))
        self.semantic_score = nn.Conv2d(4 * subnet, 1 + stuff_classes, 1)

        anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
        self.rpn = BatchTopProposals(
            anchors, RPNHead(fpn, 3), fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256,
            positive_fraction=0.5, pre_nms_top_n={"training": sizes.rpn_pre_nms_train,
                                                  "testing": sizes.rpn_pre_nms_test},
            post_nms_top_n={"training": sizes.rpn_post_nms_train, "testing": sizes.rpn_post_nms_test},
            nms_thresh=0.7)
        box_levels = ["p2", "p3", "p4", "p5"]
        mask_predictor = MaskRCNNPredictor(fpn, fpn, 1 + thing_classes)
        for name, parameter in mask_predictor.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(parameter)
        self.roi_heads = RoIHeads(
            MultiScaleRoIAlign(box_levels, 7, 2), GroupNormBoxHead(fpn * 7 * 7),
            FastRCNNPredictor(1024, 1 + thing_classes), fg_iou_thresh=0.5, bg_iou_thresh=0.5,
            batch_size_per_image=sizes.rois_per_image, positive_fraction=0.25, bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
            score_thresh=0.05, nms_thresh=0.5, detections_per_img=sizes.detections_per_image,
            mask_roi_pool=MultiScaleRoIAlign(box_levels, 14, 2),
            mask_head=SearchedMaskHead(fpn, None if genotype is None else genotype.mask_head),
            mask_predictor=mask_predictor)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN_BGR).view(3, 1, 1), persistent=False)

    def batch_images(self, images: Sequence[torch.Tensor]) -> ImageList:
        """BGR in 0..255 minus the pixel mean, padded bottom-right with zeros to a multiple of 32."""
        sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        height = -(-max(h for h, _ in sizes) // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY
        width = -(-max(w for _, w in sizes) // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY
        batch = images[0].new_zeros(len(images), 3, height, width)
        for slot, image in zip(batch, images):
            slot[:, :image.shape[-2], :image.shape[-1]] = image.flip(0) * 255.0 - self.pixel_mean
        return ImageList(batch, sizes)

    def forward(self, images: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]] | None = None,
                path: Sequence[int] | None = None) -> Any:
        if self.training and targets is None:
            raise ValueError("training needs targets")
        choice = self._split_path(path)
        batch = self.batch_images(images)
        pyramid = self.pyramid(batch.tensors, choice["backbone"])
        levels = list(pyramid.values())
        features = self.semantic_features(levels, choice["subnet"])
        gains_for_stuff, gains_for_things = self.attention_gains(levels, features, choice)
        modulated = OrderedDict((name, level + gain * level)
                                for (name, level), gain in zip(pyramid.items(), gains_for_things))

        detection_targets = None if targets is None else [
            {key: target[key] for key in ("boxes", "labels", "masks")} for target in targets]
        proposals, rpn_losses = self.rpn(batch, modulated, detection_targets)
        self.roi_heads.mask_head.path = choice["mask_head"]
        detections, roi_losses = self.roi_heads(modulated, proposals, batch.image_sizes, detection_targets)
        logits = self.semantic_logits(features, gains_for_stuff)
        if self.training:
            return rpn_losses | roi_losses | {
                "loss_segmentation": SEGMENTATION_WEIGHT * segmentation_loss(logits, batch.image_sizes, targets)}
        return [{**found, "semantic": logits[index, :, :height, :width]}
                for index, ((height, width), found) in enumerate(zip(batch.image_sizes, detections))]

    def pyramid(self, tensors: torch.Tensor, backbone_path: Sequence[int] | None) -> OrderedDict[str, torch.Tensor]:
        """FPN levels P2..P6 of the batched images (before the attention modulates them)."""
        body = self.backbone(tensors, backbone_path)
        return OrderedDict(zip(LEVELS, self.fpn(OrderedDict(zip(LEVELS, body))).values()))

    def semantic_features(self, levels: Sequence[torch.Tensor], ops: Sequence[int | None]) -> list[torch.Tensor]:
        """The shared subnet on P2..P5, each result upsampled to P2's size."""
        top = levels[0].shape[-2:]
        features = []
        for level in levels[:4]:
            x = level
            for layer, op in zip(self.subnet, ops):
                x = layer(x, op)
            features.append(x if x.shape[-2:] == top else upsample_to(x, top))
        return features

    def attention_gains(self, levels: Sequence[torch.Tensor], features: Sequence[torch.Tensor],
                        choice: dict[str, Sequence[int | None]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(things-to-stuff gains for the 4 semantic features, stuff-to-things gains for P2..P6), both read from
        un-modulated inputs: P3..P6 (the original skips P2) and the semantic features."""
        top = levels[0].shape[-2:]
        coarse = torch.cat([upsample_to(level, top) for level in levels[1:]], 1)
        for_stuff = [layer(coarse, op) for layer, op in zip(self.things_to_stuff, choice["things_to_stuff"])]
        for_things = [layer(features, op) for layer, op in zip(self.stuff_to_things, choice["stuff_to_things"])]
        return for_stuff, for_things

    def semantic_logits(self, features: Sequence[torch.Tensor], gains: Sequence[torch.Tensor]) -> torch.Tensor:
        """The modulated features concatenated, classified and upsampled ×4 to the padded input size."""
        fused = torch.cat([f + gain * f for f, gain in zip(features, gains)], 1)
        return F.interpolate(self.semantic_score(fused), scale_factor=4, mode="bilinear", align_corners=True)

    def _split_path(self, path: Sequence[int] | None) -> dict[str, Sequence[int | None]]:
        """The path's ops per part; a searched network takes no path (None everywhere)."""
        blocks = len(self.backbone.blocks)
        counts = {"backbone": blocks, "mask_head": MASK_LAYERS, "subnet": SUBNET_LAYERS,
                  "things_to_stuff": THINGS_TO_STUFF, "stuff_to_things": STUFF_TO_THINGS}
        if not self.supernet:
            if path is not None:
                raise ValueError("a searched network takes no path")
            return {"backbone": None, "mask_head": None, "subnet": [None] * SUBNET_LAYERS,
                    "things_to_stuff": [None] * THINGS_TO_STUFF, "stuff_to_things": [None] * STUFF_TO_THINGS}
        total = sum(counts.values())
        if path is None or len(path) != total:
            raise ValueError(f"the supernet needs a path of {total} ops (backbone, heads, attention)")
        parts, start = {}, 0
        for name, count in counts.items():
            parts[name] = list(path[start:start + count])
            start += count
        return parts


def segmentation_loss(logits: torch.Tensor, image_sizes: Sequence[tuple[int, int]],
                      targets: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """The original's semantic loss: cross-entropy summed over every image's labelled pixels (its logits
    cropped to the image), divided by the number of labelled pixels of the batch."""
    total, count = logits.new_zeros(()), 0
    for index, ((height, width), target) in enumerate(zip(image_sizes, targets)):
        labels = target["semantic"]
        total = total + F.cross_entropy(logits[index:index + 1, :, :height, :width], labels[None],
                                        ignore_index=IGNORE_INDEX, reduction="sum")
        count += int((labels != IGNORE_INDEX).sum())
    return total / max(count, 1)


def load_backbone_weights(model: AutoPanoptic, path: str) -> None:
    """A local state dict into the backbone, every key checked (one clear error on a mismatch)."""
    if not Path(path).is_file():
        raise UserError(f"backbone weights {path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt or foreign file: say which and why, no trace
        raise UserError(f"backbone weights {path}: not a readable weights file ({error})") from None
    if not isinstance(state, dict):
        raise UserError(f"backbone weights {path}: expected a state dict of the backbone")
    load_model_state(model.backbone, state.get("state_dict", state), f"backbone weights {path}")


def build(args: dict[str, Any], genotype: PanopticGenotype | None, backbone_weights: str | None) -> AutoPanoptic:
    """The searched network of a retrain run (its class counts and sizes in ``args``)."""
    model = AutoPanoptic(args["thing_classes"], args["stuff_classes"], genotype, PanopticSizes.from_args(args))
    if backbone_weights:
        load_backbone_weights(model, backbone_weights)
    return model
