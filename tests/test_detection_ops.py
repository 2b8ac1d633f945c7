"""Pure-torch NMS, RoIAlign and DCNv2 against hand cases and slow loop references that follow torchvision's
CPU kernels line by line (and against the kernels themselves where they load), and the guard that installs
them behind torchvision only where the native ops are missing."""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from modeling import detection_ops
from modeling.detection_ops import deform_conv2d, install, native_ops_available, nms, roi_align
from tests.conftest import ROOT
from utils.torchvision_compat import import_torchvision

torchvision = import_torchvision()
NATIVE = torchvision.extension._has_ops()
needs_native = pytest.mark.skipif(not NATIVE, reason="torchvision's compiled ops do not load here")
needs_missing_native = pytest.mark.skipif(native_ops_available(),
                                          reason="native ops work here, so install() leaves them in place")


# ---------------------------------------------------------------- slow references, kernel rule by rule


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    rows, values = boxes.tolist(), scores.tolist()
    order = sorted(range(len(values)), key=lambda index: -values[index])  # Python's sort is stable
    suppressed, kept = set(), []
    for position, i in enumerate(order):
        if i in suppressed:
            continue
        kept.append(i)
        ax1, ay1, ax2, ay2 = rows[i]
        for j in order[position + 1:]:
            bx1, by1, bx2, by2 = rows[j]
            inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
            union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
            if union != 0 and inter / union > threshold:  # 0 / 0 is the kernel's NaN: never above the threshold
                suppressed.add(j)
    return kept


def roi_align_bilinear(plane: list[list[float]], height: int, width: int, y: float, x: float) -> float:
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * plane[y_low][x_low] + hy * lx * plane[y_low][x_high]
            + ly * hx * plane[y_high][x_low] + ly * lx * plane[y_high][x_high])


def reference_roi_align(input, rois, pooled_h, pooled_w, scale, sampling_ratio, aligned):
    data = input.tolist()
    _, channels, height, width = input.shape
    output = torch.zeros(len(rois), channels, pooled_h, pooled_w, dtype=torch.float64)
    for k, (batch, x1, y1, x2, y2) in enumerate(rois.tolist()):
        offset = 0.5 if aligned else 0.0
        start_w, start_h = x1 * scale - offset, y1 * scale - offset
        roi_w, roi_h = (x2 * scale - offset) - start_w, (y2 * scale - offset) - start_h
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / pooled_h, roi_w / pooled_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / pooled_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pooled_w)
        count = max(grid_h * grid_w, 1)
        for c in range(channels):
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    total = 0.0
                    for iy in range(grid_h):
                        y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                        for ix in range(grid_w):
                            x = start_w + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                            total += roi_align_bilinear(data[int(batch)][c], height, width, y, x)
                    output[k, c, ph, pw] = total / count
    return output


def deform_bilinear(plane: list[list[float]], height: int, width: int, h: float, w: float) -> float:
    if h <= -1 or height <= h or w <= -1 or width <= w:
        return 0.0
    h_low, w_low = math.floor(h), math.floor(w)
    h_high, w_high = h_low + 1, w_low + 1
    lh, lw = h - h_low, w - w_low
    hh, hw = 1 - lh, 1 - lw
    v1 = plane[h_low][w_low] if h_low >= 0 and w_low >= 0 else 0.0
    v2 = plane[h_low][w_high] if h_low >= 0 and w_high <= width - 1 else 0.0
    v3 = plane[h_high][w_low] if h_high <= height - 1 and w_low >= 0 else 0.0
    v4 = plane[h_high][w_high] if h_high <= height - 1 and w_high <= width - 1 else 0.0
    return hh * hw * v1 + hh * lw * v2 + lh * hw * v3 + lh * lw * v4


def reference_deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask):
    data, offsets, masks, weights = input.tolist(), offset.tolist(), mask.tolist(), weight.tolist()
    batch, in_channels, height, width = input.shape
    out_channels, channels_per_weight_group, kernel_h, kernel_w = weight.shape
    out_h, out_w = offset.shape[2:]
    offset_groups = offset.shape[1] // (2 * kernel_h * kernel_w)
    outputs_per_weight_group = out_channels // (in_channels // channels_per_weight_group)
    output = torch.zeros(batch, out_channels, out_h, out_w, dtype=torch.float64)
    for n in range(batch):
        for o in range(out_channels):
            for oy in range(out_h):
                for ox in range(out_w):
                    total = bias[o].item()
                    for local_c in range(channels_per_weight_group):
                        c = (o // outputs_per_weight_group) * channels_per_weight_group + local_c
                        group = c // (in_channels // offset_groups)
                        for i in range(kernel_h):
                            for j in range(kernel_w):
                                position = i * kernel_w + j
                                first = group * 2 * kernel_h * kernel_w + 2 * position
                                y = oy * stride[0] - padding[0] + i * dilation[0] + offsets[n][first][oy][ox]
                                x = ox * stride[1] - padding[1] + j * dilation[1] + offsets[n][first + 1][oy][ox]
                                scale = masks[n][group * kernel_h * kernel_w + position][oy][ox]
                                total += (weights[o][local_c][i][j] * scale
                                          * deform_bilinear(data[n][c], height, width, y, x))
                    output[n, o, oy, ox] = total
    return output


def random_rois(generator: torch.Generator, count: int, images: int, extent: float) -> torch.Tensor:
    """Boxes in image coordinates of an ``extent``-sized image, many crossing its edges, plus edge cases."""
    corner = torch.rand(count, 2, generator=generator, dtype=torch.float64) * (extent + 12) - 6
    size = torch.rand(count, 2, generator=generator, dtype=torch.float64) * extent * 0.8 + 0.3
    batch = torch.randint(images, (count, 1), generator=generator).double()
    special = torch.tensor([[0, -9.0, -9.0, -2.0, -3.0],  # wholly before the map
                            [1, extent - 1, extent - 2, extent + 9, extent + 9],  # past its far edges
                            [0, 3.0, 4.0, 3.2, 4.1],  # tiny
                            [1, 5.0, 5.0, 4.0, 4.5]], dtype=torch.float64)  # reversed corners
    return torch.cat([torch.cat([batch, corner, corner + size], 1), special])


# ---------------------------------------------------------------- nms


HAND_BOXES = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 5], [20, 20, 30, 30]], dtype=torch.float64)
HAND_SCORES = torch.tensor([0.9, 0.8, 0.7, 0.95], dtype=torch.float64)


@pytest.mark.parametrize("threshold, kept", [(0.3, [3, 0]), (0.5, [3, 0, 2]), (0.7, [3, 0, 1, 2])])
def test_nms_hand_case(threshold, kept):
    # IoU(0, 1) = 81/119 ≈ 0.68, IoU(0, 2) = 0.5 (not > 0.5), IoU(1, 2) = 36/114 ≈ 0.32; box 3 is apart
    assert nms(HAND_BOXES, HAND_SCORES, threshold).tolist() == kept


def test_nms_keeps_the_first_of_equal_scores_and_returns_int64():
    boxes = torch.tensor([[0.0, 0, 4, 4], [0.0, 0, 4, 4], [10.0, 10, 12, 12]])
    keep = nms(boxes, torch.tensor([0.5, 0.5, 0.5]), 0.5)
    assert keep.dtype == torch.int64 and keep.tolist() == [0, 2]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_equals_brute_force_on_random_boxes(threshold):
    generator = torch.Generator().manual_seed(int(threshold * 10))
    corner = torch.rand(300, 2, generator=generator, dtype=torch.float64) * 100
    boxes = torch.cat([corner, corner + 1 + torch.rand(300, 2, generator=generator, dtype=torch.float64) * 40], 1)
    scores = torch.randint(20, (300,), generator=generator).double() / 20  # many ties: the order must be stable
    assert nms(boxes, scores, threshold).tolist() == reference_nms(boxes, scores, threshold)


def test_nms_across_blocks_of_rows_equals_brute_force():
    """More boxes than one block of IoU rows (three blocks), clustered so that boxes of one block suppress boxes of
    the next, with empty boxes among them (their IoU with each other is NaN: no suppression)."""
    from modeling.detection_ops import NMS_ROWS_PER_BLOCK

    count = 2 * NMS_ROWS_PER_BLOCK + 176
    generator = torch.Generator().manual_seed(3)
    corner = torch.rand(count, 2, generator=generator, dtype=torch.float64) * 60
    boxes = torch.cat([corner, corner + 2 + torch.rand(count, 2, generator=generator, dtype=torch.float64) * 20], 1)
    boxes[::97, 2:] = boxes[::97, :2]  # empty boxes
    scores = torch.rand(count, generator=generator, dtype=torch.float64)
    for threshold in (0.3, 0.6):
        kept = nms(boxes, scores, threshold)
        assert kept.tolist() == reference_nms(boxes, scores, threshold)
        assert kept.max() >= 2 * NMS_ROWS_PER_BLOCK  # the last block decided some


@needs_native
def test_nms_equals_the_native_kernel():
    generator = torch.Generator().manual_seed(1)
    corner = torch.rand(2000, 2, generator=generator) * 200
    boxes = torch.cat([corner, corner + 1 + torch.rand(2000, 2, generator=generator) * 50], 1)
    scores = torch.rand(2000, generator=generator)
    for threshold in (0.3, 0.5, 0.7):
        assert torch.equal(nms(boxes, scores, threshold), torch.ops.torchvision.nms(boxes, scores, threshold))


# ---------------------------------------------------------------- roi_align


VALUES_4X4 = torch.arange(16, dtype=torch.float64).view(1, 1, 4, 4)  # value = 4·y + x, so bilinear is exact


@pytest.mark.parametrize("box, output_size, sampling_ratio, aligned, expected", [
    ([0, 0, 3, 3], 2, 1, False, [[3.75, 5.25], [9.75, 11.25]]),  # samples at 0.75 and 2.25
    ([0, 0, 4, 4], 2, 1, True, [[2.5, 4.5], [10.5, 12.5]]),  # shifted by -0.5: samples at 0.5 and 2.5
    ([0, 0, 2, 2], 2, 2, True, [[0.625, 1.5], [4.125, 5.0]]),  # the sample at -0.25 is clamped to 0
    ([3, 0, 6, 1], (1, 2), 1, False, [[5.0, 0.0]]),  # x = 3.75 clamps to the last column; x = 5.25 > 4 gives 0
    ([0, 0, 3, 3], 1, -1, False, [[7.5]]),  # adaptive: 3×3 samples at 0.5, 1.5, 2.5
])
def test_roi_align_hand_cases(box, output_size, sampling_ratio, aligned, expected):
    rois = torch.tensor([[0.0, *box]], dtype=torch.float64)
    output = roi_align(VALUES_4X4, rois, output_size, 1.0, sampling_ratio, aligned)
    assert output[0, 0].tolist() == expected


def test_roi_align_takes_one_box_list_per_image():
    generator = torch.Generator().manual_seed(2)
    input = torch.rand(2, 3, 6, 7, generator=generator, dtype=torch.float64)
    per_image = [torch.tensor([[0.0, 0, 4, 5], [1, 1, 6, 3]], dtype=torch.float64),
                 torch.tensor([[2.0, 2, 5, 6]], dtype=torch.float64)]
    rois = torch.tensor([[0, 0.0, 0, 4, 5], [0, 1, 1, 6, 3], [1, 2, 2, 5, 6]], dtype=torch.float64)
    assert torch.equal(roi_align(input, per_image, 3, 1.0, 2), roi_align(input, rois, 3, 1.0, 2))


@pytest.mark.parametrize("sampling_ratio", [2, 0])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_roi_align_equals_the_loop_reference(sampling_ratio, aligned, scale):
    generator = torch.Generator().manual_seed(3)
    input = torch.randn(2, 3, 7, 9, generator=generator, dtype=torch.float64)
    rois = random_rois(generator, 12, images=2, extent=9 / scale)
    output = roi_align(input, rois, (3, 2), scale, sampling_ratio, aligned)
    expected = reference_roi_align(input, rois, 3, 2, scale, sampling_ratio, aligned)
    assert (output - expected).abs().max().item() <= 1e-10


@pytest.mark.parametrize("chunks", [2, 3, 5])
def test_roi_align_in_chunks_equals_one_chunk(monkeypatch, chunks):
    # Each image's RoIs are sampled in one chunk per thread (the last padded); the chunks change the batching,
    # never the RoIs' outputs or the map's gradient. 7 and 10 RoIs per image: each chunk count pads one.
    generator = torch.Generator().manual_seed(6)
    input = torch.randn(2, 3, 7, 9, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = random_rois(generator, 13, images=2, extent=9)
    upstream = torch.randn(len(rois), 3, 3, 2, generator=generator, dtype=torch.float64)

    def output_and_gradient(threads: int) -> tuple[torch.Tensor, torch.Tensor]:
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        output = roi_align(input, rois, (3, 2), 1.0, 2)
        return output.detach(), torch.autograd.grad(output, input, upstream)[0]

    one_output, one_gradient = output_and_gradient(1)
    output, gradient = output_and_gradient(chunks)
    assert (output - one_output).abs().max().item() <= 1e-12
    assert (gradient - one_gradient).abs().max().item() <= 1e-12
    assert (output - reference_roi_align(input.detach(), rois, 3, 2, 1.0, 2, False)).abs().max().item() <= 1e-10


def test_roi_align_of_a_map_without_channels_has_none():
    assert roi_align(torch.zeros(1, 0, 5, 5), torch.tensor([[0, 0.0, 0, 3, 3]]), 2).shape == (1, 0, 2, 2)


@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_roi_align_gradcheck(sampling_ratio):
    generator = torch.Generator().manual_seed(4)
    input = torch.randn(1, 2, 5, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.3, 0.6, 4.2, 3.9], [0, -1.5, 2.2, 3.1, 6.5]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: roi_align(x, rois, 2, 1.0, sampling_ratio, True), (input,))


def test_roi_align_mask_targets_on_a_large_map_need_little_memory():
    # Adaptive sampling of 64 RoIs on a 2048² mask: anything that samples the whole map per RoI (as
    # torchvision's pure-Python fallback) needs 64·2048² floats = 1 GB per intermediate.
    script = textwrap.dedent("""
        import resource, torch
        from modeling.detection_ops import roi_align
        generator = torch.Generator().manual_seed(0)
        masks = (torch.rand(1, 1, 2048, 2048, generator=generator) > 0.5).float()
        corner = torch.rand(64, 2, generator=generator) * 1700
        size = 32 + torch.rand(64, 2, generator=generator) * 224
        rois = torch.cat([torch.zeros(64, 1), corner, corner + size], 1)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        targets = roi_align(masks, rois, (28, 28), 1.0, -1)
        growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert targets.shape == (64, 1, 28, 28) and 0 <= targets.min() and targets.max() <= 1
        print(growth_mb)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 500


@needs_native
@pytest.mark.parametrize("sampling_ratio", [2, 0])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_equals_the_native_kernel(sampling_ratio, aligned):
    generator = torch.Generator().manual_seed(5)
    input = torch.randn(2, 4, 16, 20, generator=generator, dtype=torch.float64)
    rois = random_rois(generator, 40, images=2, extent=40)
    native = torch.ops.torchvision.roi_align(input, rois, 0.5, 5, 4, sampling_ratio, aligned)
    assert (roi_align(input, rois, (5, 4), 0.5, sampling_ratio, aligned) - native).abs().max().item() <= 1e-10


# ---------------------------------------------------------------- deform_conv2d


def random_deform_case(generator: torch.Generator):
    """Input 2×4×5×6, weight in 2 groups, 2 offset groups, stride (2, 1), padding (1, 2), dilation (2, 1)."""
    input = torch.randn(2, 4, 5, 6, generator=generator, dtype=torch.float64)
    weight = torch.randn(4, 2, 2, 3, generator=generator, dtype=torch.float64)
    bias = torch.randn(4, generator=generator, dtype=torch.float64)
    offset = torch.randn(2, 2 * 2 * 6, 3, 8, generator=generator, dtype=torch.float64) * 2
    mask = torch.rand(2, 2 * 6, 3, 8, generator=generator, dtype=torch.float64)
    return input, offset, weight, bias, mask


GEOMETRY = {"stride": (2, 1), "padding": (1, 2), "dilation": (2, 1)}


@pytest.mark.parametrize("with_mask", [True, False])
def test_deform_conv2d_without_offsets_is_conv2d(with_mask):
    input, offset, weight, bias, mask = random_deform_case(torch.Generator().manual_seed(6))
    output = deform_conv2d(input, torch.zeros_like(offset), weight, bias, mask=torch.ones_like(mask)
                           if with_mask else None, **GEOMETRY)
    assert torch.allclose(output, F.conv2d(input, weight, bias, groups=2, **GEOMETRY), rtol=0, atol=1e-12)


def test_deform_conv2d_with_a_unit_x_offset_reads_the_next_column():
    # Each tap reads one column to the right: the same as a plain convolution of the zero-padded input moved
    # one column left (a zero column entering on the right), with the padding already applied.
    generator = torch.Generator().manual_seed(7)
    input = torch.randn(1, 3, 5, 6, generator=generator, dtype=torch.float64)
    weight = torch.randn(2, 3, 3, 3, generator=generator, dtype=torch.float64)
    offset = torch.zeros(1, 18, 5, 6, dtype=torch.float64)
    offset[:, 1::2] = 1.0  # (Δy, Δx) = (0, 1) at every kernel position
    moved = F.pad(F.pad(input, (1, 1, 1, 1))[..., 1:], (0, 1))
    half_mask = torch.full((1, 9, 5, 6), 0.5, dtype=torch.float64)
    output = deform_conv2d(input, offset, weight, padding=1, mask=half_mask)
    assert torch.allclose(output, 0.5 * F.conv2d(moved, weight), rtol=0, atol=1e-12)


def test_deform_conv2d_equals_the_loop_reference():
    input, offset, weight, bias, mask = random_deform_case(torch.Generator().manual_seed(8))
    output = deform_conv2d(input, offset, weight, bias, mask=mask, **GEOMETRY)
    expected = reference_deform_conv2d(input, offset, weight, bias, mask=mask, **GEOMETRY)
    assert (output - expected).abs().max().item() <= 1e-10


def test_deform_conv2d_gradcheck():
    generator = torch.Generator().manual_seed(9)
    tensors = [torch.randn(1, 2, 4, 4, generator=generator, dtype=torch.float64),
               torch.rand(1, 8, 3, 3, generator=generator, dtype=torch.float64) * 2 - 1,
               torch.randn(2, 2, 2, 2, generator=generator, dtype=torch.float64),
               torch.rand(1, 4, 3, 3, generator=generator, dtype=torch.float64)]
    input, offset, weight, mask = (tensor.requires_grad_() for tensor in tensors)
    assert torch.autograd.gradcheck(lambda x, o, w, m: deform_conv2d(x, o, w, mask=m), (input, offset, weight, mask))


@needs_native
def test_deform_conv2d_equals_the_native_kernel():
    input, offset, weight, bias, mask = random_deform_case(torch.Generator().manual_seed(10))
    native = torch.ops.torchvision.deform_conv2d(input, weight, offset, mask, bias, 2, 1, 1, 2, 2, 1, 2, 2, True)
    assert (deform_conv2d(input, offset, weight, bias, mask=mask, **GEOMETRY) - native).abs().max().item() <= 1e-10


# ---------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("autocast", [False, True])
def test_half_precision_inputs_are_computed_in_float32(dtype, autocast):
    # In half precision a position of 200 is exact to about a pixel: sampled there, RoIAlign was off by the size
    # of its values. The ops compute in float32 (autocast off) and give the input's dtype back, as torchvision's
    # autocast wrappers do; so each equals the float32 op on the same (rounded) inputs, rounded.
    generator = torch.Generator().manual_seed(7)
    features = torch.randn(1, 4, 120, 200, generator=generator).to(dtype)
    rois = torch.tensor([[0, 401.3, 203.7, 611.9, 377.2], [0, 101.1, 61.4, 780.0, 470.3]])
    offset = (torch.randn(1, 18, 120, 200, generator=generator) * 3).to(dtype)
    mask = torch.rand(1, 9, 120, 200, generator=generator).to(dtype)
    weight, bias = torch.randn(2, 4, 3, 3, generator=generator) / 6, torch.randn(2, generator=generator)
    boxes = (torch.rand(300, 2, generator=generator) * 700).repeat(1, 2) + torch.rand(300, 4, generator=generator) * \
        torch.tensor([0, 0, 90, 90])
    scores = torch.rand(300, generator=generator)
    expected_pooled = roi_align(features.float(), rois, 7, 0.25, 2).to(dtype)
    expected_deformed = deform_conv2d(features.float(), offset.float(), weight, bias, padding=1,
                                      mask=mask.float()).to(dtype)
    expected_kept = nms(boxes.to(dtype).float(), scores.to(dtype).float(), 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        pooled = roi_align(features, rois, 7, 0.25, 2)
        deformed = deform_conv2d(features, offset, weight, bias, padding=1, mask=mask)
        kept = nms(boxes.to(dtype), scores.to(dtype), 0.5)
    assert pooled.dtype == deformed.dtype == dtype and torch.equal(pooled, expected_pooled)
    assert torch.equal(deformed, expected_deformed) and torch.equal(kept, expected_kept)


def test_float32_inputs_under_autocast_stay_float32():
    # Autocast would run the deformable convolution's matrix product in bfloat16; it is off inside the ops.
    input, offset, weight, bias, mask = random_deform_case(torch.Generator().manual_seed(8))
    input, offset, weight, bias, mask = (tensor.float() for tensor in (input, offset, weight, bias, mask))
    expected = deform_conv2d(input, offset, weight, bias, mask=mask, **GEOMETRY)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = deform_conv2d(input, offset, weight, bias, mask=mask, **GEOMETRY)
    assert output.dtype == torch.float32 and torch.equal(output, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ops_on_the_meta_device_give_shapes(dtype):
    # The network summaries build models on "meta", where autocast does not exist: the ops must not ask it.
    input = torch.empty(1, 4, 20, 30, device="meta", dtype=dtype)
    offset, weight = torch.empty(1, 18, 20, 30, device="meta"), torch.empty(2, 4, 3, 3, device="meta")
    deformed = deform_conv2d(input, offset, weight, padding=1)
    assert deformed.shape == (1, 2, 20, 30) and deformed.dtype == dtype


# ---------------------------------------------------------------- install()


@pytest.fixture
def restored_torchvision(monkeypatch):
    """Every entry point install() may set, put back as it was after the test."""
    for module_name, attribute, _ in detection_ops.ENTRY_POINTS:
        module = importlib.import_module(module_name)
        monkeypatch.setattr(module, attribute, getattr(module, attribute))


def test_native_ops_are_reported_as_torchvision_loads_them():
    assert native_ops_available() == NATIVE


@needs_missing_native
def test_install_routes_torchvision_and_its_detection_models_here(restored_torchvision):
    names = install()
    assert set(names) == {f"{module}.{attribute}" for module, attribute, _ in detection_ops.ENTRY_POINTS}
    for module_name, attribute, replacement in detection_ops.ENTRY_POINTS:
        assert getattr(importlib.import_module(module_name), attribute) is replacement
    from torchvision.models.detection.roi_heads import project_masks_on_boxes

    generator = torch.Generator().manual_seed(11)
    features = torch.randn(2, 3, 8, 8, generator=generator)
    boxes = torch.tensor([[1.0, 2, 9, 12], [0, 0, 15, 15], [1.5, 1.5, 5, 5]])
    rois = torch.cat([torch.tensor([[0.0], [1], [1]]), boxes], 1)
    expected = roi_align(features, rois, 2, 0.5, 2)
    assert torch.equal(torchvision.ops.roi_align(features, rois, 2, 0.5, 2), expected)
    assert torch.equal(torchvision.ops.RoIAlign(2, 0.5, 2)(features, rois), expected)
    pooled = torchvision.ops.MultiScaleRoIAlign(["p"], 2, 2)({"p": features}, [boxes[:1], boxes[1:]], [(16, 16)] * 2)
    assert torch.equal(pooled, expected)
    masks = (torch.rand(2, 20, 20, generator=generator) > 0.5).float()
    matched = torch.tensor([1, 0, 1])
    mask_rois = torch.cat([matched[:, None].float(), boxes * 2 - 3], 1)
    projected = project_masks_on_boxes(masks, boxes * 2 - 3, matched, 7)
    assert torch.equal(projected, roi_align(masks[:, None], mask_rois, 7)[:, 0])

    scores = torch.tensor([0.9, 0.8, 0.7])
    assert torch.equal(torchvision.ops.nms(boxes, scores, 0.3), nms(boxes, scores, 0.3))
    input, offset, weight, bias, mask = random_deform_case(torch.Generator().manual_seed(12))
    assert torch.equal(torchvision.ops.deform_conv2d(input, offset, weight, bias, mask=mask, **GEOMETRY),
                       deform_conv2d(input, offset, weight, bias, mask=mask, **GEOMETRY))
    layer = torchvision.ops.DeformConv2d(4, 4, (2, 3), groups=2, **GEOMETRY).double()
    assert torch.equal(layer(input, offset, mask),
                       deform_conv2d(input, offset, layer.weight, layer.bias, mask=mask, **GEOMETRY))


@needs_missing_native
@pytest.mark.parametrize("count", [200, 1500])  # 1500 boxes take batched_nms's per-class loop, 200 its offset trick
def test_batched_nms_through_torchvision_keeps_classes_apart(restored_torchvision, count):
    install()
    assert torchvision.ops.batched_nms(HAND_BOXES[:2], HAND_SCORES[:2], torch.tensor([0, 1]), 0.5).tolist() == [0, 1]
    assert torchvision.ops.batched_nms(HAND_BOXES[:2], HAND_SCORES[:2], torch.tensor([0, 0]), 0.5).tolist() == [0]
    generator = torch.Generator().manual_seed(count)
    corner = torch.rand(count, 2, generator=generator, dtype=torch.float64) * 100
    boxes = torch.cat([corner, corner + 1 + torch.rand(count, 2, generator=generator, dtype=torch.float64) * 40], 1)
    scores = torch.rand(count, generator=generator, dtype=torch.float64)
    classes = torch.randint(3, (count,), generator=generator)
    kept = []
    for label in range(3):
        members = torch.nonzero(classes == label).squeeze(1)
        kept += members[reference_nms(boxes[members], scores[members], 0.5)].tolist()
    expected = sorted(kept, key=lambda index: -scores[index].item())
    assert torchvision.ops.batched_nms(boxes, scores, classes, 0.5).tolist() == expected


@needs_missing_native
def test_install_twice_is_harmless(restored_torchvision):
    assert install() == install()
    for module_name, attribute, replacement in detection_ops.ENTRY_POINTS:
        assert getattr(importlib.import_module(module_name), attribute) is replacement
    assert torchvision.ops.nms(HAND_BOXES, HAND_SCORES, 0.5).tolist() == [3, 0, 2]


def test_install_touches_nothing_where_native_ops_work(restored_torchvision, monkeypatch):
    monkeypatch.setattr(detection_ops, "native_ops_available", lambda: True)
    sentinels = {}
    for module_name, attribute, _ in detection_ops.ENTRY_POINTS:
        sentinels[module_name, attribute] = object()
        monkeypatch.setattr(importlib.import_module(module_name), attribute, sentinels[module_name, attribute])
    assert install() == ()
    for (module_name, attribute), sentinel in sentinels.items():
        assert getattr(importlib.import_module(module_name), attribute) is sentinel


def test_deform_conv2d_of_an_empty_batch_is_empty():
    """A mask head's deformable layer on an image without detections: no RoI, no output, no error."""
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    output = detection_ops.deform_conv2d(torch.zeros(0, 3, 5, 5), torch.zeros(0, 18, 5, 5), weight, torch.zeros(4),
                                         padding=1, mask=torch.zeros(0, 9, 5, 5))
    assert output.shape == (0, 4, 5, 5)
    output.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))
