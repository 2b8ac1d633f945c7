import argparse

import numpy as np
import pytest
import torch

from utils.flags import Parser
from config_utils.recipes import recipe
from dataloaders import (DATASETS, DatasetInfo, SeededSampler, SegmentationDataset, add_dataset_arguments,
                         get_dataset_info, make_loader, register_dataset, resolve_num_classes, split_indices,
                         voc_palette)
from dataloaders.datasets.synthetic import SyntheticShapes
from dataloaders.transforms import eval_transform, search_train_transform
from utils.errors import UserError


def parse(*argv):
    parser = Parser(prog="test")
    add_dataset_arguments(parser)
    return parser.parse_args(list(argv))


class ListSource:
    """A tiny in-memory source with chosen masks."""

    class_names = ("background", "thing")

    def __init__(self, masks):
        self.masks = masks

    def __len__(self):
        return len(self.masks)

    def load(self, index):
        mask = self.masks[index]
        return np.zeros((*mask.shape, 3), dtype=np.uint8), mask

    def describe(self, index):
        return f"list sample {index}"

    def check(self, num_classes):
        pass


# ---------------------------------------------------------------- registry and flags


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(UserError, match="--dataset.*'nope'.*synthetic"):
        get_dataset_info("nope")


def test_unknown_dataset_flag_is_one_line(capsys):
    with pytest.raises(SystemExit):
        parse("--dataset", "nope")
    error = capsys.readouterr().err
    assert "invalid choice: 'nope'" in error and len(error.strip().splitlines()) == 1


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="synthetic"):
        register_dataset(get_dataset_info("synthetic"))


def test_dataset_flag_defaults():
    args = parse()
    assert args.dataset == "synthetic" and args.data_root is None and args.num_classes is None
    assert (args.synthetic_size, args.synthetic_train_samples, args.synthetic_val_samples,
            args.synthetic_seed) == (96, 400, 100, 0)


def test_both_flag_spellings():
    dashed = parse("--num-classes", "3", "--synthetic-size", "33", "--synthetic-train-samples", "5",
                   "--synthetic-val-samples", "2", "--synthetic-seed", "4", "--data-root", "/d")
    underscored = parse("--num_classes", "3", "--synthetic_size", "33", "--synthetic_train_samples", "5",
                        "--synthetic_val_samples", "2", "--synthetic_seed", "4", "--data_root", "/d")
    assert vars(dashed) == vars(underscored)


def test_synthetic_source_follows_the_flags():
    args = parse("--synthetic_size", "33", "--synthetic_train_samples", "5", "--synthetic_val_samples", "2",
                 "--num_classes", "3")
    info = get_dataset_info("synthetic")
    train, val = info.make_source("train", args), info.make_source("val", args)
    assert (len(train), len(val)) == (5, 2)
    assert train.load(0)[0].shape == (33, 33, 3)
    assert train.class_names == SyntheticShapes.CLASS_NAMES[:3]
    assert not np.array_equal(train.load(0)[0], val.load(0)[0])
    for stage in ("search", "retrain"):  # the embedded dataset trains out of the box
        assert set(recipe("autodeeplab", stage, "synthetic")) >= {"epochs", "crop_size", "batch_size"}


def test_num_classes_of_a_free_dataset():
    info = get_dataset_info("synthetic")
    assert resolve_num_classes(parse()) == info.default_num_classes
    assert resolve_num_classes(parse("--num_classes", "3")) == 3


def test_synthetic_rejects_too_many_classes():
    args = parse("--num_classes", str(SyntheticShapes.MAX_CLASSES + 1))
    with pytest.raises(UserError, match="--num_classes"):
        get_dataset_info("synthetic").make_source("train", args)


def test_num_classes_of_a_fixed_dataset(monkeypatch):
    fixed = DatasetInfo(name="fixed19", num_classes=19, default_num_classes=19,
                        make_source=lambda split, args: ListSource([]))
    monkeypatch.setitem(DATASETS, "fixed19", fixed)
    assert resolve_num_classes(argparse.Namespace(dataset="fixed19", num_classes=None)) == 19
    assert resolve_num_classes(argparse.Namespace(dataset="fixed19", num_classes=19)) == 19
    with pytest.raises(UserError, match="--num_classes.*fixed19.*19"):
        resolve_num_classes(argparse.Namespace(dataset="fixed19", num_classes=5))


def test_palette_is_distinct_uint8_colours():
    palette = get_dataset_info("synthetic").palette(21)
    assert palette.shape == (21, 3) and palette.dtype == np.uint8
    assert (palette[0] == 0).all()
    assert len({tuple(colour) for colour in palette}) == 21
    np.testing.assert_array_equal(voc_palette(21)[15], [192, 128, 128])  # VOC "person"


# ---------------------------------------------------------------- dataset


def test_dataset_applies_the_transform_with_the_key_seed():
    source = SyntheticShapes("train", 4, 48, 4, 0)
    dataset = SegmentationDataset(source, search_train_transform(None, 32))
    image, mask = dataset[(1, 5)]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert mask.shape == (32, 32) and mask.dtype == torch.int64
    again = dataset[(1, 5)]
    assert torch.equal(image, again[0]) and torch.equal(mask, again[1])
    assert any(not torch.equal(image, dataset[(1, seed)][0]) for seed in range(6, 10))
    assert torch.equal(dataset[1][0], dataset[(1, 0)][0])
    assert len(dataset) == 4 and dataset.num_classes == 4


def test_dataset_rejects_labels_beyond_num_classes():
    good = np.array([[0, 1], [255, 1]], dtype=np.uint8)
    bad = np.array([[0, 7], [1, 1]], dtype=np.uint8)
    dataset = SegmentationDataset(ListSource([good, good, good, bad]), eval_transform(None))
    assert dataset[2][1].tolist() == [[0, 1], [255, 1]]
    with pytest.raises(UserError, match="list sample 3: label values 7 are outside 0..1"):
        dataset[3]


# ---------------------------------------------------------------- sampler


def test_sampler_is_reproducible_per_epoch():
    first = SeededSampler(range(20), seed=3, shuffle=True)
    second = SeededSampler(range(20), seed=3, shuffle=True)
    first.set_epoch(4)
    second.set_epoch(4)
    assert list(first) == list(second)
    assert list(first) == list(first)
    assert sorted(index for index, _ in first) == list(range(20))
    assert len({seed for _, seed in first}) == 20


def test_sampler_changes_with_epoch_and_seed():
    sampler = SeededSampler(range(20), seed=3, shuffle=True)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert [i for i, _ in epoch0] != [i for i, _ in epoch1]
    assert not {s for _, s in epoch0} & {s for _, s in epoch1}
    assert list(SeededSampler(range(20), seed=4, shuffle=True)) != epoch0


def test_sampler_without_shuffle_keeps_the_given_order():
    sampler = SeededSampler([5, 2, 9], seed=0, shuffle=False)
    assert [index for index, _ in sampler] == [5, 2, 9]
    assert len(sampler) == 3


def test_sampler_only_yields_the_given_indices():
    indices = [10, 11, 40, 41, 42]
    assert sorted(index for index, _ in SeededSampler(indices, seed=1, shuffle=True)) == indices


@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_share_one_epoch_order(drop_last):
    whole = SeededSampler(range(10), seed=7, shuffle=True)
    whole.set_epoch(2)
    order = list(whole)
    shards = []
    for rank in range(3):
        shard = SeededSampler(range(10), seed=7, shuffle=True, num_replicas=3, rank=rank, drop_last=drop_last)
        shard.set_epoch(2)
        shards.append(list(shard))
        assert len(shards[-1]) == len(shard)
    assert len({len(shard) for shard in shards}) == 1
    interleaved = [pair for position in zip(*shards) for pair in position]
    if drop_last:
        assert interleaved == order[:9]
        assert len({index for index, _ in interleaved}) == 9
    else:
        assert interleaved[:10] == order
        assert {index for index, _ in interleaved[10:]} <= {index for index, _ in order[:2]}
        assert len({seed for _, seed in interleaved}) == 12


def test_sampler_rejects_a_bad_rank():
    with pytest.raises(ValueError):
        SeededSampler(range(4), seed=0, shuffle=True, num_replicas=2, rank=2)


def test_loader_batches_do_not_depend_on_workers():
    dataset = SegmentationDataset(SyntheticShapes("train", 12, 40, 4, 0), search_train_transform(None, 32))

    def batches(workers):
        sampler = SeededSampler(range(12), seed=1, shuffle=True)
        sampler.set_epoch(3)
        return list(make_loader(dataset, sampler, batch_size=4, workers=workers, drop_last=True))

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 3
    for (image_a, mask_a), (image_b, mask_b) in zip(serial, parallel):
        assert image_a.shape == (4, 3, 32, 32) and mask_a.shape == (4, 32, 32)
        assert torch.equal(image_a, image_b) and torch.equal(mask_a, mask_b)


def test_loader_leaves_the_global_rng_alone():
    dataset = SegmentationDataset(SyntheticShapes("train", 4, 32, 4, 0), eval_transform(None))
    loader = make_loader(dataset, SeededSampler(range(4), seed=0, shuffle=True), 2, 0, drop_last=False)
    state = torch.get_rng_state()
    assert sum(len(images) for images, _ in loader) == 4
    assert torch.equal(torch.get_rng_state(), state)
    assert loader.persistent_workers is False and loader.pin_memory is torch.cuda.is_available()


# ---------------------------------------------------------------- trainA / trainB split


@pytest.mark.parametrize("n", [0, 1, 2, 11, 400])
def test_split_is_disjoint_and_covering(n):
    part_a, part_b = split_indices(n, seed=0)
    assert (len(part_a), len(part_b)) == (n // 2, n - n // 2)
    assert not set(part_a) & set(part_b)
    assert sorted(part_a + part_b) == list(range(n))


def test_split_is_seeded():
    assert split_indices(50, seed=1) == split_indices(50, seed=1)
    assert split_indices(50, seed=1) != split_indices(50, seed=2)
    assert split_indices(50, seed=1)[0] != list(range(25))
