import numpy as np
import pytest
import torch

from dataloaders.transforms import (IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, EvalTransform, RetrainTrainTransform,
                                    SearchTrainTransform, normalize, pad_to, random_crop, random_hflip, random_scale,
                                    resize, resize_short_side, to_tensors)

HEIGHT, WIDTH = 40, 50


def label_of(rows, cols):
    """The mask of the coordinate image: a label that depends on both coordinates."""
    return (rows * 7 + cols * 3) % 5


def coordinate_sample(height=HEIGHT, width=WIDTH):
    """An image whose pixels spell their own (row, col), and the mask ``label_of(row, col)``."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    image = np.stack([rows, cols, np.full_like(rows, 128)], axis=-1).astype(np.uint8)
    return image, label_of(rows, cols).astype(np.uint8)


def decode_coordinates(image, normalized=False):
    """The (row, col) each output pixel was sampled at, as floats (bilinear interpolates them)."""
    if normalized:
        image = image * torch.tensor(IMAGENET_STD).reshape(3, 1, 1) + torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1)
    return image[0] * 255, image[1] * 255


def assert_aligned(image, mask, normalized=False):
    """Each labelled pixel carries the label of the source pixel nearest to where it was sampled.

    At an exact half-pixel tie (downscaling by an integer factor) either neighbour is accepted.
    """
    rows, cols = decode_coordinates(image, normalized)
    labelled = mask != IGNORE_INDEX
    assert labelled.any()
    tie = 1e-3
    matches = torch.zeros_like(labelled)
    for row in ((rows + 0.5 - tie).floor(), (rows + 0.5 + tie).floor()):
        for col in ((cols + 0.5 - tie).floor(), (cols + 0.5 + tie).floor()):
            matches |= mask == label_of(row.long(), col.long())
    assert matches[labelled].all()


def generator(seed):
    return torch.Generator().manual_seed(seed)


def test_to_tensors_types_and_ranges():
    image, mask = to_tensors(*coordinate_sample())
    assert image.shape == (3, HEIGHT, WIDTH) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    assert mask.shape == (HEIGHT, WIDTH) and mask.dtype == torch.int64
    assert_aligned(image, mask)


def test_random_crop_keeps_alignment_and_moves_with_the_seed():
    image, mask = to_tensors(*coordinate_sample())
    corners = set()
    for seed in range(20):
        crop_image, crop_mask = random_crop(image, mask, 16, 24, generator(seed))
        assert crop_image.shape == (3, 16, 24) and crop_mask.shape == (16, 24)
        assert_aligned(crop_image, crop_mask)
        rows, cols = decode_coordinates(crop_image)
        corners.add((round(float(rows[0, 0])), round(float(cols[0, 0]))))
    assert len(corners) > 10


def test_crop_larger_than_image_raises():
    image, mask = to_tensors(*coordinate_sample())
    with pytest.raises(ValueError, match="larger than"):
        random_crop(image, mask, HEIGHT + 1, 8, generator(0))
    with pytest.raises(ValueError):
        random_crop(image, mask, 8, WIDTH + 1, generator(0))


def test_random_hflip_flips_image_and_mask_together():
    image, mask = to_tensors(*coordinate_sample())
    flipped = 0
    for seed in range(20):
        out_image, out_mask = random_hflip(image, mask, generator(seed))
        assert_aligned(out_image, out_mask)
        _, cols = decode_coordinates(out_image)
        flipped += round(float(cols[0, 0])) == WIDTH - 1
    assert 0 < flipped < 20


def test_random_scale_keeps_alignment_and_label_set():
    image, mask = to_tensors(*coordinate_sample())
    sizes = set()
    for seed in range(10):
        out_image, out_mask = random_scale(image, mask, generator(seed), (0.5, 2.0))
        height, width = out_image.shape[-2:]
        assert out_mask.shape == (height, width)
        assert 0.5 * HEIGHT - 1 <= height <= 2.0 * HEIGHT + 1
        assert abs(height / HEIGHT - width / WIDTH) < 0.05
        assert set(out_mask.unique().tolist()) <= set(mask.unique().tolist())
        assert_aligned(out_image, out_mask)
        sizes.add(height)
    assert len(sizes) > 5


@pytest.mark.parametrize("size_hw", [(13, 17), (80, 100), (40, 25)])
def test_resize_is_bilinear_for_images_and_nearest_for_masks(size_hw):
    image, mask = to_tensors(*coordinate_sample())
    out_image, out_mask = resize(image, mask, size_hw)
    assert out_image.shape == (3, *size_hw) and out_mask.shape == size_hw and out_mask.dtype == torch.int64
    assert set(out_mask.unique().tolist()) <= set(mask.unique().tolist())
    assert_aligned(out_image, out_mask)


@pytest.mark.parametrize("shape,short,expected", [((40, 50), 20, (20, 25)), ((50, 40), 20, (25, 20)),
                                                  ((30, 30), 45, (45, 45))])
def test_resize_short_side_keeps_the_aspect_ratio(shape, short, expected):
    image, mask = to_tensors(*coordinate_sample(*shape))
    out_image, out_mask = resize_short_side(image, mask, short)
    assert out_image.shape[-2:] == expected and out_mask.shape == expected


def test_pad_to_marks_the_padding_as_ignored():
    image, mask = to_tensors(*coordinate_sample())
    padded_image, padded_mask = pad_to(image, mask, 48, 45, image_fill=(0.1, 0.2, 0.3))
    assert padded_image.shape == (3, 48, WIDTH) and padded_mask.shape == (48, WIDTH)
    assert torch.equal(padded_image[:, :HEIGHT], image) and torch.equal(padded_mask[:HEIGHT], mask)
    assert (padded_mask[HEIGHT:] == IGNORE_INDEX).all()
    assert torch.allclose(padded_image[:, HEIGHT:], torch.tensor([0.1, 0.2, 0.3]).reshape(3, 1, 1).expand(3, 8, WIDTH))
    same_image, same_mask = pad_to(image, mask, 10, 10)
    assert torch.equal(same_image, image) and torch.equal(same_mask, mask)


def test_normalize_per_channel():
    image = torch.ones(3, 2, 2)
    out = normalize(image, (0.5, 0.0, 1.0), (0.5, 2.0, 1.0))
    assert torch.allclose(out[:, 0, 0], torch.tensor([1.0, 0.5, 0.0]))


def test_search_train_transform_crops_flips_and_normalizes():
    transform = SearchTrainTransform(resize=None, crop=24)
    outputs = [transform(*coordinate_sample(), generator(seed)) for seed in range(8)]
    for image, mask in outputs:
        assert image.shape == (3, 24, 24) and mask.shape == (24, 24)
        assert_aligned(image, mask, normalized=True)
    assert len({round(float(decode_coordinates(image, True)[1][0, 0])) for image, _ in outputs}) > 3


def test_search_train_transform_resizes_before_cropping():
    image, mask = SearchTrainTransform(resize=80, crop=64)(*coordinate_sample(), generator(0))
    assert image.shape == (3, 64, 64)
    assert_aligned(image, mask, normalized=True)


def test_retrain_transform_pads_small_scales_with_ignored_neutral_pixels():
    transform = RetrainTrainTransform(crop=48, scale_range=(0.5, 0.6))
    image, mask = transform(*coordinate_sample(), generator(3))
    assert image.shape == (3, 48, 48) and mask.shape == (48, 48)
    padded = mask == IGNORE_INDEX
    assert padded.any() and not padded.all()
    assert torch.allclose(image[:, padded], torch.zeros(1), atol=1e-6)
    assert_aligned(image, mask, normalized=True)


def test_retrain_transform_keeps_alignment_over_many_seeds():
    transform = RetrainTrainTransform(crop=32)
    for seed in range(10):
        image, mask = transform(*coordinate_sample(), generator(seed))
        assert image.shape == (3, 32, 32)
        assert_aligned(image, mask, normalized=True)


def test_pipelines_depend_only_on_the_generator_seed():
    sample = coordinate_sample()
    for transform in (SearchTrainTransform(None, 24), RetrainTrainTransform(24)):
        global_state = torch.get_rng_state()
        first = transform(*sample, generator(11))
        second = transform(*sample, generator(11))
        assert torch.equal(torch.get_rng_state(), global_state)
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
        other = transform(*sample, generator(12))
        assert not torch.equal(first[0], other[0])


def test_eval_transform_is_deterministic_resize_and_normalize():
    image, mask = EvalTransform(resize=None)(*coordinate_sample())
    expected_image, expected_mask = to_tensors(*coordinate_sample())
    assert torch.allclose(image, normalize(expected_image, IMAGENET_MEAN, IMAGENET_STD))
    assert torch.equal(mask, expected_mask)
    resized_image, resized_mask = EvalTransform(resize=20)(*coordinate_sample(), generator(0))
    assert resized_image.shape == (3, 20, 25) and resized_mask.shape == (20, 25)
    assert_aligned(resized_image, resized_mask, normalized=True)
