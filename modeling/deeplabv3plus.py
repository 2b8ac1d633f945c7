"""DeepLabV3+ with a dilated torchvision ResNet: the hand-designed baseline Auto-DeepLab is compared to.

The head is the project's own ASPP and DeepLabV3+ decoder, built exactly as ``AutoDeepLab`` builds
them, so a comparison between the two networks differs only in the backbone. The ResNet keeps its
stride-2 stem and replaces the strides of its last stages with dilation (output stride 16 or 8);
its avgpool and fc are dropped, since unused parameters would make a DDP run fail.

ImageNet weights are never downloaded: ``backbone_weights`` names a local torchvision ResNet state
dict (a ``.pth`` file as torchvision distributes it, or ``torch.save(resnet.state_dict(), path)``).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from modeling.heads import ASPP, DeepLabV3PlusDecoder, DeepLabV3PlusSegmentor, FeatureInfo, aspp_rates
from modeling.registry import ModelSpec, register_model
from utils.errors import UserError
from utils.torchvision_compat import import_torchvision

import_torchvision()
from torchvision.models import ResNet, resnet50, resnet101  # noqa: E402 - needs import_torchvision() first

BACKBONES: dict[str, Callable[..., ResNet]] = {"resnet50": resnet50, "resnet101": resnet101}
# Which of layer2/3/4 trade their stride for dilation: the stem and layer1 bring the stride to 4.
_DILATION = {8: [False, True, True], 16: [False, False, True]}
OUTPUT_STRIDES = tuple(sorted(_DILATION))
LOW_LEVEL_CHANNELS = 256  # layer1 output, stride 4
BACKBONE_CHANNELS = 2048  # layer4 output
ASPP_CHANNELS = 256
ASPP_DROPOUT = 0.1  # as AutoDeepLab's head
SHOWN_KEYS = 3  # offending keys named in a weights error


class ResNetFeatures(nn.Module):
    """A torchvision ResNet without avgpool and fc, returning the layer1 and layer4 features.

    The submodule names are torchvision's, so its state dicts load directly.
    """

    def __init__(self, resnet: ResNet):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(stride-4 low-level feature, last-stage feature)."""
        low_level = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return low_level, self.layer4(self.layer3(self.layer2(low_level)))


class DeepLabV3Plus(DeepLabV3PlusSegmentor):
    """DeepLabV3+ (Chen et al. 2018) on a ResNet-50/101; ``forward`` gives logits at the input size."""

    def __init__(self, num_classes: int, backbone: str = "resnet101", output_stride: int = 16,
                 backbone_weights: str | Path | None = None):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        self.backbone_name = backbone
        self.output_stride = output_stride
        self.backbone = ResNetFeatures(BACKBONES[backbone](weights=None,
                                                           replace_stride_with_dilation=_DILATION[output_stride]))
        if backbone_weights is not None:
            load_backbone_weights(self.backbone, Path(backbone_weights), backbone)
        self.aspp = ASPP(BACKBONE_CHANNELS, ASPP_CHANNELS, aspp_rates(output_stride, 3), dropout=ASPP_DROPOUT)
        self.decoder = DeepLabV3PlusDecoder(LOW_LEVEL_CHANNELS, ASPP_CHANNELS, num_classes)
        self.feature_info = (FeatureInfo(LOW_LEVEL_CHANNELS, 4), FeatureInfo(BACKBONE_CHANNELS, output_stride))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backbone(x)


def _read_state_dict(path: Path, backbone: str) -> dict[str, torch.Tensor]:
    """The tensors in ``path``, or a ``UserError`` saying why the file is not a usable state dict."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise UserError(f"{path}: cannot read {backbone} weights ({error.strerror or error})") from None
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError) as error:
        raise UserError(f"{path}: not a torch state dict of {backbone} weights "
                        f"({type(error).__name__}); save one with torch.save(model.state_dict(), path)") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise UserError(f"{path}: holds a {type(state).__name__}, not a state dict of {backbone} tensors")
    return state


def _shown(keys: list[str]) -> str:
    more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def load_backbone_weights(features: ResNetFeatures, path: Path, backbone: str) -> None:
    """Loads a torchvision ResNet state dict into ``features``; its ``fc.*`` classifier is ignored.

    Anything else that does not match (another depth, a whole checkpoint, other shapes) is a
    ``UserError`` naming the file and a few offending keys. BatchNorm fills in the
    ``num_batches_tracked`` counters that torchvision's older files lack.
    """
    state = {key: value for key, value in _read_state_dict(path, backbone).items() if not key.startswith("fc.")}
    own = features.state_dict()
    wrong_shape = [f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}"
                   for key, value in state.items() if key in own and value.shape != own[key].shape]
    if wrong_shape:
        raise UserError(f"{path}: weights do not fit {backbone}: wrong shape {_shown(wrong_shape)}")
    result = features.load_state_dict(state, strict=False)
    problems = ([f"missing {_shown(result.missing_keys)}"] if result.missing_keys else []) + \
               ([f"unexpected {_shown(result.unexpected_keys)}"] if result.unexpected_keys else [])
    if problems:
        raise UserError(f"{path}: weights do not fit {backbone}: {'; '.join(problems)}")


register_model(ModelSpec(
    name="deeplabv3plus",
    build=lambda args, genotype, weights: DeepLabV3Plus(args["num_classes"], args["backbone"], args["output_stride"],
                                                        weights),
    describe=lambda args, genotype: f"DeepLabV3+ {args['backbone']} at output stride {args['output_stride']}",
    export_metadata=lambda args, genotype: {"model": "deeplabv3plus", "backbone": args["backbone"],
                                            "output_stride": str(args["output_stride"])},
    flags=frozenset({"backbone", "output_stride", "backbone_weights"}),
))
