"""The panoptic data layer: generated and COCO-format sources, the semantic and instance targets Auto-Panoptic
trains on, the seeded resize/flip, and the selection of training images."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dataloaders import SeededSampler, add_dataset_arguments, get_dataset_info, resolve_num_classes, training_sources
from dataloaders.datasets.synthetic_panoptic import SyntheticPanoptic
from dataloaders.panoptic import (PanopticDataset, PanopticTransform, collate, has_trainable_instance, instance_targets,
                                  resized_shape, segments_info, semantic_target, trainable_indices)
from engine.distributed import DistributedContext
from evaluation.panoptic_quality import id_to_rgb
from utils.errors import UserError
from utils.flags import Parser

# pycocotools' decode trips a NumPy 2 deprecation inside its compiled code; nothing to fix on this side.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")

# Categories in a list order that differs from id order: stuff labels follow the list (grass 1, sky 2), and
# so do thing labels (person 1, car 2).
CATEGORIES = [{"id": 10, "name": "grass", "isthing": 0}, {"id": 1, "name": "person", "isthing": 1},
              {"id": 5, "name": "sky", "isthing": 0}, {"id": 3, "name": "car", "isthing": 1}]
# 0 void, 3 sky, 4 grass, 7 a person, 12 a car, 9 a crowd of persons.
HAND_IDS = np.array([[0, 0, 3, 3, 3, 3],
                     [3, 3, 3, 3, 12, 3],
                     [3, 7, 7, 3, 12, 12],
                     [4, 7, 7, 4, 9, 9],
                     [4, 4, 7, 4, 9, 9],
                     [4, 4, 4, 4, 4, 0]], dtype=np.int32)
HAND_LABELS = {3: (5, 0), 4: (10, 0), 7: (1, 0), 12: (3, 0), 9: (1, 1)}
HAND_SEMANTIC = np.array([[255, 255, 2, 2, 2, 2],
                          [2, 2, 2, 2, 0, 2],
                          [2, 0, 0, 2, 0, 0],
                          [1, 0, 0, 1, 0, 0],
                          [1, 1, 0, 1, 0, 0],
                          [1, 1, 1, 1, 1, 255]], dtype=np.uint8)
HAND_BOXES = np.array([[1, 2, 3, 5], [4, 1, 6, 3]], dtype=np.float32)  # person 7, car 12: x1, y1, x2, y2


def hand_segments():
    return segments_info(HAND_IDS, HAND_LABELS)


def hand_image(ids):
    """A distinct grey level per segment id, so the image shows where each segment is."""
    levels = {segment_id: 20 * position for position, segment_id in enumerate(sorted(HAND_LABELS) + [0], start=1)}
    grey = np.vectorize(levels.get)(ids).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


class ListSource:
    """An in-memory panoptic source of (ids, labels) pairs."""

    categories = CATEGORIES
    class_names = ("things", "grass", "sky")

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def load(self, index):
        ids, labels = self.samples[index]
        return hand_image(ids), ids, segments_info(ids, labels)

    def segments(self, index):
        return self.load(index)[2]

    def describe(self, index):
        return f"list sample {index}"

    def image_id(self, index):
        return 100 + index

    def png_name(self, index):
        return f"{100 + index}.png"

    def check(self, num_classes=None):
        pass


def parse(*argv):
    parser = Parser(prog="test")
    add_dataset_arguments(parser)
    return parser.parse_args(list(argv))


# ---------------------------------------------------------------- the generated dataset


def test_synthetic_samples_depend_on_seed_split_and_index_only():
    first, again = SyntheticPanoptic("train", 5, 64, seed=3), SyntheticPanoptic("train", 5, 64, seed=3)
    image, ids, segments = first.load(4)
    image_again, ids_again, segments_again = again.load(4)
    assert np.array_equal(image, image_again) and np.array_equal(ids, ids_again) and segments == segments_again
    assert first.segments(4) == segments
    for other in (SyntheticPanoptic("val", 5, 64, seed=3).load(4), SyntheticPanoptic("train", 5, 64, seed=4).load(4),
                  first.load(3)):
        assert not np.array_equal(other[1], ids) or not np.array_equal(other[0], image)


def test_synthetic_id_maps_and_segment_records_agree():
    source = SyntheticPanoptic("train", 40, 64, seed=0)
    things, stuff = {1, 2, 3}, {4, 5, 6}
    crowds = void_borders = 0
    for index in range(len(source)):
        image, ids, segments = source.load(index)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and ids.dtype == np.int32
        assert set(np.unique(ids).tolist()) - {0} == {segment["id"] for segment in segments}
        for segment in segments:
            ys, xs = np.nonzero(ids == segment["id"])
            assert segment["area"] == len(ys)
            assert segment["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert segment["category_id"] in things | stuff and (segment["iscrowd"] == 0 or segment["category_id"] in things)
        assert 1 <= sum(segment["category_id"] in stuff for segment in segments) <= 3
        crowds += any(segment["iscrowd"] for segment in segments)
        void_borders += bool((ids[0] == 0).all() and (ids[:, -1] == 0).all())
    assert crowds > 0 and void_borders > 0  # 40 images show both (probabilities 0.25 and 0.5)


def test_synthetic_panoptic_serves_the_panoptic_task_only():
    args = parse("--dataset", "synthetic_panoptic", "--synthetic_train_samples", "3", "--synthetic_val_samples", "2",
                 "--synthetic_size", "32")
    args.num_classes = resolve_num_classes(args)
    assert args.num_classes == 4
    sources = training_sources(args, DistributedContext(), task="panoptic")
    assert (len(sources.train), len(sources.val)) == (3, 2)
    assert sources.classes["names"] == ["things", "sky", "grass", "water"]
    with pytest.raises(UserError, match="serve panoptic, not semantic"):
        training_sources(args, DistributedContext(), task="semantic")


# ---------------------------------------------------------------- targets


def test_semantic_target_merges_things_and_numbers_stuff_in_category_order():
    target = semantic_target(HAND_IDS, hand_segments(), CATEGORIES)
    assert target.dtype == np.uint8 and np.array_equal(target, HAND_SEMANTIC)


def test_semantic_target_refuses_an_unlisted_id():
    with pytest.raises(ValueError, match="segment id 12 is in the id map"):
        semantic_target(HAND_IDS, [s for s in hand_segments() if s["id"] != 12], CATEGORIES)


def test_instance_targets_box_the_mask_extents_and_leave_out_crowds():
    targets = instance_targets(HAND_IDS, hand_segments(), CATEGORIES)
    assert np.array_equal(targets["boxes"], HAND_BOXES) and targets["boxes"].dtype == np.float32
    assert targets["labels"].tolist() == [1, 2] and targets["labels"].dtype == np.int64
    assert targets["masks"].dtype == np.uint8
    assert np.array_equal(targets["masks"], np.stack([HAND_IDS == 7, HAND_IDS == 12]).astype(np.uint8))


def test_instance_targets_of_an_image_without_instances_are_empty():
    stuff_only = np.where(HAND_IDS == 3, 3, 4).astype(np.int32)
    targets = instance_targets(stuff_only, segments_info(stuff_only, HAND_LABELS), CATEGORIES)
    assert targets["boxes"].shape == (0, 4) and targets["labels"].shape == (0,) and targets["masks"].shape == (0, 6, 6)


# ---------------------------------------------------------------- transforms and loading


@pytest.mark.parametrize("shape, expected", [((480, 640), (800, 1066)), ((640, 480), (1066, 800)),
                                             ((500, 2000), (333, 1332)), ((800, 1000), (800, 1000))])
def test_resize_follows_maskrcnn_benchmark(shape, expected):
    assert resized_shape(*shape, min_size=800, max_size=1333) == expected


def samples_by_flip(source, seeds=range(20)):
    """Training samples of ``source[0]`` without and with the flip, from the first seeds that give each."""
    unflipped = PanopticDataset(source, PanopticTransform(12, 100, train=False))[0][1]["semantic"]
    dataset = PanopticDataset(source, PanopticTransform(12, 100, train=True))
    found = {}
    for seed in seeds:
        image, target = dataset[(0, seed)]
        found.setdefault(not torch.equal(target["semantic"], unflipped), (image, target))
    return found[False], found[True]


def test_training_resize_and_flip_keep_image_and_targets_together():
    (image, target), (flipped_image, flipped) = samples_by_flip(ListSource([(HAND_IDS, HAND_LABELS)]))
    upsampled = np.kron(HAND_SEMANTIC, np.ones((2, 2), dtype=np.uint8)).astype(np.int64)
    assert image.shape == (3, 12, 12) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert np.array_equal(target["semantic"].numpy(), upsampled) and target["semantic"].dtype == torch.int64
    assert np.array_equal(target["boxes"].numpy(), 2 * HAND_BOXES)
    assert torch.equal(flipped_image, image.flip(-1)) and torch.equal(flipped["semantic"], target["semantic"].flip(-1))
    assert torch.equal(flipped["masks"], target["masks"].flip(-1)) and flipped["labels"].tolist() == [1, 2]
    mirrored = 2 * HAND_BOXES[:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [12, 0, 12, 0]  # x1' = W - x2, x2' = W - x1
    assert np.array_equal(flipped["boxes"].numpy(), mirrored)
    for sample in (target, flipped):  # the ground truth for PQ stays as the file gives it
        assert np.array_equal(sample["panoptic"].numpy(), HAND_IDS) and sample["orig_size"] == (6, 6)
        assert sample["image_id"] == 100 and sample["segments"] == hand_segments()


def test_evaluation_resizes_without_flipping():
    dataset = PanopticDataset(ListSource([(HAND_IDS, HAND_LABELS)]), PanopticTransform(12, 100, train=False))
    semantics = {dataset[(0, seed)][1]["semantic"].numpy().tobytes() for seed in range(10)}
    assert semantics == {np.kron(HAND_SEMANTIC, np.ones((2, 2), dtype=np.uint8)).astype(np.int64).tobytes()}


def test_seeded_loader_batches_are_lists_drawn_from_the_samplers_keys():
    dataset = PanopticDataset(SyntheticPanoptic("train", 6, 48, seed=0), PanopticTransform(64, 100, train=True))
    sampler = SeededSampler(range(6), seed=7, shuffle=True)
    loader = DataLoader(dataset, batch_size=3, sampler=sampler, collate_fn=collate)
    batches = list(loader)
    keys = list(sampler)
    assert [len(images) for images, _ in batches] == [3, 3]
    counts = set()
    for position, key in enumerate(keys):
        images, targets = batches[position // 3]
        image, target = dataset[key]
        assert images[position % 3].shape == (3, 64, 64) and torch.equal(images[position % 3], image)
        assert torch.equal(targets[position % 3]["boxes"], target["boxes"])
        counts.add(len(target["labels"]))
    assert len(counts) > 1  # instance counts differ between images, which is why batches are lists


# ---------------------------------------------------------------- COCO panoptic format


# Ids that need all three colour channels: id = R + 256 G + 256^2 B.
COCO_IDS = {3: 5_000_000, 4: 70_000, 7: 300, 12: 12, 9: 7 * 65536 + 1}


def write_coco_split(root, split, ids=HAND_IDS, labels=HAND_LABELS, categories=CATEGORIES, png_ids=None):
    """A one-image COCO panoptic split under ``root`` in the official layout (PNG from ``png_ids`` if given)."""
    recoded = np.vectorize(lambda value: COCO_IDS.get(value, 0))(ids).astype(np.int32)
    segments = segments_info(recoded, {COCO_IDS[k]: v for k, v in labels.items()})
    png_dir, image_dir = root / "annotations" / f"panoptic_{split}2017", root / f"{split}2017"
    png_dir.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(exist_ok=True)
    Image.fromarray(id_to_rgb(recoded if png_ids is None else png_ids)).save(png_dir / "000000000042.png")
    Image.fromarray(hand_image(ids)).save(image_dir / "000000000042.jpg")
    (root / "annotations" / f"panoptic_{split}2017.json").write_text(json.dumps({
        "images": [{"id": 42, "file_name": "000000000042.jpg", "height": ids.shape[0], "width": ids.shape[1]}],
        "annotations": [{"image_id": 42, "file_name": "000000000042.png", "segments_info": segments}],
        "categories": categories}))
    return recoded, segments


def coco_source(root, split="val"):
    args = parse("--dataset", "coco_panoptic", "--data_root", str(root))
    return get_dataset_info("coco_panoptic").make_source(split, args)


def test_a_coco_panoptic_folder_loads_back_its_ids_and_segments(tmp_path):
    ids, segments = write_coco_split(tmp_path, "val")
    source = coco_source(tmp_path)
    source.check(3)
    image, loaded_ids, loaded_segments = source.load(0)
    assert np.array_equal(loaded_ids, ids) and loaded_ids.dtype == np.int32
    assert loaded_segments == segments and image.shape == (6, 6, 3)
    assert (source.image_id(0), source.categories, source.class_names) == (42, CATEGORIES, ("things", "grass", "sky"))
    assert np.array_equal(semantic_target(loaded_ids, loaded_segments, source.categories), HAND_SEMANTIC)
    write_coco_split(tmp_path, "train")
    assert resolve_num_classes(parse("--dataset", "coco_panoptic", "--data_root", str(tmp_path))) == 3


def test_coco_panoptic_files_elsewhere_are_named_by_flags(tmp_path):
    write_coco_split(tmp_path, "val")
    (tmp_path / "annotations").rename(tmp_path / "gt")
    (tmp_path / "gt" / "panoptic_val2017").rename(tmp_path / "gt" / "png_val")
    (tmp_path / "val2017").rename(tmp_path / "images_val")
    args = parse("--dataset", "coco_panoptic", "--data_root", str(tmp_path),
                 "--coco_panoptic_json", "gt/panoptic_{split}2017.json", "--coco_panoptic_png_dir", "gt/png_{split}",
                 "--coco_panoptic_image_dir", "images_{split}")
    assert len(get_dataset_info("coco_panoptic").make_source("val", args)) == 1
    with pytest.raises(UserError, match="lacks annotations/panoptic_val2017.json"):
        coco_source(tmp_path)


def test_a_png_id_the_json_does_not_list_is_refused_naming_the_png(tmp_path):
    png_ids = np.vectorize(lambda value: COCO_IDS.get(value, 0))(HAND_IDS).astype(np.int32)
    png_ids[0, 0] = 777
    write_coco_split(tmp_path, "val", png_ids=png_ids)
    with pytest.raises(UserError, match=r"000000000042\.png.*segment ids 777 are in the PNG but not in its "
                                        "segments_info"):
        coco_source(tmp_path).check()


def test_a_listed_segment_missing_from_the_png_is_refused(tmp_path):
    png_ids = np.vectorize(lambda value: COCO_IDS.get(value, 0))(HAND_IDS).astype(np.int32)
    png_ids[png_ids == COCO_IDS[12]] = COCO_IDS[3]
    write_coco_split(tmp_path, "val", png_ids=png_ids)
    with pytest.raises(UserError, match=r"000000000042\.png.*segment ids 12 are in segments_info but not in the PNG"):
        coco_source(tmp_path).load(0)


def test_a_missing_png_is_refused_naming_it(tmp_path):
    write_coco_split(tmp_path, "val")
    (tmp_path / "annotations" / "panoptic_val2017" / "000000000042.png").unlink()
    with pytest.raises(UserError, match=r"panoptic_val2017/000000000042\.png: panoptic PNG missing"):
        coco_source(tmp_path).check()


def test_an_unknown_category_is_refused_naming_the_json_and_the_png(tmp_path):
    write_coco_split(tmp_path, "val", categories=[c for c in CATEGORIES if c["id"] != 3])  # no car category
    with pytest.raises(UserError, match=r"panoptic_val2017\.json: segments_info of 000000000042\.png: segment 12 has "
                                        "category_id 3, which is not in the JSON's categories"):
        coco_source(tmp_path).check()


# ---------------------------------------------------------------- detection targets from COCO's instances file


# A 12x16 image: sky (id 3) under a person A (rows 1..7, columns 1..8) and a car B (rows 4..10, columns 5..13) that
# overlap; the panoptic PNG gives the overlap to the car, the instances file keeps both objects whole.
PERSON_BOX, CAR_BOX = (1, 1, 9, 8), (5, 4, 14, 11)  # x0, y0, x1, y1: columns x0..x1-1, rows y0..y1-1


def rectangle(x0, y0, x1, y1, shape=(12, 16)):
    region = np.zeros(shape, dtype=bool)
    region[y0:y1, x0:x1] = True
    return region


def polygon_record(box, category_id, iscrowd=0):
    x0, y0, x1, y1 = box  # an integer-cornered polygon covers rows y0..y1-1 and columns x0..x1-1
    return {"id": category_id * 10 + iscrowd, "image_id": 42, "category_id": category_id, "iscrowd": iscrowd,
            "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]], "bbox": [x0, y0, x1 - x0, y1 - y0],
            "area": (x1 - x0) * (y1 - y0)}


def write_overlap_split(root, instances=True, records=None, categories=None):
    """The overlap image as a COCO panoptic split (official layout) with, if ``instances``, its instances file."""
    ids = np.full((12, 16), 3, dtype=np.int32)
    ids[rectangle(*PERSON_BOX)] = 7
    ids[rectangle(*CAR_BOX)] = 12
    labels = {3: (5, 0), 7: (1, 0), 12: (3, 0)}
    write_coco_split(root, "train", ids=ids, labels=labels)
    write_coco_split(root, "val", ids=ids, labels=labels)
    if instances:
        records = records if records is not None else [
            polygon_record(PERSON_BOX, 1), polygon_record(CAR_BOX, 3),
            polygon_record((10, 0, 16, 3), 1, iscrowd=1),  # a crowd: never a target
            polygon_record((0, 10, 1, 12), 3)]  # one pixel wide: the original's clip_to_image drops it
        (root / "annotations" / "instances_train2017.json").write_text(json.dumps({
            "images": [{"id": 42, "file_name": "000000000042.jpg", "height": 12, "width": 16}],
            "annotations": records,
            "categories": categories or [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]}))
    return np.vectorize(lambda value: COCO_IDS.get(value, 0))(ids)


def overlap_target(root, *flags, seed=0, min_size=12):
    args = parse("--dataset", "coco_panoptic", "--data_root", str(root), *flags)
    source = get_dataset_info("coco_panoptic").make_source("train", args)
    return source, PanopticDataset(source, PanopticTransform(min_size, 100, train=True))[(0, seed)][1]


def unflipped_seed():
    """A seed whose training sample is not flipped (the draw the transform makes first)."""
    return next(seed for seed in range(20) if float(torch.rand((), generator=torch.Generator().manual_seed(seed)))
                >= 0.5)


def test_the_instances_file_gives_whole_overlapping_masks_and_its_boxes(tmp_path, caplog):
    write_overlap_split(tmp_path)
    caplog.set_level("INFO", logger="autodeeplab")
    source, target = overlap_target(tmp_path, seed=unflipped_seed())
    person, car = rectangle(*PERSON_BOX), rectangle(*CAR_BOX)
    assert target["labels"].tolist() == [1, 2]  # person and car: thing labels in the categories' order
    assert np.array_equal(target["masks"].numpy(), np.stack([person, car]).astype(np.uint8))
    assert (target["masks"][0] & target["masks"][1]).sum() == (person & car).sum() == 16  # in both masks
    assert np.array_equal(target["boxes"].numpy(), np.array([PERSON_BOX, CAR_BOX], dtype=np.float32))
    assert trainable_indices(source) == [0]
    assert "boxes and masks from the instances file" in caplog.text and "instances_train2017.json" in caplog.text


def test_without_the_instances_file_the_targets_are_the_panoptic_segments(tmp_path, caplog):
    write_overlap_split(tmp_path)
    caplog.set_level("INFO", logger="autodeeplab")
    _, target = overlap_target(tmp_path, "--coco_instances_json", "none", seed=unflipped_seed())
    person, car = rectangle(*PERSON_BOX), rectangle(*CAR_BOX)
    assert target["labels"].tolist() == [2, 1]  # the segments in id order: the car is segment 12, the person 300
    assert np.array_equal(target["masks"].numpy(), np.stack([car, person & ~car]).astype(np.uint8))
    assert "boxes and masks from the panoptic segments (--coco_instances_json none)" in caplog.text
    (tmp_path / "annotations" / "instances_train2017.json").unlink()
    _, absent = overlap_target(tmp_path, seed=unflipped_seed())
    assert torch.equal(absent["masks"], target["masks"]) and "no annotations/instances_train2017.json" in caplog.text


def test_instances_are_resized_and_flipped_with_the_image(tmp_path):
    write_overlap_split(tmp_path)
    flipped_seed = next(seed for seed in range(20) if seed != unflipped_seed()
                        and float(torch.rand((), generator=torch.Generator().manual_seed(seed))) < 0.5)
    _, target = overlap_target(tmp_path, seed=flipped_seed, min_size=24)
    whole = np.stack([rectangle(*PERSON_BOX), rectangle(*CAR_BOX)]).astype(np.uint8)
    doubled = np.kron(whole, np.ones((1, 2, 2), dtype=np.uint8))
    assert np.array_equal(target["masks"].numpy(), doubled[:, :, ::-1])
    boxes = 2 * np.array([PERSON_BOX, CAR_BOX], dtype=np.float32)
    assert np.array_equal(target["boxes"].numpy(), boxes[:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [32, 0, 32, 0])


def test_an_instances_file_that_does_not_fit_the_panoptic_json_is_refused(tmp_path):
    write_overlap_split(tmp_path, categories=[{"id": 1, "name": "person"}, {"id": 3, "name": "truck"}])
    with pytest.raises(UserError, match="instances_train2017.json: category 3 is 'truck' but panoptic_train2017.json "
                                        "calls it 'car'"):
        overlap_target(tmp_path)
    write_overlap_split(tmp_path, records=[polygon_record(PERSON_BOX, 5)])
    with pytest.raises(UserError, match="has category_id 5, which is not a thing category"):
        overlap_target(tmp_path)
    with pytest.raises(UserError, match="lacks elsewhere/instances.json"):
        overlap_target(tmp_path, "--coco_instances_json", "elsewhere/instances.json")


# ---------------------------------------------------------------- selecting training images


def test_training_keeps_only_images_with_a_real_instance():
    crowd_only = np.where(HAND_IDS == 12, 9, HAND_IDS)
    crowd_only = np.where(crowd_only == 7, 3, crowd_only).astype(np.int32)
    thin = np.full((6, 6), 3, dtype=np.int32)
    thin[1:5, 2] = 7  # a person one pixel wide
    stuff_only = np.where(HAND_IDS == 3, 3, 4).astype(np.int32)
    thin_and_normal = thin.copy()
    thin_and_normal[4:6, 4:6] = 12
    source = ListSource([(HAND_IDS, HAND_LABELS), (crowd_only, HAND_LABELS), (thin, HAND_LABELS),
                         (stuff_only, HAND_LABELS), (thin_and_normal, HAND_LABELS)])
    assert trainable_indices(source) == [0, 4]
    assert not has_trainable_instance([], CATEGORIES)


def test_most_synthetic_training_images_are_kept():
    assert len(trainable_indices(SyntheticPanoptic("train", 20, 64, seed=0))) >= 15
