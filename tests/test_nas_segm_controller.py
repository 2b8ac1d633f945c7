"""The decoder search's LSTM controller (the original's ``src/rl/micro_controllers.py``): decisions and layer
sizes per space, the layers shared as the original shares them, exact re-evaluation, the maximum entropies, and
samples that are valid genotypes."""

import math

import pytest
import torch

from modeling.architecture_file import architecture_from_json
from modeling.nas_segm.genotype import DecoderGenotype
from search.nas_segm.controller import DecoderController, action_to_config, decision_sizes
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


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("space, parameters", [
    # the original's HEAD MicroController has 169,365: less its unused Embedding(11, 100) (1,100), plus 606 for
    # the CVPR-era position layers (2, 2, 5, 5, 8, 8 choices against 1, 1, 4, 4, 7, 7)
    ("cvpr", 169_365 - 1_100 + 606),
    # the original's TemplateController has 171,188, less its unused Embedding(6, 100)
    ("wacv", 171_188 - 600),
])
def test_the_controller_has_the_originals_parameters_less_its_unused_embedding(space, parameters):
    assert count(DecoderController(space)) == parameters


@pytest.mark.parametrize("space, shared", [
    ("cvpr", {"op": [6, 9, 10, 13, 14, 17, 18]}),
    ("wacv", {"op": [0, 1, 3, 4, 6, 7], "aggregation": [2, 5, 8], "template": [11 + 5 * j for j in range(7)],
              "repeats": [12 + 5 * j for j in range(7)], "stride": [13, 18, 23], "fixed_stride": [28, 33, 38, 43]}),
])
def test_decisions_of_one_kind_share_one_layer(space, shared):
    controller = DecoderController(space)
    for name, decisions in shared.items():
        assert [d for d, layer in enumerate(controller.decisions) if layer == name] == decisions
    # every other decision (connections, positions, locations) has a layer of its own
    others = [layer for layer in controller.decisions if layer not in shared]
    assert len(set(others)) == len(others) == len(controller.heads) - len(shared)
    # one layer object serves all op decisions: moving its bias moves every op decision's logits alike
    before = controller.logits()
    with torch.no_grad():
        controller.heads["op"].bias[0] += 1.0
    after = controller.logits()
    for d in range(len(controller.sizes)):
        shift = torch.zeros_like(before[d])
        if d in shared["op"]:
            shift[0] = 1.0
        assert torch.allclose(after[d] - before[d], shift, atol=1e-6)


@pytest.mark.parametrize("space, nats", [("wacv", 53.51), ("cvpr", 35.12)])
def test_uniform_logits_give_the_published_maximum_entropy(space, nats):
    controller = DecoderController(space)
    with torch.no_grad():
        for head in controller.heads.values():
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
