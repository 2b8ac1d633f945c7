import math

import pytest
import torch
import torch.nn.functional as F

from modeling.genotypes import PRIMITIVES, num_edges
from modeling.model_search import AutoDeepLabSearch, level_sizes


def small_supernet(**kw) -> AutoDeepLabSearch:
    torch.manual_seed(0)
    defaults = dict(num_classes=3, num_layers=4, filter_multiplier=2, block_multiplier=5, steps=5)
    return AutoDeepLabSearch(**(defaults | kw))


def reference_betas(betas: torch.Tensor) -> list:
    """Eq. 7 written out by hand: softmax over each existing source node's in-range targets."""
    num_layers, num_levels, _ = betas.shape
    out = [[[0.0, 0.0, 0.0] for _ in range(num_levels)] for _ in range(num_layers)]
    for layer in range(num_layers):
        sources = [0] if layer == 0 else range(min(layer + 1, num_levels))
        for src in sources:
            targets = {0: src - 1, 1: src, 2: src + 1}
            valid = [d for d, dst in targets.items() if 0 <= dst < num_levels]
            z = sum(math.exp(betas[layer, src, d].item()) for d in valid)
            for d in valid:
                out[layer][src][d] = math.exp(betas[layer, src, d].item()) / z
    return out


def reference_forward(model: AutoDeepLabSearch, x: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 6 evaluated node by node, one cell call per incoming direction."""
    nb = reference_betas(model.betas.detach())
    alpha_weights = torch.softmax(model.alphas, dim=-1)
    early, stem = model.stem(x)
    sizes = level_sizes(tuple(stem.shape[-2:]), model.num_levels)
    hidden = {(-1, 0): stem}
    for layer in range(model.num_layers):
        for s in range(model.num_levels):
            if s > layer + 1:
                continue
            prev_prev = early if (layer, s) == (0, 0) else hidden.get((layer - 2, s))
            total = 0
            # from the finer level s-1 the source moved "down" (index 2), from s+1 "up" (index 0)
            for source, d in ((s - 1, 2), (s, 1), (s + 1, 0)):
                if (layer - 1, source) in hidden:
                    beta = nb[layer][source][d]
                    total = total + beta * model.cells[layer][str(s)](
                        prev_prev, [(hidden[(layer - 1, source)], torch.tensor(1.0), d)], alpha_weights, sizes[s])
            hidden[(layer, s)] = total
    last = model.num_layers - 1
    return sum(F.interpolate(head(hidden[(last, int(k))]), size=x.shape[-2:], mode="bilinear",
                             align_corners=False) for k, head in model.heads.items())


def test_forward_equals_paper_equation_6():
    model = small_supernet().double()
    with torch.no_grad():
        model.betas.normal_(0, 1.5)  # far from uniform, so a wrong β index changes the output
        model.alphas.normal_(0, 1.5)
    x = torch.randn(2, 3, 37, 45, dtype=torch.float64)
    torch.testing.assert_close(model(x), reference_forward(model, x), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("size", [(33, 47), (64, 64), (41, 29)])
def test_output_shape_for_odd_sizes(size):
    model = small_supernet(num_layers=3)
    assert model(torch.randn(2, 3, *size)).shape == (2, 3, *size)


def test_full_depth_supernet_builds_all_nodes_and_heads():
    model = AutoDeepLabSearch(num_classes=4, filter_multiplier=1, block_multiplier=2, steps=2)
    assert [sorted(int(k) for k in row) for row in model.cells] == [[0, 1], [0, 1, 2]] + [[0, 1, 2, 3]] * 10
    assert sorted(int(k) for k in model.heads) == [0, 1, 2, 3]
    assert model(torch.randn(2, 3, 35, 35)).shape == (2, 4, 35, 35)


def test_arch_parameters_are_registered_and_initialised_small():
    model = small_supernet(num_layers=12)
    state = model.state_dict()
    assert state["alphas"].shape == (num_edges(5), len(PRIMITIVES)) == (20, 8)
    assert state["betas"].shape == (12, 4, 3)
    for p in model.arch_parameters():
        assert 1e-4 < p.detach().std().item() < 1e-2
    weight_ids = {id(p) for p in model.weight_parameters()}
    assert not weight_ids & {id(p) for p in model.arch_parameters()}
    assert len(weight_ids) + 2 == len(list(model.parameters()))


def test_architecture_gradient_reaches_every_used_alpha_and_valid_beta_only():
    model = small_supernet()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.alphas.grad[:, 0].abs().sum() > 0  # "none" takes softmax mass, so it has a gradient
    assert (model.alphas.grad.abs().sum(dim=1) > 0).all()
    from modeling.search_space import valid_beta_mask
    mask = valid_beta_mask(4, 4)
    assert (model.betas.grad[~mask] == 0).all()
    assert (model.betas.grad[mask] != 0).all()


def test_level_without_h_l_minus_2_has_no_edges_from_it():
    model = small_supernet()
    cell = model.cells[0]["1"]  # stride 8 first appears at layer 0: no H^{l-2} there
    assert cell.preprocess_prev_prev is None and "0" not in cell.edges
    assert model.cells[2]["1"].preprocess_prev_prev is not None
