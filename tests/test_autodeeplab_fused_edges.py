import pytest
import torch
from torch import nn

from modeling.autodeeplab.fused_edges import EdgeFanOut, batch_statistics, trimmed_conv2d
from modeling.autodeeplab.genotype import PRIMITIVES
from modeling.autodeeplab.operations import OPS


def plain_ops(channels: int) -> nn.ModuleDict:
    """One edge's candidate ops as the supernet defined them before fusion: plain modules, pools + BN."""
    ops = nn.ModuleDict()
    for name in PRIMITIVES[1:]:
        op = OPS[name](channels, 1, False)
        ops[name] = nn.Sequential(op, nn.BatchNorm2d(channels, affine=False)) if "pool" in name else op
    return ops.double()


def plain_fan_out(edges: list[nn.ModuleDict], x: torch.Tensor, weights: torch.Tensor, groups: int) -> torch.Tensor:
    """Σ_o w_o·o(x) edge by edge and, for stacked inputs, one call per group: [k, groups, n, C, H, W]."""
    return torch.stack([
        torch.stack([sum(weights[e, PRIMITIVES.index(name)] * op(chunk) for name, op in ops.items())
                     for chunk in x.chunk(groups)])
        for e, ops in enumerate(edges)])


@pytest.mark.parametrize("channels,num_edges,groups,size", [(3, 4, 3, (7, 5)), (4, 1, 1, (6, 6)), (2, 5, 2, (2, 3))])
def test_fan_out_equals_plain_ops_edge_by_edge(channels, num_edges, groups, size):
    torch.manual_seed(0)
    fan_out = EdgeFanOut(channels, num_edges, groups).double()
    with torch.no_grad():
        fan_out.running_mean.uniform_(-1, 1)
        fan_out.running_var.uniform_(0.5, 2)
    edges = [plain_ops(channels) for _ in range(num_edges)]
    for e, ops in enumerate(edges):
        incompatible = ops.load_state_dict({k: v.clone() for k, v in fan_out.edge_state(e).items()}, strict=False)
        assert not incompatible.unexpected_keys
        assert all(key.endswith("num_batches_tracked") for key in incompatible.missing_keys)
    x = torch.randn(2 * groups, channels, *size, dtype=torch.float64, requires_grad=True)
    x.data[:2] += 3  # groups with different statistics: mixing them up changes the result
    weights = torch.softmax(3 * torch.randn(num_edges, len(PRIMITIVES), dtype=torch.float64), dim=1)
    weights.requires_grad_()

    fused, plain = fan_out(x, weights), plain_fan_out(edges, x, weights, groups)
    torch.testing.assert_close(fused, plain, rtol=1e-10, atol=1e-12)

    upstream = torch.randn_like(fused)
    fused_params = dict(fan_out.named_parameters())
    fused_grads = torch.autograd.grad((fused * upstream).sum(), [x, weights, *fused_params.values()])
    plain_params = [p for ops in edges for p in ops.parameters()]
    plain_grads = torch.autograd.grad((plain * upstream).sum(), [x, weights, *plain_params])
    torch.testing.assert_close(fused_grads[0], plain_grads[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(fused_grads[1], plain_grads[1], rtol=1e-9, atol=1e-12)
    grads_by_name = dict(zip(fused_params, fused_grads[2:]))
    expected = dict(zip([(e, name) for e, ops in enumerate(edges) for name, _ in ops.named_parameters()],
                        plain_grads[2:]))
    for (e, name), grad in expected.items():
        torch.testing.assert_close(fan_out.edge_state(e, grads_by_name)[name], grad, rtol=1e-9, atol=1e-12)

    # running statistics: updated once per group, in order, unbiased variance, as the plain BatchNorms were
    for e, ops in enumerate(edges):
        state = fan_out.edge_state(e)
        for name, buffer in ops.named_buffers():
            if "running" in name:
                torch.testing.assert_close(state[name], buffer, rtol=1e-12, atol=1e-14, msg=name)

    fan_out.eval()
    for ops in edges:
        ops.eval()
    with torch.no_grad():
        torch.testing.assert_close(fan_out(x, weights), plain_fan_out(edges, x, weights, groups),
                                   rtol=1e-10, atol=1e-12)


def test_parameters_are_those_of_the_plain_edges_and_initialised_alike():
    torch.manual_seed(0)
    fan_out = EdgeFanOut(16, 5)
    plain = plain_ops(16)
    assert sum(p.numel() for p in fan_out.parameters()) == 5 * sum(p.numel() for p in plain.parameters())
    for name, weight in plain.named_parameters():  # PyTorch's default Conv2d init: U(±1/sqrt(fan_in))
        split = fan_out.edge_state(3)[name]
        assert split.shape == weight.shape
        bound = 1 / weight[0].numel() ** 0.5
        assert split.abs().max() <= bound and split.abs().max() > 0.8 * bound, name


def test_batch_statistics_are_per_group_and_a_single_value_is_refused_in_training():
    z = torch.cat([torch.full((2, 3, 4, 4), 1.0), torch.arange(96.0).view(2, 3, 4, 4)])
    mean, var = batch_statistics(z, groups=2)
    assert torch.equal(mean[0], torch.ones(3)) and torch.equal(var[0], torch.zeros(3))
    per_channel = z[2:].transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(mean[1], per_channel.mean(dim=1))
    torch.testing.assert_close(var[1], per_channel.var(dim=1, unbiased=False))
    fan_out = EdgeFanOut(3, 2, groups=2)
    weights = torch.softmax(torch.randn(2, len(PRIMITIVES)), dim=1)
    with pytest.raises(ValueError, match=r"more than 1 value per channel in training, got input \[2, 6, 1, 1\]"):  # 2 edges' inner BatchNorm
        fan_out(torch.randn(2, 3, 1, 1), weights)
    assert fan_out.eval()(torch.randn(2, 3, 1, 1), weights).shape == (2, 2, 1, 3, 1, 1)


def test_batch_statistics_of_half_precision_keep_no_float32_copy_for_backward():
    torch.manual_seed(0)
    z = (torch.randn(4, 3, 5, 5) + 2).bfloat16().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        mean, var = batch_statistics(z, groups=2)
    assert mean.dtype == var.dtype == torch.float32
    assert sorted((str(t.dtype), t.numel()) for t in saved) == [("torch.bfloat16", z.numel()), ("torch.float32", 6)]
    upstream_mean, upstream_var = torch.randn(2, 3), torch.randn(2, 3)
    grad, = torch.autograd.grad((mean * upstream_mean).sum() + (var * upstream_var).sum(), z)
    reference = z.detach().float().requires_grad_()
    var32, mean32 = torch.var_mean(reference.view(2, 2, 3, 25), dim=(1, 3), correction=0)
    torch.testing.assert_close((mean, var), (mean32, var32))
    reference_grad, = torch.autograd.grad((mean32 * upstream_mean).sum() + (var32 * upstream_var).sum(), reference)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad.float(), reference_grad, rtol=8e-3, atol=1e-4)  # bfloat16 rounding only


@pytest.mark.parametrize("kernel,dilation,groups", [(5, 2, 1), (3, 2, 1), (5, 1, 4), (3, 1, 1), (5, 3, 2)])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (4, 4), (9, 12)])
def test_trimmed_convolution_equals_the_full_kernel(kernel, dilation, groups, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, kernel, padding=dilation * (kernel // 2), dilation=dilation, groups=groups,
                     bias=False).double()
    x = torch.randn(2, 4, *size, dtype=torch.float64, requires_grad=True)
    trimmed, full = trimmed_conv2d(x, conv), conv(x)
    torch.testing.assert_close(trimmed, full, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(full)
    trimmed_grads = torch.autograd.grad((trimmed * upstream).sum(), [x, conv.weight])
    full_grads = torch.autograd.grad((full * upstream).sum(), [x, conv.weight])
    for a, b in zip(trimmed_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    reach = (size[0] - 1) // dilation
    if reach < kernel // 2:  # the taps beyond the map's reach read only padding: exactly zero gradient
        assert (trimmed_grads[1][:, :, : kernel // 2 - reach] == 0).all()
