import numpy as np
import pytest
from PIL import Image

from evaluation.panoptic_quality import PanopticQuality, id_to_rgb, rgb_to_id
from utils.errors import UserError

PERSON, SKY, CAR, GRASS = 1, 2, 3, 4
CATEGORIES = [{"id": PERSON, "isthing": 1, "name": "person"}, {"id": SKY, "isthing": 0, "name": "sky"},
              {"id": CAR, "isthing": 1, "name": "car"}, {"id": GRASS, "isthing": 0, "name": "grass"}]


def hand_example():
    """The 10x10 image of the reference's PQ section, with its counts worked out by hand."""
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[0:5, 0:5] = 1  # person, 25 px
    gt[0:5, 7:10] = 3  # person crowd, 15 px (cols 5-6 of rows 0-4 stay VOID)
    gt[5:8] = 2  # sky, 30 px
    gt[8:10] = 4  # grass, 20 px
    gt_segments = [{"id": 1, "category_id": PERSON, "iscrowd": 0}, {"id": 3, "category_id": PERSON, "iscrowd": 1},
                   {"id": 2, "category_id": SKY, "iscrowd": 0}, {"id": 4, "category_id": GRASS, "iscrowd": 0}]
    pred = np.zeros((10, 10), dtype=np.int64)
    pred[0:5, 0:4] = 11  # person: I 20, U 25, IoU 0.8 -> TP
    pred[0:5, 5:9] = 12  # person: 10 px VOID + 10 px crowd of 20 -> ignored
    pred[5:9] = 13  # sky: I 30, U 40, IoU 0.75 -> TP
    pred[9, 0:5] = 14  # car on grass -> FP (grass -> FN)
    pred_segments = [{"id": 11, "category_id": PERSON}, {"id": 12, "category_id": PERSON},
                     {"id": 13, "category_id": SKY}, {"id": 14, "category_id": CAR}]
    return gt, gt_segments, pred, pred_segments


def scored(gt, gt_segments, pred, pred_segments, categories=CATEGORIES):
    quality = PanopticQuality(categories)
    quality.update(gt, gt_segments, pred, pred_segments, image="toy")
    return quality


def counts(quality, category_id):
    per_class = quality.summary()["per_class"][category_id]
    return per_class["tp"], per_class["fp"], per_class["fn"]


def test_the_hand_example_gives_the_reference_numbers():
    summary = scored(*hand_example()).summary()

    assert summary["All"] == pytest.approx({"pq": 0.3875, "sq": 0.3875, "rq": 0.5, "n": 4})
    assert summary["Things"] == pytest.approx({"pq": 0.40, "sq": 0.40, "rq": 0.5, "n": 2})
    assert summary["Stuff"] == pytest.approx({"pq": 0.375, "sq": 0.375, "rq": 0.5, "n": 2})
    assert summary["per_class"][PERSON] == pytest.approx({"pq": 0.8, "sq": 0.8, "rq": 1.0, "tp": 1, "fp": 0, "fn": 0})
    assert summary["per_class"][CAR] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 1, "fn": 0}
    assert summary["per_class"][GRASS] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 1}


def test_a_perfect_prediction_scores_one():
    gt, gt_segments, _, _ = hand_example()
    pred_segments = [{"id": s["id"], "category_id": s["category_id"]} for s in gt_segments if not s["iscrowd"]]
    pred = np.where(np.isin(gt, [s["id"] for s in pred_segments]), gt, 0)

    summary = scored(gt, gt_segments, pred, pred_segments).summary()

    for group in ("All", "Things", "Stuff"):
        assert summary[group]["pq"] == summary[group]["sq"] == summary[group]["rq"] == 1.0
    assert summary["All"]["n"] == 3  # car never occurs, so it is left out of the means


@pytest.mark.parametrize("pred_width, matched", [(2, False), (3, True)])
def test_a_match_needs_iou_strictly_above_one_half(pred_width, matched):
    gt = np.array([[1, 1, 1, 1]])
    pred = np.zeros_like(gt)
    pred[0, :pred_width] = 7  # IoU 2/4 = 0.5 exactly, or 3/4

    quality = scored(gt, [{"id": 1, "category_id": PERSON, "iscrowd": 0}], pred, [{"id": 7, "category_id": PERSON}])

    assert counts(quality, PERSON) == ((1, 0, 0) if matched else (0, 1, 1))


def test_predicted_pixels_on_void_leave_the_union():
    gt = np.array([[1, 1, 1, 1, 0, 0]])
    pred = np.array([[0, 7, 7, 7, 7, 7]])  # I 3; union 5 + 4 - 3 - 2 void = 4 -> IoU 0.75 (0.5 with the void)

    quality = scored(gt, [{"id": 1, "category_id": PERSON, "iscrowd": 0}], pred, [{"id": 7, "category_id": PERSON}])

    assert counts(quality, PERSON) == (1, 0, 0)
    assert quality.summary()["per_class"][PERSON]["sq"] == pytest.approx(0.75)


@pytest.mark.parametrize("void_pixels, false_positive", [(2, True), (3, False)])
def test_an_unmatched_prediction_is_ignored_only_when_more_than_half_lies_on_void(void_pixels, false_positive):
    gt = np.array([[2, 2, 2, 2, 0, 0, 0]])
    pred = np.zeros_like(gt)
    pred[0, void_pixels:void_pixels + 4] = 7  # 4 px, the rest on sky (another category)

    quality = scored(gt, [{"id": 2, "category_id": SKY, "iscrowd": 0}], pred, [{"id": 7, "category_id": CAR}])

    assert counts(quality, CAR) == ((0, 1, 0) if false_positive else (0, 0, 0))


def test_only_the_last_crowd_region_of_a_category_excuses_predictions():
    gt = np.array([[5, 5, 5, 5, 6, 6, 6, 6]])
    crowds = [{"id": 5, "category_id": PERSON, "iscrowd": 1}, {"id": 6, "category_id": PERSON, "iscrowd": 1}]
    pred = np.array([[7, 7, 7, 7, 8, 8, 8, 8]])
    pred_segments = [{"id": 7, "category_id": PERSON}, {"id": 8, "category_id": PERSON}]

    quality = scored(gt, crowds, pred, pred_segments)

    assert counts(quality, PERSON) == (0, 1, 0)  # 7 on the first crowd is a FP, 8 on the last one is ignored


def test_a_crowd_region_excuses_only_predictions_of_its_category():
    gt = np.array([[5, 5, 5, 5]])
    pred = np.array([[7, 7, 7, 7]])

    quality = scored(gt, [{"id": 5, "category_id": PERSON, "iscrowd": 1}], pred, [{"id": 7, "category_id": CAR}])

    assert counts(quality, CAR) == (0, 1, 0)
    assert counts(quality, PERSON) == (0, 0, 0)  # a crowd is never a false negative


def test_merged_accumulators_equal_one_that_saw_every_image():
    first = hand_example()
    gt, gt_segments, pred, pred_segments = hand_example()
    second = (gt.T.copy(), gt_segments, np.where(pred == 14, 0, pred).T.copy(), pred_segments[:3])
    together = PanopticQuality(CATEGORIES)
    together.update(*first, image="first")
    together.update(*second, image="second")

    one, other = PanopticQuality(CATEGORIES), PanopticQuality(CATEGORIES)
    one.update(*first, image="first")
    other.update(*second, image="second")
    one.merge(other)
    summed = PanopticQuality.from_state(CATEGORIES, scored(*first).state() + scored(*second).state())

    np.testing.assert_allclose(one.state(), together.state())
    np.testing.assert_allclose(summed.state(), together.state())
    assert one.summary() == together.summary()
    assert together.summary()["per_class"][PERSON]["tp"] == 2


def test_merging_different_category_lists_is_refused():
    with pytest.raises(ValueError, match="different category lists"):
        PanopticQuality(CATEGORIES).merge(PanopticQuality(CATEGORIES[:2]))


def test_rgb_and_ids_round_trip_through_a_png(tmp_path):
    ids = np.random.default_rng(0).integers(0, 256**3, size=(6, 9))
    ids[0, 0] = 1 + 256 * 2 + 256**2 * 3

    rgb = id_to_rgb(ids)
    Image.fromarray(rgb).save(tmp_path / "panoptic.png")
    reread = np.array(Image.open(tmp_path / "panoptic.png"))

    assert rgb.dtype == np.uint8 and rgb.shape == (6, 9, 3)
    assert rgb[0, 0].tolist() == [1, 2, 3]
    np.testing.assert_array_equal(rgb_to_id(reread), ids)


def test_ids_too_large_for_rgb_are_refused():
    with pytest.raises(ValueError, match="0..16777215"):
        id_to_rgb(np.array([[256**3]]))


def test_a_prediction_id_missing_from_its_segment_list_names_the_image():
    gt, gt_segments, pred, pred_segments = hand_example()
    with pytest.raises(UserError, match=r"image 000139\.png: prediction segment ids \[14\] are in the id map"):
        PanopticQuality(CATEGORIES).update(gt, gt_segments, pred, pred_segments[:3], image="000139.png")


def test_a_listed_prediction_absent_from_the_map_names_the_image():
    gt, gt_segments, pred, pred_segments = hand_example()
    with pytest.raises(UserError, match=r"image 42: prediction segment ids \[99\] are in the segment list"):
        PanopticQuality(CATEGORIES).update(gt, gt_segments, pred, pred_segments + [{"id": 99, "category_id": CAR}],
                                           image=42)


def test_an_unknown_category_names_the_image():
    gt, gt_segments, pred, pred_segments = hand_example()
    pred_segments[3] = {"id": 14, "category_id": 77}
    with pytest.raises(UserError, match=r"image 000139\.png: prediction segment 14 has unknown category id 77"):
        PanopticQuality(CATEGORIES).update(gt, gt_segments, pred, pred_segments, image="000139.png")


def test_maps_of_different_sizes_name_the_image():
    gt, gt_segments, pred, pred_segments = hand_example()
    with pytest.raises(UserError, match="image 7: the ground truth is"):
        PanopticQuality(CATEGORIES).update(gt, gt_segments, pred[:, :9], pred_segments, image=7)


def brute_force_counts(gt, gt_segments, pred, pred_segments):
    """panopticapi's rules spelled out on pixel sets, one segment at a time: {category: [tp, fp, fn, iou]}."""
    def pixels(id_map, segment_id):
        return {(row, col) for row, col in zip(*np.nonzero(id_map == segment_id))}

    void = pixels(gt, 0)
    gt_pixels = {s["id"]: pixels(gt, s["id"]) for s in gt_segments}
    pred_pixels = {s["id"]: pixels(pred, s["id"]) for s in pred_segments}
    totals = {c["id"]: [0, 0, 0, 0.0] for c in CATEGORIES}
    matched_gt, matched_pred = set(), set()
    for g in gt_segments:
        for p in pred_segments:
            if g["iscrowd"] or g["category_id"] != p["category_id"]:
                continue
            both = gt_pixels[g["id"]] & pred_pixels[p["id"]]
            either = (gt_pixels[g["id"]] | pred_pixels[p["id"]]) - void
            if both and len(both) / len(either) > 0.5:
                totals[g["category_id"]][0] += 1
                totals[g["category_id"]][3] += len(both) / len(either)
                matched_gt.add(g["id"])
                matched_pred.add(p["id"])
    crowd = {g["category_id"]: gt_pixels[g["id"]] for g in gt_segments if g["iscrowd"]}
    for g in gt_segments:
        if not g["iscrowd"] and g["id"] not in matched_gt:
            totals[g["category_id"]][2] += 1
    for p in pred_segments:
        if p["id"] in matched_pred:
            continue
        excused = pred_pixels[p["id"]] & (void | crowd.get(p["category_id"], set()))
        if len(excused) / len(pred_pixels[p["id"]]) <= 0.5:
            totals[p["category_id"]][1] += 1
    return totals


def random_image(rng):
    """A blocky ground truth (some crowd, some void, sometimes an unlisted id) and a noisy relabelled copy."""
    size = int(rng.integers(6, 11))
    blocks = rng.integers(0, 6, size=(3, 3))
    gt = np.kron(blocks, np.ones((4, 4), dtype=np.int64))[:size, :size]
    present = sorted(set(np.unique(gt).tolist()) - {0})
    listed = [i for i in present if i != 5 or rng.random() < 0.5]  # id 5 is sometimes missing from the list
    gt_segments = [{"id": i, "category_id": int(rng.integers(1, 5)), "iscrowd": int(rng.random() < 0.25)}
                   for i in listed]
    category_of = {s["id"]: s["category_id"] for s in gt_segments}

    pred = np.where(gt > 0, gt + 10, 0)
    noise = rng.random(gt.shape) < 0.25
    pred[noise] = rng.choice([0, 11, 12, 13, 14, 15, 20], size=int(noise.sum()))
    pred_segments = [{"id": i, "category_id": category_of.get(i - 10, 1) if rng.random() < 0.8
                      else int(rng.integers(1, 5))}
                     for i in sorted(set(np.unique(pred).tolist()) - {0})]
    return gt, gt_segments, pred, pred_segments


def test_counts_agree_with_a_brute_force_reading_of_the_rules():
    rng = np.random.default_rng(2024)
    seen = np.zeros(4)
    for image in range(300):
        case = random_image(rng)
        quality = PanopticQuality(CATEGORIES)
        quality.update(*case, image=image)

        expected = brute_force_counts(*case)
        state = quality.state()
        for row, category in enumerate(CATEGORIES):
            assert state[row, :3].tolist() == expected[category["id"]][:3], f"image {image}, {category['name']}"
            assert state[row, 3] == pytest.approx(expected[category["id"]][3]), f"image {image}"
        seen += state.sum(axis=0)
    assert (seen[:3] > 50).all()  # the random images reach true positives, false positives and false negatives
