import itertools

import pytest
import torch

from modeling.autodeeplab.decoding import decode_architecture, decode_cell, viterbi_path
from modeling.autodeeplab.genotype import PRIMITIVES, edge_index, num_edges
from modeling.autodeeplab.search_space import normalize_betas


def all_paths(num_layers: int, num_levels: int):
    """Every level sequence that starts next to the stem (level 0) and moves at most one level a layer."""
    for path in itertools.product(range(num_levels), repeat=num_layers):
        levels = (0,) + path
        if all(abs(b - a) <= 1 and b <= i + 1 for i, (a, b) in enumerate(zip(levels, levels[1:]))):
            yield list(path)


def path_probability(nb: torch.Tensor, path: list[int]) -> float:
    p, previous = 1.0, 0
    for layer, level in enumerate(path):
        p *= nb[layer, previous, level - previous + 1].item()
        previous = level
    return p


@pytest.mark.parametrize("num_layers,num_levels", [(5, 4), (6, 3), (7, 4)])
@pytest.mark.parametrize("seed", range(5))
def test_viterbi_equals_brute_force(num_layers, num_levels, seed):
    torch.manual_seed(seed)
    nb = normalize_betas(torch.randn(num_layers, num_levels, 3) * 2)
    best = max(all_paths(num_layers, num_levels), key=lambda p: path_probability(nb, p))
    found = viterbi_path(nb)
    assert found in list(all_paths(num_layers, num_levels))
    assert path_probability(nb, found) == pytest.approx(path_probability(nb, best), rel=1e-9)
    assert found == best  # random β: no ties


def test_viterbi_follows_a_forced_path():
    target = [1, 2, 3, 3, 2, 1, 0, 0, 1, 2, 3, 2]
    betas = torch.full((12, 4, 3), -20.0)
    previous = 0
    for layer, level in enumerate(target):
        betas[layer, previous, level - previous + 1] = 20.0
        previous = level
    assert viterbi_path(normalize_betas(betas)) == target


def test_cell_never_picks_none_and_ranks_edges_without_it():
    alphas = torch.zeros(num_edges(5), len(PRIMITIVES))
    alphas[:, 0] = 10.0  # "none" dominates every edge
    alphas[edge_index(2, 3), PRIMITIVES.index("sep_conv_5x5")] = 3.0
    alphas[edge_index(2, 1), PRIMITIVES.index("max_pool_3x3")] = 2.0
    cell = decode_cell(alphas, 5)
    assert all(op != "none" for block in cell for _, op in block)
    assert cell[2] == ((1, "max_pool_3x3"), (3, "sep_conv_5x5"))


def test_edges_and_ops_stay_paired():
    torch.manual_seed(0)
    alphas = torch.randn(num_edges(5), len(PRIMITIVES)) * 0.1
    chosen = {0: [(0, "dil_conv_5x5"), (1, "sep_conv_3x3")], 1: [(0, "skip_connect"), (2, "avg_pool_3x3")],
              2: [(1, "dil_conv_3x3"), (3, "sep_conv_5x5")], 3: [(2, "max_pool_3x3"), (4, "sep_conv_3x3")],
              4: [(3, "dil_conv_5x5"), (5, "skip_connect")]}
    for block, pairs in chosen.items():
        for strength, (cell_input, op) in zip((5.0, 4.0), pairs):
            alphas[edge_index(block, cell_input), PRIMITIVES.index(op)] = strength
    cell = decode_cell(alphas, 5)
    assert [list(block) for block in cell] == [chosen[b] for b in range(5)]


def test_decoded_architecture_is_consistent():
    torch.manual_seed(3)
    arch = decode_architecture(torch.randn(20, 8), torch.randn(12, 4, 3), 8, 5, {"note": "test"})
    assert arch.num_layers == 12 and arch.steps == 5 and arch.filter_multiplier == 8
    assert arch.network_path[0] in (0, 1)
    assert all(abs(b - a) <= 1 for a, b in zip(arch.network_path, arch.network_path[1:]))
