"""The decoder search's LSTM controller: decisions and head sizes per space, exact re-evaluation, the
published maximum entropies, and samples that are valid genotypes (shared/reference/nas-segm.md §2, §8)."""

import math

import pytest
import torch

from modeling.architecture_file import architecture_from_json
from modeling.nas_segm.genotype import DecoderGenotype
from search.controller import DecoderController, action_to_config, decision_sizes
from tests.test_nas_segm_decoder import CVPR_ARCH0, WACV_ARCH0


def test_decisions_and_head_sizes_per_space():
    cvpr, wacv = decision_sizes("cvpr"), decision_sizes("wacv")
    assert len(cvpr) == 19 and cvpr[:6] == [4, 4, 5, 5, 6, 6] and cvpr[6] == 11
    assert [cvpr[7 + 4 * k] for k in range(3)] == [2, 5, 8]  # the CVPR-era position heads
    assert len(wacv) == 44 and wacv[:9] == [6, 6, 2] * 3
    assert [wacv[9 + 5 * j] for j in range(7)] == [2, 3, 4, 5, 6, 7, 8]
    assert [wacv[13 + 5 * j] for j in range(7)] == [2, 2, 2, 1, 1, 1, 1]  # the later blocks keep stride 1
    with pytest.raises(ValueError, match="unknown decoder space"):
        decision_sizes("darts")


@pytest.mark.parametrize("space, nats", [("wacv", 53.51), ("cvpr", 35.12)])
def test_uniform_logits_give_the_published_maximum_entropy(space, nats):
    controller = DecoderController(space)
    with torch.no_grad():
        for head in controller.heads:
            head.weight.zero_()
            head.bias.zero_()
    _, entropy = controller.evaluate([0] * len(controller.sizes))
    assert entropy.item() == pytest.approx(nats, abs=0.005)
    assert entropy.item() == pytest.approx(sum(math.log(k) for k in controller.sizes))


@pytest.mark.parametrize("space", ["cvpr", "wacv"])
def test_a_sampled_action_re_evaluates_exactly_and_is_a_valid_genotype(space):
    torch.manual_seed(0)
    controller = DecoderController(space)
    assert all(-0.1 <= p.min() and p.max() <= 0.1 for p in controller.parameters())
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        action, log_prob, entropy = controller.sample(generator)
        assert all(0 <= choice < size for choice, size in zip(action, controller.sizes))
        again = controller.evaluate(action)
        assert torch.equal(again[0], log_prob) and torch.equal(again[1], entropy)
        genotype = DecoderGenotype.from_json({"space": space, "config": action_to_config(space, action)}, None, {},
                                             "sample")
        assert architecture_from_json({"format": "autodeeplab-architecture", "format_version": 2,
                                       "system": "nas-segm", "genotype": genotype.genotype_json()}) == genotype
    first = controller.sample(torch.Generator().manual_seed(7))[0]
    assert controller.sample(torch.Generator().manual_seed(7))[0] == first  # a seeded draw repeats


def test_the_released_architectures_are_actions_of_the_controller():
    cvpr = [c for pair in CVPR_ARCH0[1] for c in pair] + [CVPR_ARCH0[0][0]] + [v for layer in CVPR_ARCH0[0][1:]
                                                                            for v in layer]
    assert action_to_config("cvpr", cvpr) == CVPR_ARCH0
    wacv = [v for template in WACV_ARCH0[0] for v in template] + [v for block in WACV_ARCH0[1] for v in block]
    assert action_to_config("wacv", wacv) == WACV_ARCH0
    log_prob, _ = DecoderController("wacv").evaluate(wacv)
    assert log_prob.item() < 0 and log_prob.requires_grad  # a gradient flows for the policy update
