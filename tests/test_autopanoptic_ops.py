"""Auto-Panoptic's head and attention ops as the original constructs them (its ``modeling/search_space.py``),
and the attention widths of its released network."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modeling.autopanoptic.genotype import HEAD_OPS, INTER_OPS, INTER_REDUCTIONS, released
from modeling.autopanoptic.ops import (Attention, ModulatedDeformConv, SeparableConv, attention_layer, head_layer,
                                       head_op)


@pytest.mark.parametrize("op", range(len(HEAD_OPS)), ids=HEAD_OPS)
def test_every_head_op_keeps_the_size_and_ends_with_group_norm_and_relu(op):
    layer = head_op(op, 64, 32)
    assert isinstance(layer[1], nn.GroupNorm) and layer[1].num_groups == 32 and isinstance(layer[2], nn.ReLU)
    assert layer(torch.randn(2, 64, 9, 11)).shape == (2, 32, 9, 11)


@pytest.mark.parametrize("kernel, padding", [(3, 2), (5, 4)])
def test_atrous_convs_have_dilation_2(kernel, padding):
    conv = head_op(HEAD_OPS.index(f"atrous_conv_{kernel}x{kernel}"), 32, 32)[0]
    assert conv.dilation == (2, 2) and conv.padding == (padding, padding) and conv.kernel_size == (kernel, kernel)
    assert torch.equal(conv.bias, torch.zeros(32))


def test_the_separable_conv_is_depthwise_then_pointwise_with_nothing_between():
    conv = head_op(HEAD_OPS.index("dw_conv_5x5"), 32, 64)[0]
    assert isinstance(conv, SeparableConv) and len(list(conv.children())) == 2
    assert conv.depthwise.groups == 32 and conv.depthwise.kernel_size == (5, 5) and conv.pointwise.kernel_size == (1, 1)
    x = torch.randn(1, 32, 7, 7)
    expected = F.conv2d(F.conv2d(x, conv.depthwise.weight, conv.depthwise.bias, padding=2, groups=32),
                        conv.pointwise.weight, conv.pointwise.bias)
    assert torch.allclose(conv(x), expected, atol=1e-6)


@pytest.mark.parametrize("kernel", [3, 5])
def test_a_fresh_deformable_conv_is_half_the_plain_conv_plus_bias(kernel):
    torch.manual_seed(0)
    conv = ModulatedDeformConv(8, 6, kernel)
    assert conv.conv_offset.out_channels == 3 * kernel * kernel
    assert not conv.conv_offset.weight.any() and not conv.conv_offset.bias.any()
    with torch.no_grad():
        conv.bias.uniform_(-1, 1)
        x = torch.randn(2, 8, 10, 9)
        expected = 0.5 * F.conv2d(x, conv.weight, padding=kernel // 2) + conv.bias[:, None, None]
        assert torch.allclose(conv(x), expected, atol=1e-6)


def test_deformable_offsets_and_mask_learn():
    conv = ModulatedDeformConv(4, 4, 3)
    conv(torch.randn(1, 4, 6, 6)).square().sum().backward()
    assert conv.conv_offset.weight.grad.abs().sum() > 0 and conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("reduction", INTER_REDUCTIONS)
def test_attention_is_one_minus_an_se_gate_with_hidden_width_out_over_r(reduction):
    torch.manual_seed(0)
    attention = Attention(24, 32, reduction)
    assert attention.squeeze.out_features == 32 // reduction
    features = [torch.randn(2, 8, 5, 5) for _ in range(3)]
    gain = attention(features)
    pooled = torch.cat(features, 1).mean(dim=(2, 3))
    hidden = torch.relu(pooled @ attention.squeeze.weight.T + attention.squeeze.bias)
    expected = 1 - torch.sigmoid(hidden @ attention.excite.weight.T + attention.excite.bias)
    assert gain.shape == (2, 32, 1, 1) and torch.allclose(gain.flatten(1), expected, atol=1e-6)
    assert ((gain > 0) & (gain < 1)).all()


def test_a_supernet_layer_holds_every_op_and_runs_the_chosen_one():
    torch.manual_seed(0)
    layer, attention = head_layer(32, 32), attention_layer(64, 32)
    assert len(layer.ops) == len(HEAD_OPS) and len(attention.ops) == len(INTER_REDUCTIONS)
    x = torch.randn(1, 32, 6, 6)
    assert torch.equal(layer(x, 4), layer.ops[4](x)) and not torch.equal(layer(x, 4), layer(x, 5))
    assert attention(x.repeat(1, 2, 1, 1), 2).shape == (1, 32, 1, 1)
    with pytest.raises(ValueError, match="needs the path's op"):
        layer(x)
    fixed = head_layer(32, 32, op=4)
    assert len(fixed.ops) == 1 and isinstance(fixed.ops[0][0], nn.Conv2d) and fixed(x, 0).shape == x.shape


def test_the_released_coco_network_builds_the_originals_attention_widths():
    # The original parses the reduction from the op's name, int("Inter-r16"[-1]) == 6: the op the paper calls
    # r16 has hidden width out // 6, which COCO_3.8G uses on P2's semantic features and on P5.
    from modeling.autopanoptic.backbone import RETRAIN_WIDTHS
    from modeling.autopanoptic.network import AutoPanoptic, PanopticSizes

    assert (INTER_OPS, INTER_REDUCTIONS) == (("se_r4", "se_r8", "se_r6"), (4, 8, 6))
    with torch.device("meta"):  # shapes only: the paper's widths (FPN 256, semantic subnet 128), nothing allocated
        network = AutoPanoptic(80, 53, released("COCO_3.8G"), PanopticSizes(widths=RETRAIN_WIDTHS))
    hidden = [[layer.ops[0].squeeze.out_features for layer in part]
              for part in (network.things_to_stuff, network.stuff_to_things)]
    assert hidden == [[128 // 6, 32, 32, 32], [32, 32, 32, 256 // 6, 64]] == [[21, 32, 32, 32], [32, 32, 32, 42, 64]]
