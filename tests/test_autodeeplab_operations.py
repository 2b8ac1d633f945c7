import pytest
import torch
from torch import nn

from modeling.autodeeplab.genotype import PRIMITIVES
from modeling.autodeeplab.operations import OPS, PARAMETER_FREE_OPS, Stem, half_size


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", PRIMITIVES[1:])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(17, 17), (33, 20), (8, 9)])
def test_every_op_keeps_channels_and_maps_size_to_ceil_half(name, stride, size):
    op = OPS[name](6, stride, True)
    out = op(torch.randn(2, 6, *size))
    expected = size if stride == 1 else (half_size(size[0]), half_size(size[1]))
    assert out.shape == (2, 6, *expected)


@pytest.mark.parametrize("c", [4, 20])
def test_parameter_counts_follow_the_paper_definitions(c):
    # separable: two (depthwise KxK + pointwise CxC + BN γβ) layers; atrous: dense KxK CxC + BN γβ
    for k in (3, 5):
        assert n_params(OPS[f"sep_conv_{k}x{k}"](c, 1, True)) == 2 * (k * k * c + c * c + 2 * c)
        assert n_params(OPS[f"dil_conv_{k}x{k}"](c, 1, True)) == k * k * c * c + 2 * c
        assert n_params(OPS[f"dil_conv_{k}x{k}"](c, 2, True)) == k * k * c * c + 2 * c
    for name in PARAMETER_FREE_OPS:
        assert n_params(OPS[name](c, 1, True)) == 0


def test_atrous_conv_is_dense_with_rate_two():
    conv = OPS["dil_conv_3x3"](5, 1, True).conv
    assert conv.groups == 1 and conv.dilation == (2, 2) and conv.kernel_size == (3, 3)


def test_separable_conv_only_first_layer_strides():
    op = OPS["sep_conv_3x3"](4, 2, True)
    depthwise = [m for m in op if isinstance(m, nn.Conv2d) and m.groups == 4]
    assert [m.stride for m in depthwise] == [(2, 2), (1, 1)]


def test_skip_connect_is_identity_at_stride_one():
    x = torch.randn(1, 3, 5, 5)
    assert torch.equal(OPS["skip_connect"](3, 1, True)(x), x)


def test_stem_is_the_paper_stem():
    stem = Stem((64, 64, 128))
    early, out = stem(torch.randn(2, 3, 65, 97))
    assert early.shape == (2, 64, 33, 49) and out.shape == (2, 128, 17, 25)
    assert n_params(stem) == 112_832  # three 3x3 convs 3-64-64-128 plus BN γβ
