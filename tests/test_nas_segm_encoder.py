"""The decoder search's MobileNetV2 encoder: the original's exact construction (shared/reference/nas-segm.md §4)."""

import pytest
import torch

from modeling.nas_segm.encoder import CVPR_TAPS, WACV_TAPS, MobileNetV2Encoder
from utils.torchvision_compat import import_torchvision


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("taps, expected, torchvision_stages", [(WACV_TAPS, 56_576, 7), (CVPR_TAPS, 1_812_800, 18)])
def test_exact_parameter_counts_and_the_one_difference_from_torchvision(taps, expected, torchvision_stages):
    encoder = MobileNetV2Encoder(taps)
    assert count(encoder) == expected
    reference = import_torchvision().models.mobilenet_v2(weights=None).features[:torchvision_stages]
    assert count(encoder) - count(reference) == 32 * 32 + 2 * 32  # the t=1 block's kept 1x1 expansion + BN
    assert count(encoder.layer1) == count(reference[0])
    assert count(encoder.layer2) - count(reference[1]) == 1_088
    for stage, (first, last) in enumerate(TORCHVISION_STAGES[: taps[-1]], start=1):  # every other stage: equal
        assert count(getattr(encoder, f"layer{stage + 2}")) == count(reference[first:last])


TORCHVISION_STAGES = [(2, 4), (4, 7), (7, 11), (11, 14), (14, 17), (17, 18)]  # features[...] of stages 1..6


def test_features_have_the_stated_channels_and_strides_and_the_original_names():
    encoder = MobileNetV2Encoder(CVPR_TAPS).eval()
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 96, 128))
    assert [(f.shape[1], 96 // f.shape[2], 128 // f.shape[3]) for f in features] == [(24, 4, 4), (32, 8, 8),
                                                                                      (96, 16, 16), (320, 32, 32)]
    assert [(i.channels, i.stride) for i in encoder.feature_info] == [(24, 4), (32, 8), (96, 16), (320, 32)]
    names = set(encoder.state_dict())
    assert {"layer1.0.weight", "layer2.0.conv.0.weight", "layer8.0.conv.7.running_var"} <= names
    assert not hasattr(MobileNetV2Encoder(WACV_TAPS), "layer5")  # built only up to the deepest tap
    with pytest.raises(ValueError, match="taps must be increasing"):
        MobileNetV2Encoder((2, 1))


def test_residuals_where_the_shape_allows():
    encoder = MobileNetV2Encoder(WACV_TAPS)
    assert [block.residual for block in encoder.layer4] == [False, True, True]  # 24 -> 32 at stride 2, then 32 -> 32
    assert encoder.layer2[0].residual is False  # 32 -> 16
