import numpy as np
import pytest
import torch

from modeling.autopanoptic.merge import merge_panoptic, placement_order

PERSON, CAR = 1, 3
SKY_LABEL, GRASS_LABEL = 1, 2
STUFF = {SKY_LABEL: 187, GRASS_LABEL: 193}


def box(rows, cols, shape=(10, 10)):
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = True
    return mask


def toy():
    """The 10x10 worked example of the reference's merge section (inclusive row/column ranges)."""
    masks = np.stack([box((0, 5), (0, 5)),  # A person 0.9, 36 px
                      box((4, 6), (4, 6)),  # B car 0.8, 9 px
                      box((0, 5), (6, 9)),  # C person 0.6, 24 px
                      box((0, 2), (0, 2))])  # E car 0.7, 9 px, inside A
    scores = [0.9, 0.8, 0.6, 0.7]
    categories = [PERSON, CAR, PERSON, CAR]
    semantic = np.zeros((10, 10), dtype=np.uint8)
    semantic[6:10] = SKY_LABEL
    semantic[0:2, 0:2] = GRASS_LABEL
    return masks, scores, categories, semantic


def test_the_worked_example_places_b_a_c_then_sky():
    masks, scores, categories, semantic = toy()

    segment_ids, segments = merge_panoptic(masks, scores, categories, semantic, STUFF, stuff_area_limit=10)

    assert placement_order(scores, masks.sum(axis=(1, 2))) == [1, 0, 3, 2]  # B, A, E, C
    assert segments == [
        {"id": 1, "category_id": CAR, "isthing": True, "area": 9, "score": 0.8},  # B
        {"id": 2, "category_id": PERSON, "isthing": True, "area": 32, "score": 0.9},  # A, minus B's corner
        {"id": 3, "category_id": PERSON, "isthing": True, "area": 22, "score": 0.6},  # C, minus B's corner
        {"id": 4, "category_id": 187, "isthing": False, "area": 37},  # sky; E and grass are dropped
    ]
    expected = np.zeros((10, 10), dtype=np.int32)
    expected[6:10] = 4
    expected[0:6, 0:6] = 2
    expected[0:6, 6:10] = 3
    expected[4:7, 4:7] = 1
    assert segment_ids.dtype == np.int32
    np.testing.assert_array_equal(segment_ids, expected)


def test_the_default_stuff_limit_leaves_small_stuff_void():
    masks, scores, categories, semantic = toy()

    segment_ids, segments = merge_panoptic(masks, scores, categories, semantic, STUFF)

    assert [s["isthing"] for s in segments] == [True, True, True]
    assert (segment_ids == 0).sum() == 37


def test_torch_inputs_give_the_same_result():
    masks, scores, categories, semantic = toy()

    from_numpy = merge_panoptic(masks, scores, categories, semantic, STUFF, stuff_area_limit=10)
    from_torch = merge_panoptic(torch.from_numpy(masks), torch.tensor(scores), torch.tensor(categories),
                                torch.from_numpy(semantic), STUFF, stuff_area_limit=10)

    np.testing.assert_array_equal(from_torch[0], from_numpy[0])
    assert [s["score"] for s in from_torch[1][:3]] == pytest.approx([0.8, 0.9, 0.6])  # float32 scores
    assert [s | {"score": 0} for s in from_torch[1]] == [s | {"score": 0} for s in from_numpy[1]]


@pytest.mark.parametrize("scores, areas, order", [
    ([0.9, 0.8], [36, 9], [1, 0]),  # both above 0.725: the smaller mask first
    ([0.74, 0.9], [50, 5], [1, 0]),
    ([0.7, 0.9], [5, 50], [1, 0]),  # one not above 0.725: the higher score first, whatever the areas
    ([0.725, 0.9], [5, 50], [1, 0]),  # 0.725 itself is not above
    ([0.9, 0.725], [50, 5], [0, 1]),
    ([0.9, 0.6, 0.7], [9, 1, 2], [0, 2, 1]),
    ([0.8, 0.9], [10, 10], [0, 1]),  # both above, equal areas: a tie keeps the input order
    ([0.6, 0.6], [10, 5], [0, 1]),  # equal scores: a tie too
    ([0.49, 0.5, 0.2], [1, 1, 1], [1]),  # scores below 0.5 are dropped
])
def test_the_placement_order_reproduces_pancmp(scores, areas, order):
    assert placement_order(scores, areas) == order


@pytest.mark.parametrize("overlap, kept", [(2, True), (3, False)])
def test_an_instance_more_than_half_covered_by_earlier_ones_is_dropped(overlap, kept):
    first = box((0, 0), (0, 3), shape=(1, 8))
    second = box((0, 0), (4 - overlap, 7 - overlap), shape=(1, 8))  # 4 px, `overlap` of them inside `first`

    segment_ids, segments = merge_panoptic(np.stack([first, second]), [0.7, 0.6], [PERSON, PERSON],
                                           np.zeros((1, 8), dtype=np.uint8), STUFF)

    if kept:
        assert [s["area"] for s in segments] == [4, 2]  # it paints only the pixels still free
        assert segment_ids.tolist() == [[1, 1, 1, 1, 2, 2, 0, 0]]
    else:
        assert [s["area"] for s in segments] == [4]
        assert segment_ids.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]]


def test_an_empty_mask_takes_no_segment_id():
    masks = np.stack([np.zeros((1, 4), dtype=bool), box((0, 0), (0, 1), shape=(1, 4))])

    segment_ids, segments = merge_panoptic(masks, [0.9, 0.8], [CAR, PERSON], np.zeros((1, 4), dtype=np.uint8), STUFF)

    assert segments == [{"id": 1, "category_id": PERSON, "isthing": True, "area": 2, "score": 0.8}]
    assert segment_ids.tolist() == [[1, 1, 0, 0]]


def test_stuff_fills_free_pixels_in_label_order_and_things_and_void_labels_stay_void():
    semantic = np.array([[GRASS_LABEL] * 3 + [0] * 2 + [255] * 2,
                         [SKY_LABEL] * 4 + [GRASS_LABEL] * 3])
    car = np.zeros((1, 2, 7), dtype=bool)
    car[0, 1, 0] = True  # takes one sky pixel

    segment_ids, segments = merge_panoptic(car, [0.9], [CAR], semantic, STUFF, stuff_area_limit=3)

    assert [(s["category_id"], s["area"]) for s in segments] == [(CAR, 1), (187, 3), (193, 6)]
    assert segment_ids.tolist() == [[3, 3, 3, 0, 0, 0, 0],
                                    [1, 2, 2, 2, 3, 3, 3]]


@pytest.mark.parametrize("limit, placed", [(3, True), (4, False)])
def test_stuff_with_fewer_free_pixels_than_the_limit_is_dropped(limit, placed):
    semantic = np.array([[SKY_LABEL] * 3 + [0]])

    _, segments = merge_panoptic(np.zeros((0, 1, 4), dtype=bool), [], [], semantic, STUFF, stuff_area_limit=limit)

    assert segments == ([{"id": 1, "category_id": 187, "isthing": False, "area": 3}] if placed else [])


def test_a_semantic_label_without_a_stuff_category_is_refused():
    with pytest.raises(ValueError, match="semantic label 9 has no stuff category"):
        merge_panoptic(np.zeros((0, 1, 2), dtype=bool), [], [], np.array([[9, 1]]), STUFF)


def test_soft_masks_are_refused():
    with pytest.raises(TypeError, match="boolean"):
        merge_panoptic(np.full((1, 1, 2), 0.7), [0.9], [CAR], np.zeros((1, 2), dtype=np.uint8), STUFF)
