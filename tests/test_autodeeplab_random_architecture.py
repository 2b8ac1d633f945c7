"""Auto-DeepLab's random architectures: uniform over every valid network path (against brute force and a
chi-square test), uniform cells that never hold ``none``, one architecture per seed; the supernet run one-hot on an
architecture is that architecture's part of the supernet and nothing else; ``decode_autodeeplab.py --strategy
random`` writes a random architecture of a search's space, or the best of several by the supernet's estimate."""

import copy
import itertools
from collections import Counter
from math import comb

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import decode_autodeeplab
import train_autodeeplab
from engine.checkpoint import load_checkpoint
from modeling.autodeeplab.genotype import PRIMITIVES, Architecture, edge_index, num_edges
from modeling.autodeeplab.model_search import AutoDeepLabSearch, one_hot_weights
from modeling.autodeeplab.random_architecture import count_paths, random_architecture, random_cell, random_network_path
from modeling.autodeeplab.search_space import level_sizes
from search.autodeeplab.stage import supernet_estimates
from tests.test_autodeeplab_decoding import all_paths
from tests.test_autodeeplab_supernet import reference_cell
from utils.errors import UserError
from utils.seeds import derived_seed

CELL = (((0, "sep_conv_3x3"), (1, "skip_connect")),
        ((1, "max_pool_3x3"), (2, "dil_conv_5x5")),
        ((0, "avg_pool_3x3"), (3, "sep_conv_5x5")))


def tiny_supernet(num_layers: int = 4) -> AutoDeepLabSearch:
    torch.manual_seed(0)
    return AutoDeepLabSearch(num_classes=3, num_layers=num_layers, filter_multiplier=2, block_multiplier=3, steps=3)


@pytest.mark.parametrize("num_layers,num_levels", [(1, 1), (1, 4), (2, 2), (3, 2), (4, 4), (5, 3), (6, 4), (8, 4)])
def test_count_paths_equals_brute_force(num_layers, num_levels):
    assert count_paths(num_layers, num_levels) == len(list(all_paths(num_layers, num_levels)))


def test_path_is_uniform_over_all_valid_paths():
    rng = np.random.default_rng(0)
    paths = [tuple(p) for p in all_paths(4, 4)]
    draws = Counter(random_network_path(rng, 4, 4) for _ in range(6800))
    assert set(draws) == set(paths)  # every draw valid, every valid path drawn
    assert chisquare([draws[p] for p in paths]).pvalue > 0.001


def test_per_step_uniform_moves_would_fail_the_uniformity_test():
    """The test above can tell: choosing each move uniformly among the allowed ones is biased."""
    rng = np.random.default_rng(0)
    paths = [tuple(p) for p in all_paths(4, 4)]
    draws = Counter()
    for _ in range(6800):
        path = [0]  # the stem
        for _ in range(4):
            path.append(int(rng.choice([k for k in (path[-1] - 1, path[-1], path[-1] + 1) if 0 <= k <= 3])))
        draws[tuple(path[1:])] += 1
    assert chisquare([draws[p] for p in paths]).pvalue < 1e-6


def test_cell_inputs_and_ops_are_uniform():
    rng = np.random.default_rng(1)
    cells = [random_cell(rng, 4) for _ in range(4000)]
    for block in range(4):
        pairs = list(itertools.combinations(range(block + 2), 2))
        assert len(pairs) == comb(block + 2, 2)
        counts = Counter(tuple(cell_input for cell_input, _ in cell[block]) for cell in cells)
        assert set(counts) == set(pairs)  # distinct inputs, sorted, all in range
        if block > 0:  # block 0 has the single pair (0, 1)
            assert chisquare([counts[p] for p in pairs]).pvalue > 0.001
    ops = Counter(op for cell in cells for block in cell for _, op in block)
    assert set(ops) == set(PRIMITIVES[1:])  # never "none"
    assert chisquare([ops[op] for op in PRIMITIVES[1:]]).pvalue > 0.001


def test_random_architectures_are_valid_and_named_by_their_seed():
    architectures = [random_architecture(seed) for seed in range(40)]
    for seed, arch in enumerate(architectures):
        assert arch.num_layers == 12 and arch.steps == 5 and arch.num_levels == 4
        assert all(op != "none" for block in arch.cell for _, op in block)
        loaded = Architecture.from_json_dict(arch.to_json_dict())
        assert loaded == arch and loaded.source == {"strategy": "random", "seed": seed, "distribution": "uniform",
                                                    "network_paths": count_paths(12, 4)}
        assert random_architecture(seed) == arch
    assert len(set(architectures)) == len(architectures)
    small = random_architecture(7, num_layers=3, num_levels=2, steps=2, filter_multiplier=4, block_multiplier=1)
    assert (small.num_layers, small.num_levels, small.steps, small.filter_multiplier, small.block_multiplier) == \
        (3, 2, 2, 4, 1)
    assert max(small.network_path) <= 1


def test_one_hot_weights_of_a_hand_built_architecture():
    arch = Architecture((1, 1, 0), CELL, 2, 3)
    alpha_weights, betas = one_hot_weights(arch, num_layers=3, num_levels=4, steps=3)
    # edges: block 0 owns rows 0-1, block 1 rows 2-4, block 2 rows 5-8
    assert (edge_index(0, 0), edge_index(0, 1), edge_index(1, 1), edge_index(1, 2), edge_index(2, 0),
            edge_index(2, 3)) == (0, 1, 3, 4, 5, 8)
    # ops: none, max_pool_3x3, avg_pool_3x3, skip_connect, sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, dil_conv_5x5
    assert alpha_weights.shape == (num_edges(3), len(PRIMITIVES)) == (9, 8)
    assert sorted(map(tuple, alpha_weights.nonzero().tolist())) == [(0, 4), (1, 3), (3, 1), (4, 7), (5, 2), (8, 5)]
    assert alpha_weights.sum() == 6 and (alpha_weights[[2, 6, 7]] == 0).all()
    # β[layer, source level, direction (0 finer, 1 same, 2 coarser)]: stem 0 -> 1 -> 1 -> 0
    assert betas.shape == (3, 4, 3)
    assert sorted(map(tuple, betas.nonzero().tolist())) == [(0, 0, 2), (1, 1, 1), (2, 1, 0)]
    assert betas.sum() == 3


@pytest.mark.parametrize("path,cell,sizes,match", [
    ((1, 1, 0), CELL, (4, 4, 3), "layers"),
    ((1, 1, 0), CELL, (3, 3, 3), "levels"),
    ((1, 1, 0), CELL[:2], (3, 4, 3), "blocks"),
    ((1, 3, 2), CELL, (3, 4, 3), "no transition from level 1 to level 3 into layer 1"),
    ((2, 1, 0), CELL, (3, 4, 3), "no transition from level 0 to level 2 into layer 0"),
    ((0, 0, 0), (((0, "none"), (1, "skip_connect")),) + CELL[1:], (3, 4, 3), "none"),
])
def test_one_hot_weights_refuse_what_the_supernet_cannot_hold(path, cell, sizes, match):
    with pytest.raises(ValueError, match=match):
        one_hot_weights(Architecture(path, cell, 2, 3), *sizes)


def test_supernet_refuses_an_architecture_of_another_shape():
    model = tiny_supernet(3)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="layers"):
        model(x, Architecture((0, 1, 1, 0), CELL, 2, 3))
    with pytest.raises(ValueError, match="concatenates 2 blocks"):
        model(x, Architecture((0, 1, 1), CELL, 2, 2))


def path_forward(model: AutoDeepLabSearch, arch: Architecture, x: torch.Tensor) -> torch.Tensor:
    """The architecture inside the supernet, node by node on the path with plain ops: each cell sees only its
    predecessor on the path and, as H^{l-2}, its own level two layers back (zero where the path was elsewhere)."""
    alpha_weights, _ = one_hot_weights(arch, model.num_layers, model.num_levels, model.steps)
    early, stem = model.stem(x)
    sizes = level_sizes(tuple(stem.shape[-2:]), model.num_levels)
    hidden, previous = {(-1, 0): stem}, 0
    for layer, level in enumerate(arch.network_path):
        cell = model.cells[layer][str(level)]
        prev_prev = early if (layer, level) == (0, 0) else hidden.get((layer - 2, level))
        if prev_prev is None and cell.preprocess_prev_prev is not None:
            prev_prev = stem.new_zeros(x.shape[0], model.block_multiplier * cell.channels, *sizes[level])
        direction = level - previous + 1
        hidden[(layer, level)] = reference_cell(cell, prev_prev, hidden[(layer - 1, previous)], direction,
                                                alpha_weights.to(x), sizes[level])
        previous = level
    return torch.nn.functional.interpolate(model.heads[str(previous)](hidden[(layer, previous)]), size=x.shape[-2:],
                                           mode="bilinear", align_corners=False)


@pytest.mark.parametrize("path", [(1, 2, 2, 1), (0, 0, 1, 0), (1, 1, 2, 3)])
def test_one_hot_forward_is_the_path_evaluated_node_by_node(path):
    model = tiny_supernet().double()
    arch = Architecture(path, CELL, 2, 3)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    out = model(x, arch)
    torch.testing.assert_close(out, path_forward(model, arch, x), rtol=1e-9, atol=1e-10)
    out.sum().backward()
    assert model.alphas.grad is None and model.betas.grad is None  # fixed, not the supernet's distribution


def perturbed(model: AutoDeepLabSearch, tensors) -> AutoDeepLabSearch:
    """A copy of ``model`` with every tensor that ``tensors(copy)`` yields changed in place."""
    changed = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in tensors(changed):
            tensor.add_(torch.randn_like(tensor))
    return changed


def edge_weights(model: AutoDeepLabSearch, layer: int, level: int, block: int, cell_input: int, ops: list[str]):
    """The weights (views into the fused parameters) of ``ops`` on one edge of one cell."""
    fan_out = model.cells[layer][str(level)].fan_outs[str(cell_input)]
    state = fan_out.edge_state(block - max(cell_input - 1, 0), dict(fan_out.named_parameters()))
    return [tensor for name, tensor in state.items() if name.split(".")[0] in ops]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_one_hot_forward_ignores_what_the_architecture_does_not_use(training):
    model = tiny_supernet().train(training)
    arch = Architecture((1, 1, 2, 1), CELL, 2, 3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x, arch)
        conv_ops = ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
        # in cell (3, 1), whose H^{l-2} is (1, 1) on the path: block 1 reads inputs 1 and 2, not 0
        unchanged = {
            "unused edge": lambda m: edge_weights(m, 3, 1, 1, 0, conv_ops),
            "unchosen ops of a used edge": lambda m: edge_weights(m, 3, 1, 0, 0, conv_ops[1:]),
            "off-path cell": lambda m: m.cells[2]["1"].parameters(),  # a β-0 input of cell (3, 1)
            "other levels' heads": lambda m: [p for k in "023" for p in m.heads[k].parameters()],
        }
        for name, tensors in unchanged.items():
            assert torch.equal(perturbed(model, tensors)(x, arch), expected), name
        changed = {
            "chosen op of a used edge": lambda m: edge_weights(m, 3, 1, 0, 0, ["sep_conv_3x3"]),
            "last chosen op": lambda m: edge_weights(m, 3, 1, 2, 3, ["sep_conv_5x5"]),
            "on-path cell": lambda m: m.cells[0]["1"].parameters(),
            "path's head": lambda m: m.heads["1"].parameters(),
        }
        for name, tensors in changed.items():
            assert not torch.allclose(perturbed(model, tensors)(x, arch), expected), name
        assert not torch.allclose(model(x), expected)  # the supernet itself mixes everything


@pytest.fixture(scope="module")
def tiny_search(tmp_path_factory):
    from tests.conftest import TINY_SEARCH

    run_dir = tmp_path_factory.mktemp("search") / "run"
    train_autodeeplab.main(TINY_SEARCH + ["--out-dir", str(run_dir)])
    return run_dir


@pytest.mark.slow
def test_the_random_strategy_writes_a_random_architecture_of_the_searched_space(tiny_search, tmp_path):
    decode_autodeeplab.main(["--resume", str(tiny_search), "--strategy", "random", "--seed", "4"])
    written = Architecture.load(tiny_search / "random_seed4")  # beside the search, never over its own decoding
    expected = random_architecture(derived_seed(4, 0), 3, 4, 3, 2, 3)
    assert written == expected and written.source["strategy"] == "random" and written.source["candidates"] == 1
    assert not (tiny_search / "architecture.json").exists()


@pytest.mark.slow
def test_several_random_candidates_are_scored_by_the_one_hot_supernet_and_the_best_kept(tiny_search, tmp_path):
    decode_autodeeplab.main(["--resume", str(tiny_search), "--strategy", "random", "--random-candidates", "3",
                             "--out-dir", str(tmp_path / "best")])
    written = Architecture.load(tmp_path / "best")
    drawn = [random_architecture(derived_seed(0, k), 3, 4, 3, 2, 3) for k in range(3)]
    checkpoint_path = tiny_search / "checkpoint.pth.tar"
    estimates = supernet_estimates(load_checkpoint(checkpoint_path), checkpoint_path, drawn)
    assert written.source["supernet_mious"] == pytest.approx(estimates) and all(0 <= e <= 1 for e in estimates)
    assert written == drawn[int(np.argmax(estimates))]
    assert written.source["supernet_miou"] == max(estimates)


@pytest.mark.slow
def test_random_candidates_without_the_random_strategy_are_refused(tiny_search):
    with pytest.raises(UserError, match="--random-candidates: only with --strategy random"):
        decode_autodeeplab.main(["--resume", str(tiny_search), "--random-candidates", "3"])
