"""The mixed ops of all edges that leave one cell state, computed in one pass (the supernet's hot loop).

Every edge applies the same candidate ops to its input, with its own weights, and mixes them by
softmax(α) (paper Eq. 2). The k edges that leave one state share that input, so here:

* the pools and the identity are computed once for all k edges: with ``affine=False``
  BatchNorm their outputs (and running statistics) are the same for every edge;
* ReLU(x), the first layer of every convolutional op, is computed once;
* each convolution runs once for all k edges: dense atrous kernels stacked along the output
  channels, depthwise and pointwise layers as grouped convolutions;
* the last BatchNorm of every op is folded into the α-weighted sum, ``Σ_o (α_o·scale_o)·z_o +
  shift``, so autograd keeps the convolution output z for backward and no normalised copy;
* kernel taps that can only read zero padding are skipped (``trimmed_conv2d``): on the small maps
  of the coarse levels, a 5x5 rate-2 convolution on a 2x2 map is a 1x1 convolution.

This is the same mathematics as running the plain ops of ``modeling.autodeeplab.operations`` edge by edge
(tests check outputs, gradients and running statistics against them); the result is fewer and
larger kernels and about half the saved activations. The ops run at stride 1, as all ops inside
an Auto-DeepLab cell do.

Inputs may stack ``groups`` independent inputs along the batch (the incoming directions of a
node): each group is normalised with its own batch statistics, and the running statistics are
updated once per group in order, exactly as separate calls would. With ``synchronize`` set (several
GPUs, ``--sync_bn``) the batch statistics are those of all processes' batches together, still per
group, which torch's SyncBatchNorm cannot do: it would merge the groups.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from engine.distributed import sum_over_processes
from modeling.autodeeplab.genotype import PRIMITIVES
from modeling.autodeeplab.search_space import at_least_float32

SEPARABLE_OPS = {"sep_conv_3x3": 3, "sep_conv_5x5": 5}
ATROUS_OPS = {"dil_conv_3x3": 3, "dil_conv_5x5": 5}
POOL_OPS = ("max_pool_3x3", "avg_pool_3x3")
SKIP = PRIMITIVES.index("skip_connect")


def trimmed_conv2d(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for a stride-1 convolution with "same" zero padding, without the kernel taps that read
    only padding: tap i sits at offset dilation * (i - K // 2) and reads the input only if that offset is
    smaller than the map. The result and all gradients are those of the full kernel (the skipped taps'
    weight gradients are exactly zero)."""
    kernel, dilation = conv.kernel_size, conv.dilation
    reach = [min(k // 2, (size - 1) // d) for k, size, d in zip(kernel, x.shape[-2:], dilation)]
    weight = conv.weight
    if reach != [k // 2 for k in kernel]:  # slicing costs a zero-filled full-size gradient in backward
        weight = weight[:, :, kernel[0] // 2 - reach[0]: kernel[0] // 2 + reach[0] + 1,
                        kernel[1] // 2 - reach[1]: kernel[1] // 2 + reach[1] + 1]
    return F.conv2d(x, weight, padding=(dilation[0] * reach[0], dilation[1] * reach[1]), dilation=dilation,
                    groups=conv.groups)


class _BatchStatistics(torch.autograd.Function):
    """Mean and biased variance over dims 1 and 3 of ``values`` [groups, n, C, L], computed in float32 or
    wider, keeping for backward only the input in its own precision. Under --amp, torch.var_mean of a
    float32 copy would keep that copy, twice the size of the half-precision input that the
    normalisation keeps anyway."""

    @staticmethod
    def forward(ctx, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        var, mean = torch.var_mean(at_least_float32(values), dim=(1, 3), correction=0)
        ctx.save_for_backward(values, mean)
        return mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_mean: torch.Tensor, grad_var: torch.Tensor) -> torch.Tensor:
        values, mean = ctx.saved_tensors
        count = values.shape[1] * values.shape[3]
        centred = at_least_float32(values) - mean[:, None, :, None]
        grad = grad_mean[:, None, :, None] + 2 * grad_var[:, None, :, None] * centred  # d(mean), d(var)
        return (grad / count).to(values.dtype)


def batch_statistics(z: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance per (group, channel) of ``z`` [groups*n, C, H, W], in float32 or wider."""
    return _BatchStatistics.apply(z.reshape(groups, z.shape[0] // groups, z.shape[1], -1))


def statistics_over_processes(stats: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every process's (mean, biased variance) of an equally sized batch, combined into those of the whole
    batch: the mean of the means, and the mean of (variance + squared deviation of the process's mean),
    which avoids the cancellation of E[x²] - E[x]². One differentiable collective for the whole list."""
    world, rank = dist.get_world_size(), dist.get_rank()
    local = torch.cat([torch.cat([mean.reshape(-1), var.reshape(-1)]) for mean, var in stats])
    rows = [torch.zeros_like(local)] * world
    rows[rank] = local
    gathered = sum_over_processes(torch.stack(rows))  # row r holds process r's statistics
    combined, offset = [], 0
    for mean, _ in stats:
        size = mean.numel()
        means = gathered[:, offset:offset + size].view(world, *mean.shape)
        variances = gathered[:, offset + size:offset + 2 * size].view(world, *mean.shape)
        offset += 2 * size
        whole_mean = means.mean(dim=0)
        combined.append((whole_mean, (variances + (means - whole_mean) ** 2).mean(dim=0)))
    return combined


class EdgeFanOut(nn.Module):
    """The k mixed ops on the edges that leave one state; ``forward`` returns [k, groups, n, C, H, W]."""

    def __init__(self, channels: int, num_edges: int, groups: int = 1, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        c, k = channels, num_edges
        self.channels, self.num_edges, self.groups = c, k, groups
        self.eps, self.momentum = eps, momentum
        self.synchronize = False  # batch statistics over all processes (multi-GPU SyncBatchNorm)
        self.separable = nn.ModuleDict({
            name: nn.ModuleDict({
                # output channel i*k + e of the first depthwise conv is channel i of edge e
                "depthwise1": nn.Conv2d(c, k * c, size, padding=size // 2, groups=c, bias=False),
                "pointwise1": nn.Conv2d(k * c, k * c, 1, groups=k, bias=False),
                "depthwise2": nn.Conv2d(k * c, k * c, size, padding=size // 2, groups=k * c, bias=False),
                "pointwise2": nn.Conv2d(k * c, k * c, 1, groups=k, bias=False),
            }) for name, size in SEPARABLE_OPS.items()
        })
        self.atrous = nn.ModuleDict({
            name: nn.Conv2d(c, k * c, size, padding=2 * (size // 2), dilation=2, bias=False)
            for name, size in ATROUS_OPS.items()
        })
        # One buffer for every BatchNorm; slots in the order forward computes them.
        self.slots: dict[str, slice] = {}
        total = 0
        for name in [*(f"{op}.inner" for op in SEPARABLE_OPS), *SEPARABLE_OPS, *ATROUS_OPS, *POOL_OPS]:
            size = c if name in POOL_OPS else k * c
            self.slots[name] = slice(total, total + size)
            total += size
        self.register_buffer("running_mean", torch.zeros(total))
        self.register_buffer("running_var", torch.ones(total))

    def _statistics(self, inputs: dict[str, torch.Tensor], batch_stats: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(mean, biased variance) [groups, C] that BatchNorm uses on each slot's input: in training those of
        the batch, over all processes when ``synchronize`` is set (recorded in ``batch_stats`` for the running
        statistics); in eval the running ones."""
        if not self.training:
            return [(self.running_mean[self.slots[slot]].expand(self.groups, -1),
                     self.running_var[self.slots[slot]].expand(self.groups, -1)) for slot in inputs]
        stats = [batch_statistics(z, self.groups) for z in inputs.values()]
        processes = dist.get_world_size() if self.synchronize and dist.is_initialized() else 1
        if processes > 1:
            stats = statistics_over_processes(stats)
        for (slot, z), (mean, var) in zip(inputs.items(), stats):
            count = processes * z.numel() // (z.shape[1] * self.groups)
            if count < 2:
                raise ValueError(f"BatchNorm needs more than 1 value per channel in training, got input {list(z.shape)}")
            batch_stats[slot] = (mean, var, count)
        return stats

    def _separable(self, name: str, relu_x: torch.Tensor, batch_stats: dict) -> torch.Tensor:
        """A separable op up to its last BatchNorm: depthwise, pointwise, BatchNorm (as scale * z + shift),
        ReLU, depthwise, pointwise."""
        layers = self.separable[name]
        (gn, c, h, w), g, k = relu_x.shape, self.groups, self.num_edges
        y = trimmed_conv2d(relu_x, layers["depthwise1"]).view(gn, c, k, h, w).transpose(1, 2).reshape(gn, k * c, h, w)
        z = layers["pointwise1"](y)
        [(mean, var)] = self._statistics({f"{name}.inner": z}, batch_stats)
        scale = torch.rsqrt(var + self.eps)
        z = torch.addcmul((-mean * scale)[:, None, :, None, None], scale[:, None, :, None, None],
                          z.view(g, gn // g, k * c, h, w))
        return layers["pointwise2"](trimmed_conv2d(F.relu(z, inplace=True).view(gn, k * c, h, w), layers["depthwise2"]))

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``x`` [groups*n, C, H, W]; ``weights`` [k, len(PRIMITIVES)], the softmax(α) rows of the k edges."""
        (gn, c, h, w), g, k = x.shape, self.groups, self.num_edges
        batch_stats: dict = {}
        relu_x = F.relu(x)
        before_norm = {name: self._separable(name, relu_x, batch_stats) for name in SEPARABLE_OPS}
        before_norm |= {name: trimmed_conv2d(relu_x, conv) for name, conv in self.atrous.items()}
        before_norm["max_pool_3x3"] = F.max_pool2d(x, 3, stride=1, padding=1)
        before_norm["avg_pool_3x3"] = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

        # the statistics of every op as [ops, k, groups, C] (the pools' shared by all edges), in one go
        means, variances = zip(*self._statistics(before_norm, batch_stats))
        mean, var = (torch.stack([s.view(g, -1, c).transpose(0, 1).expand(k, g, c) for s in stats])
                     for stats in (means, variances))
        op_weights = weights[:, [PRIMITIVES.index(name) for name in before_norm]].T.reshape(-1, k, 1, 1)
        coefficients = op_weights * torch.rsqrt(var + self.eps)
        shift = -(coefficients * mean).sum(dim=0)  # [k, groups, C]

        out = weights[:, SKIP].view(k, 1, 1, 1, 1, 1) * x.view(1, g, gn // g, c, h, w)
        for coefficient, z in zip(coefficients, before_norm.values()):
            z = z.view(g, gn // g, -1, c, h, w).permute(2, 0, 1, 3, 4, 5)  # [k or 1 (pools), g, n, C, H, W]
            out.addcmul_(coefficient.view(k, g, 1, c, 1, 1), z)
        out.add_(shift.view(k, g, 1, c, 1, 1))
        if self.training:
            self._update_running_statistics(batch_stats)
        return out

    @torch.no_grad()
    def _update_running_statistics(self, batch_stats: dict) -> None:
        """Once per group, in order, as separate BatchNorm calls would; the variance unbiased."""
        ordered = [batch_stats[slot] for slot in self.slots]
        mean = torch.cat([m for m, _, _ in ordered], dim=1)
        var = torch.cat([v * (count / (count - 1)) for _, v, count in ordered], dim=1)
        for group_mean, group_var in zip(mean.to(self.running_mean.dtype), var.to(self.running_var.dtype)):
            self.running_mean.lerp_(group_mean, self.momentum)
            self.running_var.lerp_(group_var, self.momentum)

    def edge_state(self, edge: int, fused: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The weights and running statistics of one edge, named as the plain ops of ``modeling.autodeeplab.operations``
        (each pool followed by its BatchNorm) name them; ``fused`` maps this module's state names to other
        tensors of the same layout (such as gradients) to split those instead."""
        fused = dict(self.state_dict()) if fused is None else fused
        c, k = self.channels, self.num_edges
        own = slice(edge * c, (edge + 1) * c)
        state = {}
        for name in SEPARABLE_OPS:
            state[f"{name}.1.weight"] = fused[f"separable.{name}.depthwise1.weight"].unflatten(0, (c, k))[:, edge]
            for index, layer in ((2, "pointwise1"), (5, "depthwise2"), (6, "pointwise2")):
                state[f"{name}.{index}.weight"] = fused[f"separable.{name}.{layer}.weight"][own]
        for name in ATROUS_OPS:
            state[f"{name}.conv.weight"] = fused[f"atrous.{name}.weight"][own]
        if "running_mean" in fused:
            norms = {f"{op}.inner": f"{op}.3" for op in SEPARABLE_OPS} | {op: f"{op}.7" for op in SEPARABLE_OPS}
            norms |= {op: f"{op}.bn" for op in ATROUS_OPS} | {op: f"{op}.1" for op in POOL_OPS}
            for slot, prefix in norms.items():
                part = self.slots[slot]
                if slot not in POOL_OPS:
                    part = slice(part.start + own.start, part.start + own.stop)
                for stat in ("running_mean", "running_var"):
                    state[f"{prefix}.{stat}"] = fused[stat][part]
        return state
