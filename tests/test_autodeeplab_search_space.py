import math

import pytest
import torch

from modeling.autodeeplab.search_space import (DIRECTIONS, level_exists, levels_at, normalize_betas, transition_table,
                                   valid_beta_mask)


def test_levels_appear_one_per_layer():
    assert levels_at(-1) == [0]
    assert levels_at(0) == [0, 1]
    assert levels_at(1) == [0, 1, 2]
    assert all(levels_at(layer) == [0, 1, 2, 3] for layer in range(2, 12))


def test_transition_table_matches_explicit_enumeration():
    expected = set()
    for layer in range(12):
        sources = [0] if layer == 0 else levels_at(layer - 1)
        for src in sources:
            for dst in (src - 1, src, src + 1):
                if 0 <= dst < 4:
                    expected.add((layer, src, dst))
    table = transition_table()
    assert {(t.layer, t.source_level, t.target_level) for t in table} == expected
    assert len(table) == len(expected)
    for t in table:
        assert t.target_level - t.source_level == DIRECTIONS[t.direction]
        assert level_exists(t.layer, t.target_level)


def test_normalisation_hand_computed_case():
    betas = torch.zeros(12, 4, 3)
    betas[0, 0] = torch.tensor([7.0, 0.0, math.log(3.0)])  # entry 0 (up from level 0) is invalid
    betas[5, 1] = torch.tensor([0.0, math.log(2.0), math.log(5.0)])
    betas[5, 3] = torch.tensor([math.log(4.0), 0.0, 9.0])  # entry 2 (down from level 3) is invalid
    nb = normalize_betas(betas)
    assert nb[0, 0].tolist() == pytest.approx([0.0, 0.25, 0.75])
    assert nb[5, 1].tolist() == pytest.approx([1 / 8, 2 / 8, 5 / 8])
    assert nb[5, 3].tolist() == pytest.approx([0.8, 0.2, 0.0])
    assert nb[0, 1:].abs().sum() == 0  # levels 1..3 do not exist before layer 0
    assert nb[1, 2:].abs().sum() == 0


def test_outgoing_weights_of_every_node_sum_to_one():
    nb = normalize_betas(torch.randn(12, 4, 3) * 3)
    mask = valid_beta_mask()
    assert torch.all(nb[~mask] == 0)
    sums = nb.sum(-1)
    for layer in range(12):
        for level in range(4):
            expected = 1.0 if level_exists(layer - 1, level) else 0.0
            assert sums[layer, level].item() == pytest.approx(expected, abs=1e-6)


def test_normalisation_is_float32_and_differentiable():
    betas = torch.randn(12, 4, 3, dtype=torch.bfloat16, requires_grad=True)
    nb = normalize_betas(betas)
    assert nb.dtype == torch.float32
    nb[3, 1, 2].backward()
    assert betas.grad[3, 1].abs().sum() > 0 and betas.grad[3, 0].abs().sum() == 0
