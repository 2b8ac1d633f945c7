"""Auto-Panoptic's ShuffleNetV2 choice backbone against the reference's independent counts: feature shapes,
parameters at both widths, and the ImageNet-classifier Multi-Adds that name the "3.8G" network."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from modeling.autopanoptic.backbone import RETRAIN_WIDTHS, SEARCH_WIDTHS, ChoiceBackbone, channel_shuffle
from modeling.autopanoptic.genotype import BACKBONE_OPS, released

SMALL_WIDTHS, SMALL_REPEATS = (16, 32, 64, 128, 256), (2, 2, 4, 2)


def parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_channel_shuffle_splits_eight_channels_as_the_original():
    kept, branch = channel_shuffle(torch.arange(8.0).view(1, 8, 1, 1))
    assert kept.flatten().tolist() == [0, 4, 1, 5] and branch.flatten().tolist() == [2, 6, 3, 7]


def test_the_coco_network_at_3_8g_widths_has_the_published_shapes_and_counts():
    backbone = ChoiceBackbone(RETRAIN_WIDTHS, ops=released("COCO_3.8G").backbone).eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 256, 256))
    assert [tuple(f.shape[1:]) for f in features] == [(172, 64, 64), (432, 32, 32), (864, 16, 16), (1728, 8, 8)]
    assert round(parameters(backbone) / 1e6, 1) == 21.6
    # DetNAS's ImageNet classifier on this body: 1x1 conv to 1728, BatchNorm, ReLU, average pool, FC 1000
    classifier = nn.Sequential(nn.Conv2d(1728, 1728, 1, bias=False), nn.BatchNorm2d(1728), nn.ReLU(),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1728, 1000)).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        classifier(backbone(torch.randn(1, 3, 224, 224))[-1])
    assert counter.get_total_flops() / 2e9 == pytest.approx(3.72, abs=0.05)
    assert (parameters(backbone) + parameters(classifier)) / 1e6 == pytest.approx(26.35, abs=0.005)


def test_the_coco_network_at_search_widths_has_the_published_count():
    assert round(parameters(ChoiceBackbone(SEARCH_WIDTHS, ops=released("COCO_3.8G").backbone)) / 1e6, 1) == 6.8


def test_the_supernet_runs_the_blocks_its_path_names_as_the_fixed_network_would():
    torch.manual_seed(0)
    supernet = ChoiceBackbone(SMALL_WIDTHS, SMALL_REPEATS).eval()
    assert all(len(block.ops) == len(BACKBONE_OPS) for block in supernet.blocks)
    path = [3, 0, 2, 1, 3, 3, 0, 1, 2, 0]
    fixed = ChoiceBackbone(SMALL_WIDTHS, SMALL_REPEATS, ops=path).eval()
    state = {name: value for name, value in supernet.state_dict().items() if not name.startswith("blocks.")}
    for index, op in enumerate(path):
        prefix = f"blocks.{index}.ops.{op}."
        state |= {f"blocks.{index}.ops.0." + name[len(prefix):]: value for name, value in supernet.state_dict().items()
                  if name.startswith(prefix)}
    fixed.load_state_dict(state)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(supernet(images, path), fixed(images), strict=True):
            assert torch.equal(ours, theirs)
        other = supernet(images, [0] * 10)[-1]
    assert not torch.equal(other, fixed(images)[-1])
    assert [f.shape[-1] for f in fixed(images)] == [16, 8, 4, 2]


def test_a_path_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="a path of 10 backbone ops"):
        ChoiceBackbone(SMALL_WIDTHS, SMALL_REPEATS)(torch.randn(1, 3, 32, 32), [0] * 9)


def test_the_stem_starts_as_the_original():
    stem = ChoiceBackbone(SMALL_WIDTHS, SMALL_REPEATS, ops=[0] * 10).stem[0]
    assert stem.bias is not None and torch.equal(stem.bias, torch.zeros(16))
    assert stem.weight.std().item() == pytest.approx(0.01, rel=0.2)
