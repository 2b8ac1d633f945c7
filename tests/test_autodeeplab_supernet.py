import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modeling.autodeeplab.fused_edges import EdgeFanOut
from modeling.autodeeplab.genotype import PRIMITIVES, edge_index, num_edges
from modeling.autodeeplab.model_search import AutoDeepLabSearch, SearchCell, channel_shuffle
from modeling.autodeeplab.search_space import level_sizes
from modeling.autodeeplab.operations import OPS


def small_supernet(**kw) -> AutoDeepLabSearch:
    torch.manual_seed(0)
    defaults = dict(num_classes=3, num_layers=4, filter_multiplier=2, block_multiplier=5, steps=5)
    return AutoDeepLabSearch(**(defaults | kw))


def reference_betas(betas: torch.Tensor) -> list:
    """Eq. 7 written out by hand: softmax over each existing source node's in-range targets."""
    num_layers, num_levels, _ = betas.shape
    zero = betas.new_zeros(())
    out = [[[zero, zero, zero] for _ in range(num_levels)] for _ in range(num_layers)]
    for layer in range(num_layers):
        sources = [0] if layer == 0 else range(min(layer + 1, num_levels))
        for src in sources:
            targets = {0: src - 1, 1: src, 2: src + 1}
            valid = [d for d, dst in targets.items() if 0 <= dst < num_levels]
            z = sum(torch.exp(betas[layer, src, d]) for d in valid)
            for d in valid:
                out[layer][src][d] = torch.exp(betas[layer, src, d]) / z
    return out


def plain_edge_ops(cell: SearchCell, block: int, cell_input: int) -> nn.ModuleDict:
    """The plain ops of ``modeling.autodeeplab.operations`` for one edge, holding copies of that edge's weights."""
    fan_out = cell.fan_outs[str(cell_input)]
    ops = nn.ModuleDict()
    for name in PRIMITIVES[1:]:
        op = OPS[name](fan_out.channels, 1, False)
        ops[name] = nn.Sequential(op, nn.BatchNorm2d(fan_out.channels, affine=False)) if "pool" in name else op
    incompatible = ops.load_state_dict(fan_out.edge_state(block - max(cell_input - 1, 0)), strict=False)
    assert not incompatible.unexpected_keys
    assert all(key.endswith("num_batches_tracked") for key in incompatible.missing_keys)
    return ops.to(next(cell.parameters()).dtype)


def reference_cell(cell, prev_prev, s1, direction, alpha_weights, size):
    """One cell, one incoming direction, every edge a plain weighted sum of its ops."""
    if prev_prev is not None and prev_prev.shape[-2:] != size:
        prev_prev = F.interpolate(prev_prev, size=size, mode="bilinear", align_corners=False)
    if direction == 0:  # arriving from the coarser level
        s1 = F.interpolate(s1, size=size, mode="bilinear", align_corners=False)
    states = [cell.preprocess_prev_prev(prev_prev) if prev_prev is not None else None,
              cell.preprocess[str(direction)](s1)]
    for b in range(cell.steps):
        h = 0
        for j in range(2 + b):
            if states[j] is None:
                continue
            e = edge_index(b, j)
            for name, op in plain_edge_ops(cell, b, j).items():
                h = h + alpha_weights[e, PRIMITIVES.index(name)] * op(states[j])
        states.append(h)
    return torch.cat(states[-cell.block_multiplier:], dim=1)


def reference_forward(model: AutoDeepLabSearch, x: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 6 evaluated node by node, one plain cell evaluation per incoming direction."""
    nb = reference_betas(model.betas)
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
                    total = total + nb[layer][source][d] * reference_cell(
                        model.cells[layer][str(s)], prev_prev, hidden[(layer - 1, source)], d, alpha_weights,
                        sizes[s])
            hidden[(layer, s)] = total
    last = model.num_layers - 1
    return sum(F.interpolate(head(hidden[(last, int(k))]), size=x.shape[-2:], mode="bilinear",
                             align_corners=False) for k, head in model.heads.items())


def test_forward_and_gradients_equal_paper_equation_6():
    model = small_supernet().double()
    with torch.no_grad():
        model.betas.normal_(0, 1.5)  # far from uniform, so a wrong β index changes the output
        model.alphas.normal_(0, 1.5)
    x = torch.randn(2, 3, 37, 45, dtype=torch.float64)
    out = model(x)
    fast_grads = torch.autograd.grad((out ** 2).sum(), [model.alphas, model.betas, model.stem.conv1[0].weight])
    expected = reference_forward(model, x)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-10)
    reference_grads = torch.autograd.grad((expected ** 2).sum(),
                                          [model.alphas, model.betas, model.stem.conv1[0].weight])
    for fast, reference in zip(fast_grads, reference_grads):
        torch.testing.assert_close(fast, reference, rtol=1e-8, atol=1e-10)


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
    from modeling.autodeeplab.search_space import valid_beta_mask
    mask = valid_beta_mask(4, 4)
    assert (model.betas.grad[~mask] == 0).all()
    assert (model.betas.grad[mask] != 0).all()


def test_level_without_h_l_minus_2_has_no_edges_from_it():
    model = small_supernet()
    cell = model.cells[0]["1"]  # stride 8 first appears at layer 0: no H^{l-2} there
    assert cell.preprocess_prev_prev is None and "0" not in cell.fan_outs
    assert model.cells[2]["1"].preprocess_prev_prev is not None


@pytest.mark.parametrize("synchronized", [False, True], ids=["batchnorm", "syncbatchnorm"])
def test_checkpointed_cells_compute_exactly_the_plain_network(synchronized):
    torch.manual_seed(0)
    plain = AutoDeepLabSearch(3, 4, filter_multiplier=2, block_multiplier=3, steps=3).double()
    checkpointed = AutoDeepLabSearch(3, 4, filter_multiplier=2, block_multiplier=3, steps=3,
                                     checkpoint_cells=True).double()
    checkpointed.load_state_dict(plain.state_dict())
    if synchronized:  # as several GPUs run it (one process here: the statistics stay local)
        parameters = checkpointed.weight_parameters()
        checkpointed.synchronize_batchnorm()
        assert not any(type(m) is nn.BatchNorm2d for m in checkpointed.modules())
        assert all(m.synchronize for m in checkpointed.modules() if isinstance(m, EdgeFanOut))
        assert all(a is b for a, b in zip(parameters, checkpointed.weight_parameters(), strict=True))
    x = torch.randn(2, 3, 33, 29, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 33, 29))
    for model in (plain, checkpointed):
        torch.nn.functional.cross_entropy(model(x), target).backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12), name
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers()):
        assert torch.equal(a, b), name  # running statistics updated once, not again by the recomputation
    assert any(b.item() > 0 for name, b in plain.named_buffers() if name.endswith("num_batches_tracked"))
    plain.eval(), checkpointed.eval()
    with torch.no_grad():
        assert torch.equal(plain(x), checkpointed(x))


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]


def test_partial_channels_search_a_quarter_and_pass_the_rest_through():
    torch.manual_seed(0)
    partial = SearchCell(0, 0, 8, 5, 5, 4, 8, partial_channels=4)
    full = SearchCell(0, 0, 8, 5, 5, 4, 8)
    assert sum(p.numel() for p in partial.parameters()) < sum(p.numel() for p in full.parameters()) / 3
    x = torch.randn(2, 8, 6, 6)
    weights = torch.softmax(torch.randn(num_edges(5), len(PRIMITIVES)), dim=1)
    outputs = partial.mixed_ops(0, x, weights)  # the five edges from H^{l-2}, one per block
    assert len(outputs) == 5 and all(out.shape == (1, *x.shape) for out in outputs)
    # The ops see channels 0..1; channels 2..7 bypass them and reappear unchanged where the shuffle puts them.
    reference = channel_shuffle(torch.cat([torch.zeros(2, 2, 6, 6), x[:, 2:]], dim=1), 4)
    bypass_positions = channel_shuffle(torch.arange(8.0).reshape(1, 8, 1, 1), 4).flatten() >= 2
    for block, out in enumerate(outputs):
        assert torch.equal(out[0][:, bypass_positions], reference[:, bypass_positions])
        e = edge_index(block, 0)
        searched = sum(weights[e, PRIMITIVES.index(name)] * op(x[:, :2])
                       for name, op in plain_edge_ops(partial, block, 0).items())
        assert torch.allclose(out[0][:, ~bypass_positions], searched, atol=1e-6)


def test_partial_channel_supernet_trains_and_must_divide_f():
    torch.manual_seed(0)
    model = AutoDeepLabSearch(3, 3, filter_multiplier=4, block_multiplier=2, steps=2, partial_channels=2)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.randint(0, 3, (2, 32, 32)))
    loss.backward()
    assert model.alphas.grad.abs().sum() > 0 and model.betas.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="partial_channels must divide filter_multiplier"):
        AutoDeepLabSearch(3, 3, filter_multiplier=4, partial_channels=3)
