import numpy as np
import pytest
import torch

from dataloaders.transforms import (IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, BoundedRandomScale, RandomScale,
                                    candidate_eval_transform, candidate_train_transform, denormalize, eval_transform,
                                    retrain_train_transform, search_train_transform, seeded_rng)
from utils.torchvision_compat import import_torchvision

import_torchvision()
from torchvision import tv_tensors  # noqa: E402

HEIGHT, WIDTH = 40, 50


def label_of(rows, cols):
    """The mask of the coordinate image: a label that depends on both coordinates."""
    return (rows * 7 + cols * 3) % 5


def coordinate_sample(height=HEIGHT, width=WIDTH):
    """An image whose pixels spell their own (row, col), and the mask ``label_of(row, col)``."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    image = np.stack([rows, cols, np.full_like(rows, 128)], axis=-1).astype(np.uint8)
    return image, label_of(rows, cols).astype(np.uint8)


def decode_coordinates(image):
    """The (row, col) each output pixel was sampled at, from a normalised output image."""
    pixels = denormalize(image) * 255
    return pixels[0], pixels[1]


def assert_aligned(image, mask):
    """Each labelled pixel carries the label of a source pixel within one pixel of where the image
    pixel was sampled (nearest-neighbour masks and bilinear images use slightly different grids)."""
    rows, cols = decode_coordinates(image)
    labelled = mask != IGNORE_INDEX
    assert labelled.any()
    matches = torch.zeros_like(labelled)
    for d_row in (-1, 0, 1):
        for d_col in (-1, 0, 1):
            matches |= mask == label_of(rows.round().long() + d_row, cols.round().long() + d_col)
    assert matches[labelled].all()


def run(transform, seed, sample=None):
    with seeded_rng(seed):
        return transform(*(sample or coordinate_sample()))


def test_eval_transform_without_resize_only_normalises():
    image_np, mask_np = coordinate_sample()
    image, mask = eval_transform(None)(image_np, mask_np)
    expected = (torch.from_numpy(image_np).permute(2, 0, 1).float() / 255
                - torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1)) / torch.tensor(IMAGENET_STD).reshape(3, 1, 1)
    assert image.dtype == torch.float32 and torch.allclose(image, expected, atol=1e-6)
    assert mask.dtype == torch.int64 and torch.equal(mask, torch.from_numpy(mask_np).long())
    assert type(image) is torch.Tensor and type(mask) is torch.Tensor


def test_eval_transform_resizes_the_short_side_and_keeps_alignment():
    image, mask = eval_transform(20)(*coordinate_sample())
    assert image.shape == (3, 20, 25) and mask.shape == (20, 25)
    assert_aligned(image, mask)


def test_search_transform_crops_flips_and_keeps_alignment():
    outputs = [run(search_train_transform(None, 24), seed) for seed in range(12)]
    for image, mask in outputs:
        assert image.shape == (3, 24, 24) and mask.shape == (24, 24)
        assert_aligned(image, mask)
        assert set(mask.unique().tolist()) <= set(range(5))
    corners = {round(float(decode_coordinates(image)[1][0, 0])) for image, _ in outputs}
    assert len(corners) > 3
    flipped = [decode_coordinates(image)[1][0, 0] > decode_coordinates(image)[1][0, -1] for image, _ in outputs]
    assert any(flipped) and not all(flipped)


def test_search_transform_resizes_before_cropping():
    image, mask = run(search_train_transform(80, 64), 0)
    assert image.shape == (3, 64, 64)
    assert_aligned(image, mask)
    # The crop comes from the 80x100 resized image: sampled rows span about half the source height.
    rows, _ = decode_coordinates(image)
    assert 25 < float(rows.max() - rows.min()) < 36


def test_random_scale_resizes_both_by_one_factor():
    image = tv_tensors.Image(torch.zeros(3, HEIGHT, WIDTH, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.zeros(HEIGHT, WIDTH, dtype=torch.uint8))
    for seed in range(5):
        with seeded_rng(seed):
            out_image, out_mask = RandomScale((0.5, 2.0))(image, mask)
        height, width = out_image.shape[-2:]
        assert out_mask.shape == (height, width)
        assert 20 <= height <= 80 and abs(width / height - WIDTH / HEIGHT) < 0.05
    with seeded_rng(0):
        assert RandomScale((1.5, 1.5))(image, mask)[0].shape[-2:] == (60, 75)
    with pytest.raises(ValueError, match="scale_range"):
        RandomScale((0.0, 1.0))


def test_retrain_transform_pads_small_scales_with_ignored_neutral_pixels():
    image, mask = run(retrain_train_transform(48, scale_range=(0.5, 0.6)), 3)
    assert image.shape == (3, 48, 48) and mask.shape == (48, 48)
    padded = mask == IGNORE_INDEX
    assert padded.any() and not padded.all()
    assert image[:, padded].abs().max() < 0.02  # the mean colour, normalised
    assert_aligned(image, mask)


def test_retrain_transform_keeps_alignment_over_many_seeds():
    transform = retrain_train_transform(32, blur=False)
    for seed in range(10):
        image, mask = run(transform, seed)
        assert image.shape == (3, 32, 32)
        assert_aligned(image, mask)


def test_blur_smooths_the_image_but_never_the_mask():
    image_np = np.zeros((32, 32, 3), dtype=np.uint8)
    image_np[:, 16:] = 255
    mask_np = np.zeros((32, 32), dtype=np.uint8)
    mask_np[:, 16:] = 1
    blurred, sharp = 0, 0
    for seed in range(16):
        image, mask = run(retrain_train_transform(32, scale_range=(1.0, 1.0)), seed, (image_np, mask_np))
        assert set(mask.unique().tolist()) <= {0, 1}
        grey = denormalize(image)[0]
        if ((grey > 0.02) & (grey < 0.98)).any():
            blurred += 1
        else:
            sharp += 1
    assert blurred and sharp  # applied to about half of the samples


def test_pipelines_depend_only_on_the_seed_and_restore_the_global_rng():
    for transform in (search_train_transform(None, 24), retrain_train_transform(24)):
        global_state = torch.get_rng_state()
        first, second, other = run(transform, 11), run(transform, 11), run(transform, 12)
        assert torch.equal(torch.get_rng_state(), global_state)
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
        assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("side, longer, scale_range, expected", [
    (80, False, (1.0, 1.0), (80, 100)),  # the shorter side 40 raised to 80
    (30, False, (1.0, 1.0), (40, 50)),  # already longer than 30: unchanged
    (25, True, (1.0, 1.0), (20, 25)),  # the longer side 50 lowered to 25 (Cityscapes: always 0.5)
    (100, True, (1.0, 1.0), (40, 50)),
    (10, False, (0.5, 0.5), (20, 25)),  # a drawn factor of 0.5 kept: the shorter side 20 is still >= 10
])
def test_the_candidate_resize_bounds_the_drawn_scale_as_the_original(side, longer, scale_range, expected):
    image, mask = run(scale_only(side, scale_range, longer), 0)
    assert image.shape[-2:] == expected and mask.shape == expected


def scale_only(side, scale_range, longer):
    from dataloaders.transforms import JointPipeline
    return JointPipeline([BoundedRandomScale(side, scale_range, longer)])


def test_candidate_transforms_crop_to_size_and_pad_only_with_ignored_pixels():
    for seed in range(5):
        image, mask = run(candidate_train_transform(45, 32, longer=False), seed)
        assert image.shape == (3, 32, 32)
        assert_aligned(image, mask)
    image, mask = run(candidate_eval_transform(40, 60, longer=False), 0)  # 40x50 padded to 60x60
    assert image.shape == (3, 60, 60) and (mask[:5] == IGNORE_INDEX).all() and (mask[:, :5] == IGNORE_INDEX).all()
    assert_aligned(image, mask)
    image, mask = run(candidate_eval_transform(40, 30, longer=False), 0)  # the centre 30x30 of 40x50
    rows, cols = decode_coordinates(image)
    assert rows[0, 0].round() == 5 and cols[0, 0].round() == 10
