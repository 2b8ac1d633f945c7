"""The MobileNetV2 encoder of Nekrasov et al.'s decoder search, as the original builds it (its
``src/nn/encoders.py``, from Light-Weight RefineNet's ``MBv2``), returning the features its decoders read.

It differs from ``torchvision.models.mobilenet_v2`` in one place that changes the weights: the first
inverted-residual block (expansion t=1) keeps its 1x1 expansion conv (32 -> 32, BN, ReLU6), which
torchvision drops when t = 1 (+1,088 parameters). Like the original it has no last 1x1 conv (320 -> 1280)
and no classifier, and it builds the stages only up to the deepest feature returned.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from modeling.heads import FeatureInfo
from utils.errors import UserError

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


_OURS_KEY = re.compile(r"layer(\d+)\.")
_TORCHVISION_KEY = re.compile(r"(?:features|classifier)\.")
_TORCHVISION_BLOCK = re.compile(r"features\.(\d+)\.")
# Our flat ``InvertedResidual.conv`` index -> the torchvision submodule holding the same layer. t = 6 blocks have
# expand conv+BN, depthwise conv+BN, project conv, BN; t = 1 blocks lack the expansion (our conv.0/conv.1: None).
_TORCHVISION_IN_BLOCK = {6: {0: "conv.0.0", 1: "conv.0.1", 3: "conv.1.0", 4: "conv.1.1", 6: "conv.2", 7: "conv.3"},
                         1: {0: None, 1: None, 3: "conv.0.0", 4: "conv.0.1", 6: "conv.1", 7: "conv.2"}}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The file's state dict (unwrapped from ``state_dict``/``model``, ``module.`` stripped), or a UserError."""
    if not path.exists():
        raise UserError(f"--encoder-weights {path}: no such file")
    if not path.is_file():
        raise UserError(f"--encoder-weights {path}: not a file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt, truncated, not a torch file, or pickled objects weights_only refuses
        raise UserError(f"--encoder-weights {path}: not a readable PyTorch weights file "
                        f"({type(error).__name__})") from None
    if isinstance(loaded, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(loaded.get(wrapper), dict):
                loaded = loaded[wrapper]
                break
    if not isinstance(loaded, dict) or not loaded:
        what = "an empty dict" if isinstance(loaded, dict) else f"a {type(loaded).__name__}"
        raise UserError(f"--encoder-weights {path}: holds {what}, not a state dict of tensors")
    state = {}
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise UserError(f"--encoder-weights {path}: entry {key!r} is not a tensor ({type(value).__name__}); "
                            f"expected a state dict")
        state[key.removeprefix("module.")] = value
    return state


def _check_shape(path: Path, key: str, value: torch.Tensor, expected: torch.Tensor, ours: str) -> None:
    if value.shape != expected.shape:
        target = "" if key == ours else f" (for our {ours})"
        raise UserError(f"--encoder-weights {path}: {key} has shape {list(value.shape)}, the encoder needs "
                        f"{list(expected.shape)}{target}")


def _map_ours(path: Path, state: dict[str, torch.Tensor], encoder: MobileNetV2Encoder,
              own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    deepest = encoder.taps[-1] + 2  # the last ``layerN`` built
    for key in state:
        match = _OURS_KEY.match(key)
        if key not in own and not (match and int(match.group(1)) > deepest):
            raise UserError(f"--encoder-weights {path}: unexpected key {key} for this encoder (our layout)")
    for key, expected in own.items():
        if key not in state:
            raise UserError(f"--encoder-weights {path}: missing key {key} (our layout)")
        _check_shape(path, key, state[key], expected, key)
    return {key: state[key] for key in own}


def _map_torchvision(path: Path, state: dict[str, torch.Tensor], encoder: MobileNetV2Encoder,
                     own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    module_map = {"layer1.0": "features.0.0", "layer1.1": "features.0.1"}  # our module -> torchvision's (None: made)
    block_index = 0
    for stage, (expansion, _, blocks, _) in enumerate(STAGES[:encoder.taps[-1] + 1]):
        for block in range(blocks):
            block_index += 1
            for ours, theirs in _TORCHVISION_IN_BLOCK[1 if expansion == 1 else 6].items():
                module_map[f"layer{stage + 2}.{block}.conv.{ours}"] = (
                    None if theirs is None else f"features.{block_index}.{theirs}")
    mapped, needed = {}, set()
    for key, expected in own.items():
        module, name = key.rsplit(".", 1)
        theirs = module_map[module]
        if theirs is None:  # the t = 1 expansion torchvision lacks: identity conv, identity BN
            if name == "weight" and expected.dim() == 4:
                value = torch.eye(expected.shape[0], dtype=expected.dtype).view(expected.shape)
            elif name in ("weight", "running_var"):
                value = torch.ones_like(expected)
            else:  # bias, running_mean, num_batches_tracked
                value = torch.zeros_like(expected)
            mapped[key] = value
            continue
        their_key = f"{theirs}.{name}"
        if their_key not in state:
            raise UserError(f"--encoder-weights {path}: missing key {their_key} (torchvision MobileNetV2 layout, "
                            f"needed for our {key})")
        _check_shape(path, their_key, state[their_key], expected, key)
        mapped[key] = state[their_key]
        needed.add(their_key)
    for key in state:  # blocks beyond this encoder's depth, features.18 and the classifier are not used
        match = _TORCHVISION_BLOCK.match(key)
        if key not in needed and match and int(match.group(1)) <= block_index:
            raise UserError(f"--encoder-weights {path}: unexpected key {key} (torchvision MobileNetV2 layout)")
    return mapped


def load_encoder_weights(encoder: MobileNetV2Encoder, path: str | Path) -> str:
    """Load the state dict in ``path`` into ``encoder``; returns which layout it was in.

    The file is read with ``torch.load(..., weights_only=True)``; it may hold the state dict itself or a dict
    with it under ``state_dict`` or ``model``, and a leading ``module.`` (DataParallel) is stripped from keys.
    Two layouts are accepted:

    * ours (``layer1.*``, ``layer2.*``, ...): every key of the encoder with its shape; keys of stages deeper
      than this encoder builds are ignored (a CVPR encoder's file loads into a WACV encoder).
    * torchvision's ``mobilenet_v2().state_dict()`` (``features.*``, ``classifier.*``): ``features.0`` is our
      stem, ``features.1..17`` our blocks in order; blocks beyond this encoder's depth, ``features.18`` and the
      classifier are ignored. torchvision's t=1 block has no 1x1 expansion conv; ours (32 -> 32, BN, ReLU6) is
      set to the identity (conv weight = identity matrix, BN weight 1, bias 0, running mean 0, running var 1),
      and the block's depthwise conv, BN, projection and BN take torchvision's. Its input is the stem's ReLU6
      output, in [0, 6], so identity + ReLU6 passes it through and the encoder computes what torchvision's
      ``features`` does, up to BN's eps (a factor 1/sqrt(1 + eps)) in eval mode.

    Anything else (missing or unreadable file, not a dict of tensors, unknown keys, a missing key or a wrong
    shape) raises ``UserError`` with one line naming the file and the key.
    """
    path = Path(path)
    state = _read_state_dict(path)
    own = encoder.state_dict()
    first = next(iter(state))
    if _OURS_KEY.match(first):
        mapped, layout = _map_ours(path, state, encoder, own), "our layout"
    elif _TORCHVISION_KEY.match(first):
        mapped, layout = _map_torchvision(path, state, encoder, own), "torchvision MobileNetV2 layout"
    else:
        raise UserError(f"--encoder-weights {path}: unrecognised key {first}; expected this encoder's layout "
                        f"(layer1.*, layer2.*, ...) or torchvision's MobileNetV2 (features.*, classifier.*)")
    encoder.load_state_dict(mapped, strict=True)
    return layout
