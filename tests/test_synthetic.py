import time

import numpy as np
import pytest

from dataloaders.datasets.synthetic import ShapeSpec, SyntheticShapes, paint, shape_mask
from utils.errors import UserError


def shapes(split="train", num_samples=60, image_size=64, num_classes=SyntheticShapes.MAX_CLASSES, seed=0):
    return SyntheticShapes(split, num_samples, image_size, num_classes, seed)


def test_same_seed_gives_identical_samples():
    first, second = shapes(), shapes()
    for index in (0, 7, 59):
        image_a, mask_a = first.load(index)
        image_b, mask_b = second.load(index)
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(mask_a, mask_b)


def test_sample_depends_only_on_seed_split_and_index():
    reference_image, reference_mask = shapes(num_samples=60).load(5)
    other = shapes(num_samples=6)
    other.load(3)  # access order must not matter
    image, mask = other.load(5)
    np.testing.assert_array_equal(image, reference_image)
    np.testing.assert_array_equal(mask, reference_mask)


@pytest.mark.parametrize("changed", [{"seed": 1}, {"split": "val"}, {"split": "test"}])
def test_seed_and_split_give_different_streams(changed):
    image, _ = shapes().load(0)
    other_image, _ = shapes(**changed).load(0)
    assert not np.array_equal(image, other_image)


def test_indices_give_different_samples():
    dataset = shapes()
    images = [dataset.load(i)[0] for i in range(10)]
    assert all(not np.array_equal(images[i], images[j]) for i in range(10) for j in range(i + 1, 10))


@pytest.mark.parametrize("size", [33, 97, 8])
def test_any_image_size(size):
    image, mask = shapes(image_size=size).load(0)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert mask.shape == (size, size) and mask.dtype == np.uint8


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_labels_stay_below_num_classes(num_classes):
    dataset = shapes(num_classes=num_classes, num_samples=30)
    labels = np.unique(np.concatenate([dataset.load(i)[1].ravel() for i in range(30)]))
    assert labels.min() == 0 and labels.max() == num_classes - 1
    assert dataset.class_names == SyntheticShapes.CLASS_NAMES[:num_classes]


def test_every_class_appears():
    dataset = shapes(num_samples=40)
    seen = set()
    for index in range(40):
        seen.update(np.unique(dataset.load(index)[1]).tolist())
    assert seen == set(range(SyntheticShapes.MAX_CLASSES))


def test_objects_are_painted_in_order_so_the_last_one_is_on_top():
    dataset = shapes(image_size=64)
    occluded_pixels = 0
    for index in range(len(dataset)):
        _, mask = dataset.load(index)
        expected = np.zeros_like(mask)
        layout = dataset.layout(index)
        for shape in layout:
            expected[shape_mask(shape, 64, 64)] = shape.class_id
        np.testing.assert_array_equal(mask, expected)
        top = shape_mask(layout[-1], 64, 64)
        assert (mask[top] == layout[-1].class_id).all()
        for below in layout[:-1]:
            if below.class_id != layout[-1].class_id:
                occluded_pixels += (shape_mask(below, 64, 64) & top).sum()
    assert occluded_pixels > 0  # the check above did see objects covering others


def test_the_later_of_two_overlapping_shapes_wins():
    disk = ShapeSpec(class_id=1, center_y=20, center_x=20, radius=12, angle=0.0)
    cross = ShapeSpec(class_id=3, center_y=28, center_x=28, radius=12, angle=0.3)
    overlap = shape_mask(disk, 48, 48) & shape_mask(cross, 48, 48)
    assert overlap.sum() > 20
    for lower, upper in ((disk, cross), (cross, disk)):
        image, mask = paint([lower, upper], 48, np.random.default_rng(0))
        lower_only = shape_mask(lower, 48, 48) & ~overlap
        upper_only = shape_mask(upper, 48, 48) & ~overlap
        assert (mask[overlap] == upper.class_id).all()
        assert (mask[lower_only] == lower.class_id).all()
        overlap_colour = image[overlap].mean(axis=0)
        assert (np.linalg.norm(overlap_colour - image[upper_only].mean(axis=0))
                < np.linalg.norm(overlap_colour - image[lower_only].mean(axis=0)))


def test_shapes_have_their_geometry():
    side = 64
    for class_id, name in enumerate(SyntheticShapes.CLASS_NAMES[1:], start=1):
        spec = ShapeSpec(class_id=class_id, center_y=32, center_x=32, radius=20, angle=0.4)
        covered = shape_mask(spec, side, side)
        assert 0.2 * np.pi * 400 < covered.sum() <= np.pi * 400 * 1.3, name
        assert not covered[:5].any() and not covered[-5:].any(), name
    ring = shape_mask(ShapeSpec(class_id=2, center_y=32, center_x=32, radius=20, angle=0.0), side, side)
    disk = shape_mask(ShapeSpec(class_id=1, center_y=32, center_x=32, radius=20, angle=0.0), side, side)
    assert SyntheticShapes.CLASS_NAMES[1:3] == ("disk", "ring")
    assert disk[32, 32] and not ring[32, 32]
    masks = [shape_mask(ShapeSpec(c, 32, 32, 20, 0.4), side, side) for c in range(1, SyntheticShapes.MAX_CLASSES)]
    assert all(not np.array_equal(masks[i], masks[j]) for i in range(len(masks)) for j in range(i + 1, len(masks)))


def test_colour_does_not_tell_the_class():
    dataset = shapes(num_samples=150, num_classes=4)
    colours = {class_id: [] for class_id in range(1, 4)}
    for index in range(len(dataset)):
        image, mask = dataset.load(index)
        for class_id in colours:
            if (mask == class_id).sum() >= 20:
                colours[class_id].append(image[mask == class_id].mean(axis=0))
    class_means = []
    for class_id, samples in colours.items():
        samples = np.stack(samples)
        assert len(samples) >= 30
        assert (samples.std(axis=0) > 40).all(), f"class {class_id} has nearly fixed colours"
        class_means.append(samples.mean(axis=0))
    assert np.ptp(np.stack(class_means), axis=0).max() < 40


def test_objects_contrast_with_the_background():
    dataset = shapes(num_samples=40)
    distances = []
    for index in range(len(dataset)):
        image, mask = dataset.load(index)
        if (mask > 0).any():
            foreground = image[mask > 0].astype(float).mean(axis=0)
            background = image[mask == 0].astype(float).mean(axis=0)
            distances.append(np.linalg.norm(foreground - background))
    assert np.median(distances) > 100


@pytest.mark.parametrize("num_classes", [1, SyntheticShapes.MAX_CLASSES + 1])
def test_num_classes_out_of_range_is_a_user_error(num_classes):
    with pytest.raises(UserError, match="--num_classes"):
        shapes(num_classes=num_classes)


def test_index_out_of_range():
    with pytest.raises(IndexError):
        shapes(num_samples=3).load(3)


def test_generation_is_fast():
    dataset = shapes(image_size=96, num_samples=30)
    best = min(_time_samples(dataset) for _ in range(3))
    assert best < 0.010


def _time_samples(dataset):
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset.load(index)
    return (time.perf_counter() - start) / len(dataset)
