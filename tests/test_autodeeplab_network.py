import pytest
import torch
from torch import nn

from modeling.autodeeplab.genotype import Architecture, paper_architecture
from modeling.autodeeplab.model_retrain import AutoDeepLab, RetrainCell
from modeling.autodeeplab.operations import FactorizedReduce
from modeling.autodeeplab.costs import component_costs


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("fm,expected", [(20, 10_147_427), (32, 21_622_451), (48, 44_424_691)])
def test_paper_parameter_counts_exactly(fm, expected):
    assert n_params(AutoDeepLab(paper_architecture(fm), num_classes=19)) == expected


def test_per_component_breakdown_auto_deeplab_s():
    model = AutoDeepLab(paper_architecture(20), num_classes=19)
    cells = [38_240, 38_960, 38_400, 135_200, 512_000, 151_200, 536_000, 536_000, 2_038_400, 2_102_400,
             616_000, 175_200]
    assert n_params(model.stem) == 112_832
    assert [n_params(c) for c in model.cells] == cells
    assert n_params(model.aspp) == 1_815_552
    assert n_params(model.decoder) == 1_296_160 + 4_883  # decoder convs + the 256->19 logits with bias


def test_cell_parameters_follow_73c2_plus_256c():
    c = 40  # cell 3 of Auto-DeepLab-S: level 1, reads two 100-channel cells
    cell = RetrainCell(paper_architecture().cell, 5, 100, 100, c, level_change=1)
    ops_only = sum(n_params(op) for block in cell.ops for op in block)
    assert ops_only == 73 * c * c + 256 * c


PATHS = [
    (0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1),
    (1, 2, 3, 3, 3, 3, 2, 2, 3, 3, 3, 3),  # never at stride 4 after the stem
    (0, 1, 0, 1, 0, 1, 2, 3, 2, 1, 0, 0),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("size", [(65, 97), (50, 41)])
def test_any_path_and_odd_sizes(path, size):
    arch = Architecture(path, paper_architecture().cell, 4, 5)
    model = AutoDeepLab(arch, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 5, *size)


def test_decoder_reads_a_stride_4_feature_whatever_the_path():
    paper = AutoDeepLab(paper_architecture(4), num_classes=3)
    assert paper.low_level_layer == 2  # the last stride-4 cell, as the official network
    never = AutoDeepLab(Architecture(PATHS[1], paper_architecture().cell, 4, 5), num_classes=3)
    assert never.low_level_layer == -1
    assert never.decoder.low_level[0].in_channels == 128  # the stem output
    low, _ = never.encode(torch.randn(2, 3, 64, 64))
    assert low.shape[-2:] == (16, 16)


def test_ops_are_applied_to_the_inputs_they_were_decoded_with():
    genotype = (((0, "skip_connect"), (1, "max_pool_3x3")), ((2, "avg_pool_3x3"), (0, "skip_connect")))
    cell = RetrainCell(genotype, 2, 6, 6, 6, level_change=0).eval()
    s0, s1 = torch.randn(1, 6, 9, 9), torch.randn(1, 6, 9, 9)
    out = cell(s0, s1, (9, 9))
    p0, p1 = s0, cell.preprocess_prev(s1)  # equal widths: H^{l-2} is not projected
    b0 = p0 + nn.functional.max_pool2d(p1, 3, 1, 1)
    b1 = nn.functional.avg_pool2d(b0, 3, 1, 1, count_include_pad=False) + p0
    torch.testing.assert_close(out, torch.cat([b0, b1], dim=1))


def test_downsampling_cell_strides_only_ops_on_cell_inputs():
    genotype = (((0, "skip_connect"), (1, "sep_conv_3x3")), ((2, "skip_connect"), (1, "dil_conv_3x3")))
    cell = RetrainCell(genotype, 2, 8, 8, 8, level_change=1)
    assert isinstance(cell.ops[0][0], FactorizedReduce)
    assert isinstance(cell.ops[1][0], nn.Identity)  # reads block 0, already at the new stride
    assert cell(torch.randn(2, 8, 9, 9), torch.randn(2, 8, 9, 9), (5, 5)).shape == (2, 16, 5, 5)


@pytest.mark.parametrize("fm,gmacs", [(20, 320.45), (32, 439.92), (48, 662.42)])
def test_multi_adds_match_a_plain_convolution_count_at_1025x2049(fm, gmacs):
    # the plain count (global image pooling, no space-to-batch padding)
    rows = component_costs(AutoDeepLab(paper_architecture(fm), num_classes=19), (1025, 2049))
    assert rows[-1][0] == "total" and round(rows[-1][2], 2) == gmacs
    assert rows[-1][2] == pytest.approx(sum(macs for _, _, macs in rows[:-1]))


def test_multi_adds_breakdown_auto_deeplab_s():
    rows = {name: macs for name, _, macs in
            component_costs(AutoDeepLab(paper_architecture(20), num_classes=19), (1025, 2049))}
    cells = sum(macs for name, macs in rows.items() if name.startswith("cell"))
    assert (round(rows["stem"], 2), round(cells, 2), round(rows["ASPP"], 2)) == (30.01, 60.66, 58.39)
    assert round(rows["decoder (with logits)"], 2) == round(170.74 + 0.64, 2)


@pytest.mark.parametrize("path", [(0, 0, 1, 2), (1, 2, 3, 3), (0, 1, 0, 0)])
def test_the_encoder_states_the_channels_and_stride_of_what_it_returns(path):
    paper = paper_architecture(4)
    model = AutoDeepLab(Architecture(path, paper.cell[:4], 4, 3), num_classes=3).eval()
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features = model.encode(image)
    for feature, info in zip(features, model.feature_info):
        assert feature.shape[1] == info.channels
        assert (64 / feature.shape[2], 96 / feature.shape[3]) == (info.stride, info.stride)


def test_the_baseline_encoder_states_its_features_too():
    from modeling.deeplabv3plus import DeepLabV3Plus

    for stride in (8, 16):
        model = DeepLabV3Plus(3, "resnet50", stride).eval()
        with torch.no_grad():
            features = model.encode(torch.randn(1, 3, 64, 64))
        assert [(f.shape[1], 64 // f.shape[2]) for f in features] == [(i.channels, i.stride) for i in model.feature_info]
