"""The decoders of the decoder search and their ops, built as the original builds them (its
``src/nn/micro_decoders.py`` and ``src/nn/layer_factory.py``): the released architectures' exact parameter
counts, per block and in total, output strides, and the classifier's input as the original's ``collect_all``
assembles it."""

import pytest
import torch
import torch.nn.functional as F

from modeling.nas_segm.encoder import WACV_TAPS, MobileNetV2Encoder
from modeling.nas_segm.ops import OPS, ConcatReduce, ParamSum, SepConv, concat_step_by_step
from modeling.nas_segm.template_decoder import TemplateDecoder

# [templates [op1, op2, aggregation], blocks [input1, input2, template, repeats - 1, log2 stride]], as released
WACV_ARCH0 = [[[3, 0, 1], [4, 1, 1], [3, 1, 1]],
              [[0, 1, 0, 0, 1], [2, 1, 2, 1, 0], [3, 1, 1, 1, 0], [1, 1, 2, 0, 0], [3, 0, 2, 0, 0], [5, 3, 2, 1, 0],
               [0, 5, 0, 1, 0]]]
WACV_ARCH1 = [[[1, 1, 0], [1, 3, 0], [3, 4, 0]],
              [[1, 1, 0, 0, 0], [0, 1, 1, 1, 1], [3, 1, 2, 3, 0], [3, 0, 2, 2, 0], [0, 1, 2, 0, 0], [2, 1, 1, 3, 0],
               [4, 0, 2, 2, 0]]]


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("genotype, blocks, pre_clf, total", [
    (WACV_ARCH0, [20_160, 41_984, 52_096, 7_040, 16_784, 47_680, 12_400], 14_464, 280_147),
    (WACV_ARCH1, [7_616, 21_256, 57_344, 38_528, 5_296, 19_712, 38_528], 12_416, 268_235),
], ids=["arch0", "arch1"])
def test_released_wacv_architectures_have_the_published_parameter_counts(genotype, blocks, pre_clf, total):
    decoder = TemplateDecoder(genotype, [24, 32], num_classes=19)
    assert [count(block) for block in decoder.blocks] == blocks
    assert (count(decoder.pre_clf), count(decoder.conv_clf)) == (pre_clf, 10_963)
    assert count(MobileNetV2Encoder(WACV_TAPS)) + count(decoder) == total


@pytest.mark.parametrize("classes, agg, repeats, totals", [(11, 64, 2, (275_531, 263_619)),
                                                          (19, 48, 1, (228_347, 198_587))],
                         ids=["camvid", "search-settings"])
def test_other_settings_match_the_original_counts(classes, agg, repeats, totals):
    encoder = count(MobileNetV2Encoder(WACV_TAPS))
    assert tuple(encoder + count(TemplateDecoder(g, [24, 32], classes, agg, repeats))
                 for g in (WACV_ARCH0, WACV_ARCH1)) == totals


def test_output_stride_and_collected_blocks():
    encoder = MobileNetV2Encoder(WACV_TAPS).eval()
    for genotype, collected in ((WACV_ARCH0, [4, 6, 7, 8]), (WACV_ARCH1, [5, 6, 7, 8])):
        decoder = TemplateDecoder(genotype, [24, 32], 19).eval()
        assert decoder.collected == collected  # arch0: b2, b4, b5, b6 (224 channels); arch1: b3..b6 (192)
        with torch.no_grad():
            assert decoder(encoder(torch.randn(1, 3, 128, 256))).shape == (1, 19, 32, 64)  # stride 4


# a sampled candidate whose blocks never read the stride-4 feature (input 0)
WACV_FEATURE_0_UNREAD = [[[2, 5, 0], [1, 2, 0], [2, 5, 0]],
                         [[1, 1, 0, 0, 1], [1, 1, 1, 3, 1], [1, 1, 0, 1, 1], [1, 3, 0, 3, 0], [5, 1, 1, 0, 0],
                          [1, 3, 2, 3, 0], [2, 2, 1, 3, 0]]]


def test_an_encoder_feature_no_block_reads_is_not_classified():
    # The original collects block outputs only (TemplateDecoder._collect_inds starts empty): 257,395 parameters,
    # a 256-channel head input and stride 8, where classifying the unread stride-4 feature too gives 258,931,
    # 280 channels and stride 4.
    decoder = TemplateDecoder(WACV_FEATURE_0_UNREAD, [24, 32], num_classes=19).eval()
    assert decoder.collected == [4, 6, 7, 8] and decoder.pre_clf[0].in_channels == 256
    assert count(MobileNetV2Encoder(WACV_TAPS)) + count(decoder) == 257_395
    with torch.no_grad():
        assert decoder(MobileNetV2Encoder(WACV_TAPS).eval()(torch.randn(1, 3, 128, 256))).shape == (1, 19, 16, 32)


def collect_all(features):
    """The original's ``collect_all``, step by step: the running stack or the next feature, whichever is shorter,
    goes to the other's size before they are concatenated."""
    out = features[0]
    for feature in features[1:]:
        if out.shape[2] > feature.shape[2]:
            feature = F.interpolate(feature, size=out.shape[2:], mode="bilinear", align_corners=False)
        elif feature.shape[2] > out.shape[2]:
            out = F.interpolate(out, size=feature.shape[2:], mode="bilinear", align_corners=False)
        out = torch.cat([out, feature], 1)
    return out


def test_the_head_concatenates_step_by_step_as_the_originals_collect_all():
    torch.manual_seed(0)
    strides_32_16_4 = [torch.randn(1, 2, 3, 4), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 24, 32)]
    stacked = concat_step_by_step(strides_32_16_4)
    assert torch.equal(stacked, collect_all(strides_32_16_4))
    straight = F.interpolate(strides_32_16_4[0], size=(24, 32), mode="bilinear", align_corners=False)
    assert (stacked[:, :2] - straight).abs().max() > 0.1  # 32 -> 16 -> 4 is not 32 -> 4
    tallest_first = [strides_32_16_4[2], strides_32_16_4[0]]
    assert torch.equal(concat_step_by_step(tallest_first), collect_all(tallest_first))


def test_op_formulas_by_hand():
    # SepConv(Ci->Co, k, rep) = (Ci k^2 + Ci Co + 2 Co) + (rep - 1)(Co k^2 + Co^2 + 2 Co)
    assert count(SepConv(32, 64, 3, 2, 1, 2)) == (32 * 9 + 32 * 64 + 128) + (64 * 9 + 64 * 64 + 128)
    assert count(OPS["max_pool_3x3"](24, 48, 2, 2)) == 24 * 48 + 2 * 48
    assert count(ConcatReduce(48, 64, 64, False)) == (48 * 64 + 128) + 4 * 64 + 2 * 64 * 64
    assert count(ParamSum(48, 64, 64, False)) == (48 * 64 + 128) + 2 * 64
    x = torch.randn(2, 8, 16, 16)
    assert OPS["sep_conv_3x3"](8, 16, 2, 2)(x).shape == (2, 16, 4, 4)  # the stride in each of the 2 repeats
    assert OPS["skip_connect"](8, 16, 2, 2)(x).shape == (2, 16, 16, 16)  # ignores the stride
    assert OPS["global_average_pool"](8, 8, 2, 1)(x).shape == (2, 8, 16, 16)
    psum = ParamSum(8, 8, 8, larger=True)
    small = torch.randn(2, 8, 8, 8)
    assert psum(x, small).shape == (2, 8, 16, 16) and ParamSum(8, 8, 8, larger=False)(x, small).shape[-1] == 8
    assert torch.allclose(psum(x, x), 2 * x)  # a = b = 1 at the start


CVPR_ARCH0 = [[8, [0, 0, 5, 2], [0, 2, 8, 8], [0, 5, 1, 4]], [[3, 3], [3, 2], [3, 0]]]


def test_the_released_cvpr_arch0_has_the_published_counts_and_output_stride():
    from modeling.nas_segm.encoder import CVPR_TAPS
    from modeling.nas_segm.micro_decoder import MicroDecoder

    encoder = MobileNetV2Encoder(CVPR_TAPS).eval()
    decoder = MicroDecoder(CVPR_ARCH0, [24, 32, 96, 320], num_classes=21).eval()
    assert [count(adapt) for adapt in decoder.adapt] == [1_664, 2_176, 6_272, 20_608]
    assert [count(cell) for cell in decoder.cells] == [253_952] * 3  # 2 x 122,752 cells + 8,448 to aggregate
    assert count(decoder.cells[0].cells[0]) == 122_752
    assert (count(decoder.pre_clf), count(decoder.conv_clf)) == (12_416, 12_117)
    assert count(encoder) + count(decoder) == 2_629_909  # without the search's auxiliary classifiers
    assert decoder.collected == [4, 5, 6] and decoder.cells[0].cells[0].loose_ends == [1, 4, 7, 10]
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 375, 500))
        assert decoder(features).shape == (1, 21, 94, 125)  # stride 4, as released
        # The classifier reads cells 4, 5, 6 at strides 32, 16, 4: the first goes 32 -> 16 -> 4, as the original's.
        # (Features of unit scale: an untrained encoder's vanish, and so would the difference.)
        features = [torch.randn_like(feature) for feature in features]
        cells = [decoder._outputs(features)[i] for i in decoder.collected]
        assert torch.equal(decoder(features), decoder.conv_clf(decoder.pre_clf(F.relu(collect_all(cells)))))


@pytest.mark.parametrize("genotype, total", [
    ([[2, [1, 0, 3, 6], [0, 1, 2, 8], [2, 0, 6, 1]], [[2, 3], [3, 1], [4, 4]]], 2_810_133),  # arch1
    ([[5, [0, 0, 4, 1], [3, 2, 0, 1], [5, 6, 5, 0]], [[1, 3], [4, 3], [2, 2]]], 2_853_141),  # arch2
], ids=["arch1", "arch2"])
def test_the_released_cvpr_arch1_and_arch2_have_the_original_counts_and_stride_8(genotype, total):
    from modeling.nas_segm.encoder import CVPR_TAPS
    from modeling.nas_segm.genotype import released
    from modeling.nas_segm.micro_decoder import MicroDecoder

    name = "cvpr_arch1" if total == 2_810_133 else "cvpr_arch2"
    assert [list(part) for part in released(name).genotype_json()["config"]] == genotype
    encoder = MobileNetV2Encoder(CVPR_TAPS).eval()
    decoder = MicroDecoder(genotype, [24, 32, 96, 320], num_classes=21).eval()
    assert count(encoder) + count(decoder) == total
    with torch.no_grad():
        assert decoder(encoder(torch.randn(1, 3, 375, 500))).shape == (1, 21, 47, 63)  # as the original's fixtures


def test_the_search_auxiliary_heads_have_the_original_counts_and_outputs():
    from modeling.nas_segm.encoder import CVPR_TAPS
    from modeling.nas_segm.micro_decoder import MicroDecoder

    encoder = MobileNetV2Encoder(CVPR_TAPS)
    released = MicroDecoder(CVPR_ARCH0, [24, 32, 96, 320], 21, aux_heads=True)
    assert [count(head) for head in released.aux_heads] == [12_117] * 3  # a 3x3 conv 64 -> 21 each
    assert count(encoder) + count(released) == 2_666_260  # the released files still hold them
    search = MicroDecoder(CVPR_ARCH0, [24, 32, 96, 320], 21, agg_size=48, sep_repeats=1, aux_heads=True,
                          aux_cell=True)
    without_aux = sum(p.numel() for name, p in search.named_parameters() if "aux" not in name)
    assert (count(encoder) + count(search), count(encoder) + without_aux) == (2_412_884, 2_212_517)
    search.eval()
    with torch.no_grad():
        features = encoder.eval()(torch.randn(1, 3, 64, 64))
        logits, aux = search.forward_with_aux(features)
        assert torch.equal(logits, search(features))
    # the cells merge at the larger input: cell 0 = M(l4, l4) at stride 32, cell 1 = M(l4, l3) at 16, cell 2 at 4
    assert [a.shape for a in aux] == [(1, 21, 2, 2), (1, 21, 4, 4), (1, 21, 16, 16)]
