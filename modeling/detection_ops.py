"""Pure-torch NMS, RoIAlign and deformable convolution (DCNv2), put behind torchvision's entry points where
torchvision's compiled ops are missing.

Beside a CPU-only torch the CUDA build of torchvision cannot load its C++ library (see
``utils.torchvision_compat``), so ``torchvision.ops.nms``, ``batched_nms`` and ``deform_conv2d`` raise, and
``roi_align`` falls back to a pure-Python version that samples the whole H×W map for every bin when the
sampling ratio is adaptive (gigabytes for Mask R-CNN's mask targets) and does not zero samples outside the
map as the kernels do. The functions here follow the CPU kernels' arithmetic (greedy NMS on a stable score
sort, RoIAlign's clamping and out-of-map rules, DCN's zero-padded bilinear sampling), need memory in
proportion to the samples they take, and get their gradients from autograd.

``install()`` routes torchvision (``torchvision.ops`` and the detection models) to them, but only when the
native ops are missing: where torchvision's library loads, its kernels stay in place.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from utils.torchvision_compat import import_torchvision


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = value
    return int(first), int(second)


HALF_PRECISION = (torch.float16, torch.bfloat16)
Op = TypeVar("Op", bound=Callable[..., Tensor])


def _in_float32(op: Op) -> Op:
    """Run ``op`` in float32 with autocast off when its first tensor is half precision or autocast is on, and
    give a floating result back in that tensor's dtype: as torchvision's autocast wrappers of these ops do.

    In bfloat16 a coordinate of 200 is exact only to a pixel, so sample positions, box overlaps and the matrix
    products of the deformable convolution would come out wrong (RoIAlign off by the size of its values).
    """
    def to_float32(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value.float() if value.is_floating_point() else value
        if isinstance(value, (list, tuple)) and any(isinstance(item, Tensor) for item in value):
            return type(value)(to_float32(item) for item in value)
        return value

    @functools.wraps(op)
    def wrapper(first: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        device = first.device.type
        has_autocast = torch.amp.is_autocast_available(device)  # not "meta", where the summaries build networks
        if first.dtype not in HALF_PRECISION and not (has_autocast and torch.is_autocast_enabled(device)):
            return op(first, *args, **kwargs)
        with torch.autocast(device, enabled=False) if has_autocast else contextlib.nullcontext():
            output = op(to_float32(first), *map(to_float32, args), **{k: to_float32(v) for k, v in kwargs.items()})
        return output.to(first.dtype) if output.is_floating_point() else output

    return wrapper  # type: ignore[return-value]


NMS_ROWS_PER_BLOCK = 512  # IoU rows computed at once: a block of 512 × N float32, so memory grows with N only


@_in_float32
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression, as torchvision's CPU kernel.

    Boxes are visited by decreasing score (a stable sort, so equal scores keep their input order); a box is
    kept unless its IoU with an already kept box exceeds ``iou_threshold``. Returns the kept indices (int64)
    in that visiting order.

    The IoUs are computed a block of rows at a time with the kernel's arithmetic (so every decision is the
    kernel's), and the greedy pass reads one row per kept box: a few tensor operations per block instead of
    ten per kept box.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = scores.sort(stable=True, descending=True).indices
    x1, y1, x2, y2 = boxes[order].unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    count = order.numel()
    suppressed = torch.zeros(count, dtype=torch.bool).numpy()
    kept = []
    for start in range(0, count, NMS_ROWS_PER_BLOCK):
        rows = slice(start, min(start + NMS_ROWS_PER_BLOCK, count))
        width = (torch.minimum(x2[rows, None], x2) - torch.maximum(x1[rows, None], x1)).clamp(min=0)
        height = (torch.minimum(y2[rows, None], y2) - torch.maximum(y1[rows, None], y1)).clamp(min=0)
        intersection = width * height
        overlaps = (intersection / (areas[rows, None] + areas - intersection) > iou_threshold).cpu().numpy()
        for row, i in enumerate(range(rows.start, rows.stop)):
            if not suppressed[i]:  # a NaN IoU (two empty boxes) is not above the threshold: suppresses nothing
                kept.append(i)
                suppressed |= overlaps[row]  # boxes before i are decided already; i itself is kept
    return order[torch.tensor(kept, dtype=torch.int64, device=order.device)]


def _as_rois(boxes: Tensor | Sequence[Tensor]) -> Tensor:
    """Boxes as Tensor[K, 5] rows (batch index, x1, y1, x2, y2); a list holds one Tensor[L, 4] per image."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"boxes as one tensor must have shape [K, 5], got {list(boxes.shape)}")
        return boxes
    for image_boxes in boxes:
        if image_boxes.dim() != 2 or image_boxes.shape[1] != 4:
            raise ValueError(f"boxes of one image must have shape [L, 4], got {list(image_boxes.shape)}")
    batch_indices = [torch.full_like(image_boxes[:, :1], index) for index, image_boxes in enumerate(boxes)]
    return torch.cat([torch.cat(batch_indices), torch.cat(list(boxes))], dim=1)


OUTSIDE_THE_MAP = -4.0  # a normalised grid_sample coordinate whose bilinear corners all lie outside the map


def _roi_axis_samples(start: Tensor, bin_size: Tensor, bins: int, grid: int, size: int) -> Tensor:
    """The sample coordinates along one axis of RoIs sharing a grid count, under the RoIAlign kernel's rules.

    Returns [K, bins, grid] coordinates normalised for ``grid_sample`` (align_corners=False: pixel p sits at
    (2p + 1) / size - 1). As in the kernel, a sample before -1 or past ``size`` reads 0 (it is sent outside
    the map, where zero padding reads 0) and the others are clamped into [0, size - 1].
    """
    bin_index = torch.arange(bins, dtype=start.dtype, device=start.device)
    step = torch.arange(grid, dtype=start.dtype, device=start.device) + 0.5
    start, bin_size = start[:, None, None], bin_size[:, None, None]
    coordinate = start + bin_index[None, :, None] * bin_size + step[None, None, :] * bin_size / grid
    inside = (coordinate >= -1.0) & (coordinate <= size)
    normalised = (2 * coordinate.clamp(0, size - 1) + 1) / size - 1
    return torch.where(inside, normalised, OUTSIDE_THE_MAP)


ROI_ALIGN_MAP_COPIES_ELEMENTS = 2 ** 26  # at most this many elements in the per-thread gradients of one map


def _roi_align_one_map(map: Tensor, rows: Tensor, columns: Tensor) -> Tensor:
    """RoIAlign of K RoIs on one map [C, H, W] from their sample rows and columns (``_roi_axis_samples``).

    One ``grid_sample`` reads every sample, each bin's samples side by side in the last axis, so that a bin's
    average is a reduction over contiguous memory. The RoIs are split into chunks sampled as a batch of the
    same (expanded, not copied) map, because ``grid_sample``'s CPU backward runs one thread per batch element.
    Returns [K, C, bins_h, bins_w].
    """
    count, bins_h, grid_h = rows.shape
    _, bins_w, grid_w = columns.shape
    channels = map.shape[0]
    chunks = max(1, min(count, torch.get_num_threads(), ROI_ALIGN_MAP_COPIES_ELEMENTS // max(1, map.numel())))
    per_chunk = -(-count // chunks)
    shape = (count, bins_h, bins_w, grid_h, grid_w)
    grid = torch.stack((columns[:, None, :, None, :].expand(shape), rows[:, :, None, :, None].expand(shape)), -1)
    padding = chunks * per_chunk - count  # padded RoIs sample the map's centre and are dropped
    grid = F.pad(grid, (0, 0) * 5 + (0, padding)).reshape(chunks, per_chunk * bins_h * bins_w, grid_h * grid_w, 2)
    samples = F.grid_sample(map.expand(chunks, *map.shape), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
    pooled = samples.mean(-1).view(chunks, channels, per_chunk, bins_h, bins_w)
    return pooled.transpose(1, 2).reshape(chunks * per_chunk, channels, bins_h, bins_w)[:count]


@_in_float32
def roi_align(input: Tensor, boxes: Tensor | Sequence[Tensor], output_size: int | Sequence[int],
              spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """RoIAlign (average), with the semantics of ``torchvision.ops.roi_align``'s kernels.

    ``boxes``: Tensor[K, 5] (batch index, x1, y1, x2, y2) or one Tensor[L, 4] per image. Each output bin
    averages a grid of bilinear samples, ``sampling_ratio``² of them, or ceil(roi size / output size) per
    axis when ``sampling_ratio`` <= 0. RoIs of the same image and grid are sampled together, so memory grows
    with the number of samples, never with K·H·W. Gradients flow to ``input``, not to ``boxes`` (as the
    kernel). Returns Tensor[K, C, output_h, output_w].
    """
    pooled_height, pooled_width = _pair(output_size)
    rois = _as_rois(boxes).detach().to(input.dtype)
    _, channels, height, width = input.shape
    if rois.shape[0] == 0:
        return input.new_zeros((0, channels, pooled_height, pooled_width))
    offset = 0.5 if aligned else 0.0
    start_x = rois[:, 1] * spatial_scale - offset
    start_y = rois[:, 2] * spatial_scale - offset
    roi_width = (rois[:, 3] * spatial_scale - offset) - start_x
    roi_height = (rois[:, 4] * spatial_scale - offset) - start_y
    if not aligned:
        roi_width, roi_height = roi_width.clamp(min=1.0), roi_height.clamp(min=1.0)
    bin_height, bin_width = roi_height / pooled_height, roi_width / pooled_width
    if sampling_ratio > 0:
        grids = torch.full((rois.shape[0], 2), sampling_ratio, dtype=torch.int64, device=rois.device)
    else:
        grids = torch.stack([torch.ceil(roi_height / pooled_height), torch.ceil(roi_width / pooled_width)], 1).long()
    groups, group_of_roi = torch.unique(torch.cat([rois[:, :1].long(), grids], 1), dim=0, return_inverse=True)
    members, pooled = [], []
    for group, (image, grid_h, grid_w) in enumerate(groups.tolist()):
        rois_in_group = torch.nonzero(group_of_roi == group).squeeze(1)
        members.append(rois_in_group)
        if grid_h <= 0 or grid_w <= 0:  # an empty (aligned) RoI: no samples, the kernel writes 0
            pooled.append(input.new_zeros((rois_in_group.numel(), channels, pooled_height, pooled_width)))
            continue
        rows = _roi_axis_samples(start_y[rois_in_group], bin_height[rois_in_group], pooled_height, grid_h, height)
        columns = _roi_axis_samples(start_x[rois_in_group], bin_width[rois_in_group], pooled_width, grid_w, width)
        pooled.append(_roi_align_one_map(input[image], rows, columns))
    return torch.cat(pooled)[torch.argsort(torch.cat(members))]


@_in_float32
def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None,
                  stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                  dilation: int | Sequence[int] = 1, mask: Tensor | None = None) -> Tensor:
    """Deformable convolution (DCNv2 with ``mask``, DCNv1 without), as ``torchvision.ops.deform_conv2d``.

    Kernel position (i, j) of output (oy, ox) reads the input bilinearly at
    (oy·stride - pad + i·dilation + Δy, ox·stride - pad + j·dilation + Δx), zero outside the map, scales it by
    the mask, and the samples are multiplied with ``weight`` like an im2col convolution. ``offset`` is
    [N, 2·G·kh·kw, out_h, out_w] with a (Δy, Δx) pair per kernel position for each of G offset groups (the
    input channels split into G consecutive parts); ``mask`` is [N, G·kh·kw, out_h, out_w]. The weight may be
    grouped: [out_channels, in_channels // groups, kh, kw].
    """
    stride_h, stride_w = _pair(stride)
    pad_h, pad_w = _pair(padding)
    dilation_h, dilation_w = _pair(dilation)
    batch, in_channels, height, width = input.shape
    out_channels, channels_per_weight_group, kernel_h, kernel_w = weight.shape
    kernel_positions = kernel_h * kernel_w
    out_h = (height + 2 * pad_h - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
    out_w = (width + 2 * pad_w - dilation_w * (kernel_w - 1) - 1) // stride_w + 1
    offset_groups = offset.shape[1] // (2 * kernel_positions)
    if (offset_groups == 0 or offset.shape[1] % (2 * kernel_positions) or in_channels % offset_groups
            or offset.shape[0] != batch or tuple(offset.shape[2:]) != (out_h, out_w)):
        raise ValueError(f"offset must be [{batch}, 2·G·{kernel_positions}, {out_h}, {out_w}] with G dividing "
                         f"{in_channels} input channels, got {list(offset.shape)}")
    if mask is not None and tuple(mask.shape) != (batch, offset_groups * kernel_positions, out_h, out_w):
        raise ValueError(f"mask must be [{batch}, {offset_groups * kernel_positions}, {out_h}, {out_w}], "
                         f"got {list(mask.shape)}")
    if in_channels % channels_per_weight_group or out_channels % (in_channels // channels_per_weight_group):
        raise ValueError(f"weight {list(weight.shape)} does not group {in_channels} input channels")
    weight_groups = in_channels // channels_per_weight_group
    channels_per_offset_group = in_channels // offset_groups

    def positions(out_size: int, stride: int, pad: int, kernel: int, dilation: int) -> Tensor:
        out_index = torch.arange(out_size, device=input.device)
        kernel_index = torch.arange(kernel, device=input.device)
        return (out_index[None, :] * stride - pad + kernel_index[:, None] * dilation).to(input.dtype)

    # Normalised for grid_sample (align_corners=False: pixel p sits at (2p + 1) / size - 1), whose zero padding
    # drops each bilinear corner outside the map, as the kernels do.
    base_y = positions(out_h, stride_h, pad_h, kernel_h, dilation_h).view(kernel_h, 1, out_h, 1)
    base_x = positions(out_w, stride_w, pad_w, kernel_w, dilation_w).view(1, kernel_w, 1, out_w)
    offset_y, offset_x = offset.reshape(batch, offset_groups, kernel_h, kernel_w, 2, out_h, out_w).unbind(4)
    grid = torch.stack(((2 * (base_x + offset_x) + 1) / width - 1, (2 * (base_y + offset_y) + 1) / height - 1), -1)
    sampled = F.grid_sample(input.reshape(batch * offset_groups, channels_per_offset_group, height, width),
                            grid.reshape(batch * offset_groups, kernel_positions * out_h, out_w, 2),
                            mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = sampled.view(batch, offset_groups, channels_per_offset_group, kernel_positions, out_h * out_w)
    if mask is not None:
        sampled = sampled * mask.reshape(batch, offset_groups, 1, kernel_positions, out_h * out_w)
    columns = sampled.reshape(batch, weight_groups, channels_per_weight_group * kernel_positions, out_h * out_w)
    grouped_weight = weight.reshape(weight_groups, out_channels // weight_groups, -1)
    output = torch.matmul(grouped_weight, columns).view(batch, out_channels, out_h, out_w)
    return output if bias is None else output + bias.view(1, -1, 1, 1)


# (module, attribute, replacement): where ``install`` puts these functions.
ENTRY_POINTS: tuple[tuple[str, str, Callable[..., Tensor]], ...] = (
    ("torchvision.ops", "nms", nms),
    ("torchvision.ops.boxes", "nms", nms),  # batched_nms (both strategies) calls this module global
    ("torchvision.ops", "roi_align", roi_align),
    ("torchvision.ops.roi_align", "roi_align", roi_align),  # RoIAlign.forward
    ("torchvision.ops.poolers", "roi_align", roi_align),  # MultiScaleRoIAlign
    ("torchvision.models.detection.roi_heads", "roi_align", roi_align),  # mask targets
    ("torchvision.ops", "deform_conv2d", deform_conv2d),
    ("torchvision.ops.deform_conv", "deform_conv2d", deform_conv2d),  # DeformConv2d.forward
)


def native_ops_available() -> bool:
    """Whether torchvision's compiled library is loaded and its CPU nms kernel runs."""
    torchvision = import_torchvision()
    if not torchvision.extension._has_ops():
        return False
    try:
        torch.ops.torchvision.nms(torch.zeros(1, 4), torch.ones(1), 0.5)
    except RuntimeError:  # NotImplementedError included: the schema exists without a CPU kernel
        return False
    return True


def install() -> tuple[str, ...]:
    """Route torchvision's nms, batched_nms, roi_align, RoIAlign, MultiScaleRoIAlign, deform_conv2d,
    DeformConv2d and the detection models to this module's functions, when the native ops are missing.

    Returns the ``module.attribute`` entry points now pointing here; empty where the native ops work, in
    which case nothing is touched. Calling it again sets the same attributes again.
    """
    if native_ops_available():
        return ()
    for module_name, attribute, replacement in ENTRY_POINTS:
        setattr(importlib.import_module(module_name), attribute, replacement)
    return tuple(f"{module_name}.{attribute}" for module_name, attribute, _ in ENTRY_POINTS)
