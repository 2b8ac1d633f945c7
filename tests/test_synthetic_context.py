"""The generated proxy tasks on which the architecture matters: ``synthetic_context`` (context, thin strokes, several
scales) and ``synthetic_panoptic_context`` (stuff told apart by layout, things of several scales)."""

import numpy as np
import pytest
import torch

import train_autodeeplab
import train_autopanoptic
import train_nas_segm
from config_utils.recipes import recipe
from dataloaders import (PanopticDataset, PanopticTransform, SegmentationDataset, add_dataset_arguments,
                         get_dataset_info, resolve_num_classes, training_sources)
from dataloaders.datasets.synthetic_context import (BACKGROUND, CLASS_NAMES, DISK_DIAMETER, FRAME, FRAME_DIAMETER,
                                                    INSIDE, LINE, OUTSIDE, ContextLayout, Frame, Stroke,
                                                    SyntheticContext, disk, paint_context, stroke_mask)
from dataloaders.datasets.synthetic_panoptic import (MUTED_JITTER, STUFF_BY_LAYOUT, VIVID_HIGH, VIVID_LOW,
                                                     SyntheticPanoptic, _muted_colour, _saturated_colour)
from dataloaders.panoptic import check_segment_ids
from dataloaders.transforms import search_train_transform
from engine.distributed import DistributedContext
from retrain import panoptic as panoptic_retrain
from retrain import semantic as semantic_retrain
from utils.errors import UserError
from utils.flags import Parser

SIDE = 64
SAMPLES = 50


def context(split="train", num_samples=SAMPLES, image_size=SIDE, seed=0):
    return SyntheticContext(split, num_samples, image_size, seed)


def panoptic_context(split="train", num_samples=SAMPLES, image_size=SIDE, seed=0):
    return SyntheticPanoptic(split, num_samples, image_size, seed, STUFF_BY_LAYOUT)


# ---------------------------------------------------------------- synthetic_context: determinism


def test_same_seed_gives_the_same_sample_and_another_seed_or_split_another():
    image, mask = context().load(7)
    again_image, again_mask = context(num_samples=8).load(7)
    assert np.array_equal(image, again_image) and np.array_equal(mask, again_mask)
    for other in (context(seed=1), context(split="val"), context(split="test")):
        other_image, other_mask = other.load(7)
        assert not np.array_equal(other_image, image) and not np.array_equal(other_mask, mask)
    assert not np.array_equal(context().load(8)[1], mask)


def test_samples_are_images_and_masks_of_the_five_classes():
    image, mask = context(image_size=33).load(0)
    assert image.shape == (33, 33, 3) and image.dtype == np.uint8
    assert mask.shape == (33, 33) and mask.dtype == np.uint8 and mask.max() < len(CLASS_NAMES)
    assert context().class_names == ("background", "frame", "inside", "outside", "line")


# ---------------------------------------------------------------- synthetic_context: labels by hand

RING = Frame(center_y=24.0, center_x=24.0, radius=22.0, thickness=5.0)  # hole of radius 17 around (24, 24)
INNER_DISK = disk(24.0, 24.0, 4.0)
LONE_DISK = disk(52.0, 50.0, 4.0)
LINE_ROW = 60.3  # a horizontal stroke across the bottom: pixel rows 59, 60, 61 have centres within 1.5
FLAT_LINE = Stroke(start=(LINE_ROW, 0.0), control=(LINE_ROW, 32.0), end=(LINE_ROW, 64.0), width=3.0)


def test_hand_layout_labels_the_disk_in_the_ring_inside_the_lone_one_outside_and_the_stroke_line():
    layout = ContextLayout(frames=(RING,), strokes=(FLAT_LINE,), disks=(INNER_DISK, LONE_DISK))
    _, mask = paint_context(layout, SIDE, np.random.default_rng(0))
    assert mask[24, 24] == INSIDE and mask[52, 50] == OUTSIDE
    assert mask[24, 24 + 20] == FRAME and mask[2, 24] == FRAME  # on the ring, right of and above its centre
    assert mask[24, 24 + 10] == BACKGROUND  # in the hole, beside the disk
    assert mask[60, 10] == LINE
    assert np.flatnonzero(mask[:, 10] == LINE).tolist() == [59, 60, 61]  # 3 pixels across a 3-pixel stroke
    assert (mask == INSIDE).sum() == (mask == OUTSIDE).sum() > 30  # the same disk twice


def test_only_the_surroundings_tell_inside_from_outside():
    """The same disk with the same look, once in a ring and once with the ring far away: the pixels around the
    disk are equal, the labels differ."""
    center = disk(20.0, 20.0, 4.0)
    far_ring = Frame(center_y=44.0, center_x=44.0, radius=17.0, thickness=4.0)
    near_ring = Frame(center_y=20.0, center_x=20.0, radius=17.0, thickness=4.0)
    inside_image, inside_mask = paint_context(ContextLayout((near_ring,), (), (center,)), SIDE,
                                              np.random.default_rng(3))
    outside_image, outside_mask = paint_context(ContextLayout((far_ring,), (), (center,)), SIDE,
                                                np.random.default_rng(3))
    window = np.s_[13:28, 13:28]  # the disk and 3 pixels around it, all within the hole of near_ring
    assert np.array_equal(inside_image[window], outside_image[window])
    assert inside_mask[20, 20] == INSIDE and outside_mask[20, 20] == OUTSIDE


@pytest.mark.parametrize("width, across", [(1.0, 1), (2.0, 2), (3.0, 3)])
def test_a_stroke_is_as_many_pixels_across_as_its_width(width, across):
    for row in (30.2, 30.4, 30.8):  # no pixel centre exactly width / 2 away
        horizontal = stroke_mask(Stroke((row, 0.0), (row, 32.0), (row, 64.0), width), SIDE, SIDE)
        assert all((horizontal[:, column]).sum() == across for column in range(SIDE))
    diagonal = stroke_mask(Stroke((0.0, 0.0), (32.0, 32.0), (64.0, 64.0), width), SIDE, SIDE)
    anti_diagonal = [diagonal[20 + k, 20 - k] for k in range(-5, 6)]  # the cross-section through (20, 20)
    assert 1 <= sum(anti_diagonal) <= 3


def test_generated_strokes_are_thin():
    """No stroke of 50 images holds a 4x4 block of pixels, which a stroke over 3 pixels wide would in any
    direction."""
    dataset = context()
    strokes = [stroke for index in range(SAMPLES) for stroke in dataset.layout(index).strokes]
    assert len(strokes) > SAMPLES
    for stroke in strokes:
        assert 1.0 <= stroke.width <= 3.0
        mask = stroke_mask(stroke, SIDE, SIDE)
        assert mask[0].any() or mask[:, 0].any()  # starts on a border
        blocks = sum(mask[dy:SIDE - 3 + dy, dx:SIDE - 3 + dx].astype(int) for dy in range(4) for dx in range(4))
        assert blocks.max() < 16


# ---------------------------------------------------------------- synthetic_context: the generated population


def test_labels_follow_the_layout():
    dataset = context()
    for index in range(10):
        layout = dataset.layout(index)
        _, mask = dataset.load(index)
        for shape in layout.disks:
            ring_around = any(np.hypot(shape.center_y - ring.center_y, shape.center_x - ring.center_x)
                              + shape.radius <= ring.hole for ring in layout.frames)
            label = mask[int(shape.center_y), int(shape.center_x)]
            assert label == (INSIDE if ring_around else OUTSIDE)


def test_every_class_appears_in_a_good_share_of_the_images():
    dataset = context()
    shares = np.mean([np.bincount(dataset.load(index)[1].ravel(), minlength=len(CLASS_NAMES)) > 0
                      for index in range(SAMPLES)], axis=0)
    assert (shares >= 0.5).all(), dict(zip(CLASS_NAMES, shares))


def test_object_sizes_span_the_claimed_range():
    dataset = context(num_samples=100)
    layouts = [dataset.layout(index) for index in range(len(dataset))]
    disks = np.array([2 * shape.radius / SIDE for layout in layouts for shape in layout.disks])
    frames = np.array([2 * ring.radius / SIDE for layout in layouts for ring in layout.frames])
    assert DISK_DIAMETER[0] <= disks.min() < 0.07 and 0.18 < disks.max() <= DISK_DIAMETER[1]
    assert FRAME_DIAMETER[0] <= frames.min() < 0.55 and 0.8 < frames.max() <= FRAME_DIAMETER[1]
    assert disks.max() / disks.min() >= 3.5 and frames.max() / disks.min() >= 10


def test_colour_does_not_tell_inside_from_outside():
    dataset = context(num_samples=150)
    colours = {INSIDE: [], OUTSIDE: []}
    for index in range(len(dataset)):
        image, mask = dataset.load(index)
        for label, found in colours.items():
            if (mask == label).sum() >= 10:
                found.append(image[mask == label].mean(axis=0))
    means = []
    for label, found in colours.items():
        found = np.stack(found)
        assert len(found) >= 50 and (found.std(axis=0) > 40).all(), CLASS_NAMES[label]
        means.append(found.mean(axis=0))
    assert np.abs(means[0] - means[1]).max() < 30


# ---------------------------------------------------------------- synthetic_panoptic_context


def test_panoptic_samples_depend_on_seed_split_and_index_only():
    image, ids, segments = panoptic_context(seed=3).load(4)
    again = panoptic_context(seed=3, num_samples=5).load(4)
    assert np.array_equal(again[0], image) and np.array_equal(again[1], ids) and again[2] == segments
    for other in (panoptic_context(seed=4).load(4), panoptic_context(split="val", seed=3).load(4)):
        assert not np.array_equal(other[0], image)


def stuff_bands_top_to_bottom(source, index):
    """The stuff segments' category names, ordered by the rows their pixels lie on on average."""
    _, ids, segments = source.load(index)
    names = {category["id"]: category["name"] for category in source.categories}
    stuff = [segment for segment in segments if names[segment["category_id"]] in STUFF_BY_LAYOUT.stuff_names]
    rows = [np.nonzero(ids == segment["id"])[0].mean() for segment in stuff]
    return [names[stuff[position]["category_id"]] for position in np.argsort(rows)]


def test_stuff_is_named_by_its_place_top_sky_bottom_ground():
    source = panoptic_context()
    orders = [stuff_bands_top_to_bottom(source, index) for index in range(SAMPLES)]
    assert all(order in (["sky", "ground"], ["sky", "water", "ground"]) for order in orders), orders
    assert 0.2 < np.mean([len(order) == 3 for order in orders]) < 0.8  # water (a middle band) in many, not all


def test_panoptic_stuff_looks_alike_whatever_its_category():
    source = panoptic_context()
    colours = {"sky": [], "water": [], "ground": []}
    names = {category["id"]: category["name"] for category in source.categories}
    for index in range(SAMPLES):
        image, ids, segments = source.load(index)
        for segment in segments:
            if names[segment["category_id"]] in colours:
                colours[names[segment["category_id"]]].append(image[ids == segment["id"]].mean(axis=0))
    means = {name: np.stack(found).mean(axis=0) for name, found in colours.items()}
    assert all(np.stack(found).std(axis=0).min() > 40 for found in colours.values())
    assert max(np.abs(means[a] - means[b]).max() for a in means for b in means) < 45


def test_context_colours_are_vivid_for_things_and_near_grey_for_stuff():
    rng = np.random.default_rng(0)
    vivid = np.stack([_saturated_colour(rng, [np.full(3, 128.0, dtype=np.float32)]) for _ in range(500)])
    assert (vivid.max(axis=1) >= VIVID_HIGH[0]).all() and (vivid.min(axis=1) <= VIVID_LOW[1]).all()
    muted = np.stack([_muted_colour(rng) for _ in range(500)])
    assert (muted.max(axis=1) - muted.min(axis=1) <= 2 * MUTED_JITTER).all()
    assert muted.mean(axis=1).min() < 60 and muted.mean(axis=1).max() > 195  # the whole grey range is used


def test_panoptic_context_images_show_things_vivid_on_near_grey_stuff():
    source = panoptic_context()
    names = {category["id"]: category for category in source.categories}
    spread = {True: [], False: []}  # max minus min channel of a segment's mean colour, for things / for stuff
    for index in range(SAMPLES):
        image, ids, segments = source.load(index)
        for segment in segments:
            mean = image[ids == segment["id"]].astype(np.float64).mean(axis=0)
            spread[bool(names[segment["category_id"]]["isthing"])].append(mean.max() - mean.min())
    assert max(spread[False]) < 45  # the texture's tint moves a band's mean off grey by little
    assert np.median(spread[True]) > 150 and np.percentile(spread[True], 10) > 60


def test_panoptic_things_come_at_several_scales_and_segments_agree_with_the_ids():
    source = panoptic_context()
    names = {category["id"]: category for category in source.categories}
    sides, crowds = [], 0
    for index in range(SAMPLES):
        image, ids, segments = source.load(index)
        check_segment_ids(ids, segments, source.describe(index))
        assert image.shape == (SIDE, SIDE, 3) and ids.dtype == np.int32
        for segment in segments:
            assert segment["area"] == (ids == segment["id"]).sum()
            if names[segment["category_id"]]["isthing"] and not segment["iscrowd"]:
                sides.append(max(segment["bbox"][2:]) / SIDE)
        crowds += any(segment["iscrowd"] for segment in segments)
    assert min(sides) < 0.08 and max(sides) > 0.35 and max(sides) / min(sides) >= 4
    assert crowds > 0


# ---------------------------------------------------------------- registry, recipes and stage scripts

DATA = ["--synthetic_train_samples", "16", "--synthetic_val_samples", "4"]


def test_both_datasets_are_registered_with_fixed_classes_and_the_shared_flags():
    parser = Parser(prog="test")
    add_dataset_arguments(parser)
    args = parser.parse_args(["--dataset", "synthetic_context", "--synthetic_size", "40", "--synthetic_seed", "2"]
                             + DATA)
    assert resolve_num_classes(args) == 5
    source = get_dataset_info("synthetic_context").make_source("train", args)
    assert (len(source), source.image_size, source.seed) == (16, 40, 2)
    assert len(get_dataset_info("synthetic_context").make_source("test", args)) == 4
    args.num_classes = 3
    with pytest.raises(UserError, match="synthetic_context has exactly 5 classes"):
        resolve_num_classes(args)
    panoptic = get_dataset_info("synthetic_panoptic_context")
    assert panoptic.tasks == ("panoptic",) and panoptic.num_classes == 4
    assert panoptic.make_source("val", args).class_names == ("things", "sky", "water", "ground")


@pytest.mark.parametrize("system, stage, variant, base", [
    ("autodeeplab", "search", "synthetic_context", "synthetic"),
    ("autodeeplab", "retrain", "synthetic_context", "synthetic"),
    ("nas-segm", "search", "synthetic_context", "synthetic"),
    ("autopanoptic", "search", "synthetic_panoptic_context", "synthetic_panoptic"),
    ("autopanoptic", "retrain", "synthetic_panoptic_context", "synthetic_panoptic")])
def test_the_variants_train_with_their_base_recipes(system, stage, variant, base):
    assert recipe(system, stage, variant) == recipe(system, stage, base) != {}


@pytest.mark.parametrize("parse", [train_autodeeplab.parse_args, semantic_retrain.parse_args,
                                   train_nas_segm.parse_args])
def test_the_semantic_stages_load_synthetic_context_with_their_recipes(parse):
    args, _ = parse(["--dataset", "synthetic_context"] + DATA)
    crop = args.crop_size if isinstance(args.crop_size, int) else args.crop_size[0]
    sources = training_sources(args, DistributedContext(), crop, getattr(args, "resize", None))
    assert sources.classes["names"] == list(CLASS_NAMES)
    image, mask = SegmentationDataset(sources.train, search_train_transform(None, crop), args.num_classes)[(0, 1)]
    assert image.shape == (3, crop, crop) and mask.shape == (crop, crop) and int(mask.max()) < len(CLASS_NAMES)


@pytest.mark.parametrize("parse, extra", [(train_autopanoptic.parse_args, []),
                                          (panoptic_retrain.parse_args, ["--saved_arch_path", "unused.json"])])
def test_the_panoptic_stages_load_synthetic_panoptic_context_with_their_recipes(parse, extra):
    args, _ = parse(["--dataset", "synthetic_panoptic_context"] + DATA + extra)
    sources = training_sources(args, DistributedContext(), task="panoptic")
    image, target = PanopticDataset(sources.train, PanopticTransform(args.min_size, args.max_size, train=True))[(0, 1)]
    assert image.shape == (3, args.min_size, args.min_size) and image.dtype == torch.float32
    assert set(torch.unique(target["semantic"]).tolist()) <= {0, 1, 2, 3, 255}
    with pytest.raises(UserError, match="serve panoptic, not semantic"):
        training_sources(args, DistributedContext(), task="semantic")
