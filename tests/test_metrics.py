import math

import numpy as np
import pytest
import torch

from evaluation.metrics import ConfusionMatrix

# A 3-class example small enough to count by hand (shape 2x5, as an image would be).
HAND_TARGET = torch.tensor([[0, 0, 0, 1, 1],
                            [1, 1, 2, 2, 2]])
HAND_PREDICTION = torch.tensor([[0, 0, 1, 1, 1],
                                [1, 2, 2, 0, 2]])
# rows = ground truth, columns = prediction:
#   GT 0: predicted 0, 0, 1       -> [2, 1, 0]
#   GT 1: predicted 1, 1, 1, 2    -> [0, 3, 1]
#   GT 2: predicted 2, 0, 2       -> [1, 0, 2]
HAND_MATRIX = [[2, 1, 0],
               [0, 3, 1],
               [1, 0, 2]]
# IoU_c = TP / (TP + FP + FN), FP = column sum - TP, FN = row sum - TP:
#   class 0: 2 / (2 + 1 + 1) = 0.5
#   class 1: 3 / (3 + 1 + 1) = 0.6
#   class 2: 2 / (2 + 1 + 1) = 0.5
HAND_IOU = [0.5, 0.6, 0.5]
HAND_MIOU = (0.5 + 0.6 + 0.5) / 3
HAND_PIXEL_ACCURACY = 7 / 10  # diagonal 2 + 3 + 2 of 10 pixels
HAND_MEAN_CLASS_ACCURACY = (2 / 3 + 3 / 4 + 2 / 3) / 3  # recall per GT row
HAND_FW_IOU = 0.3 * 0.5 + 0.4 * 0.6 + 0.3 * 0.5  # GT shares 3/10, 4/10, 3/10


def test_hand_computed_example():
    cm = ConfusionMatrix(3)
    cm.update(HAND_PREDICTION, HAND_TARGET)

    assert cm.matrix.dtype == torch.int64
    assert cm.matrix.tolist() == HAND_MATRIX
    np.testing.assert_allclose(cm.iou(), HAND_IOU)
    assert cm.miou() == pytest.approx(HAND_MIOU)
    assert cm.pixel_accuracy() == pytest.approx(HAND_PIXEL_ACCURACY)
    assert cm.mean_class_accuracy() == pytest.approx(HAND_MEAN_CLASS_ACCURACY)
    assert cm.frequency_weighted_iou() == pytest.approx(HAND_FW_IOU)


def test_summary_is_plain_python_values():
    cm = ConfusionMatrix(3)
    cm.update(HAND_PREDICTION, HAND_TARGET)

    summary = cm.summary()

    assert set(summary) == {"miou", "pixel_accuracy", "mean_class_accuracy", "fw_iou", "per_class_iou"}
    assert all(type(summary[key]) is float for key in summary if key != "per_class_iou")
    assert summary["miou"] == pytest.approx(HAND_MIOU)
    assert summary["fw_iou"] == pytest.approx(HAND_FW_IOU)
    assert all(type(score) is float for score in summary["per_class_iou"])
    assert summary["per_class_iou"] == pytest.approx(HAND_IOU)


def test_ignore_index_pixels_are_skipped_even_for_uint8_masks():
    cm = ConfusionMatrix(3)
    target = torch.tensor([0, 255, 1, 255], dtype=torch.uint8)
    prediction = torch.tensor([0, 2, 1, 1], dtype=torch.uint8)

    cm.update(prediction, target)

    assert cm.matrix.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_uint8_masks_with_many_classes_do_not_overflow():
    cm = ConfusionMatrix(100)
    # num_classes * target = 9900 would wrap around in uint8 arithmetic
    cm.update(torch.tensor([98], dtype=torch.uint8), torch.tensor([99], dtype=torch.uint8))

    assert cm.matrix[99, 98].item() == 1
    assert cm.matrix.sum().item() == 1


def test_ignore_index_inside_the_class_range_is_skipped():
    cm = ConfusionMatrix(3, ignore_index=0)
    cm.update(torch.tensor([1, 1, 2]), torch.tensor([0, 1, 2]))

    assert cm.matrix.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 1]]


def test_out_of_range_targets_are_skipped():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 2, 1]), torch.tensor([-1, 3, 2, 7]))

    assert cm.matrix.tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 1]]


def test_out_of_range_prediction_on_a_counted_pixel_is_an_error():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside 0..2"):
        cm.update(torch.tensor([0, 3]), torch.tensor([0, 1]))
    # the same bad prediction on an ignored pixel is harmless
    cm.update(torch.tensor([0, 3]), torch.tensor([0, 255]))
    assert cm.matrix.sum().item() == 1


def test_mismatched_shapes_and_float_inputs_are_rejected():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="argmax"):
        cm.update(torch.zeros(4), torch.zeros(4, dtype=torch.long))


def test_class_absent_from_ground_truth_and_prediction_is_nan_and_excluded():
    cm = ConfusionMatrix(4)
    cm.update(HAND_PREDICTION, HAND_TARGET)  # class 3 never appears

    scores = cm.iou()

    assert math.isnan(scores[3])
    np.testing.assert_allclose(scores[:3], HAND_IOU)
    assert cm.miou() == pytest.approx(HAND_MIOU)
    assert cm.mean_class_accuracy() == pytest.approx(HAND_MEAN_CLASS_ACCURACY)
    assert cm.summary()["per_class_iou"][3] is None


def test_class_only_predicted_scores_zero_and_counts_in_the_mean():
    cm = ConfusionMatrix(3)
    # class 2 is predicted once but never in the ground truth: IoU 0, not NaN
    cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))

    np.testing.assert_allclose(cm.iou(), [1.0, 0.5, 0.0])
    assert cm.miou() == pytest.approx(0.5)
    # mean class accuracy averages over GT classes 0 and 1 only: (1 + 1/2) / 2
    assert cm.mean_class_accuracy() == pytest.approx(0.75)


def test_perfect_prediction_scores_one():
    cm = ConfusionMatrix(3)
    cm.update(HAND_TARGET, HAND_TARGET)

    assert cm.miou() == 1.0
    assert cm.pixel_accuracy() == 1.0
    assert cm.mean_class_accuracy() == 1.0
    assert cm.frequency_weighted_iou() == pytest.approx(1.0)


def test_empty_matrix_scores_zero():
    cm = ConfusionMatrix(3)

    assert np.isnan(cm.iou()).all()
    assert cm.summary() == {"miou": 0.0, "pixel_accuracy": 0.0, "mean_class_accuracy": 0.0,
                            "fw_iou": 0.0, "per_class_iou": [None, None, None]}


def test_reset_clears_counts():
    cm = ConfusionMatrix(3)
    cm.update(HAND_PREDICTION, HAND_TARGET)

    cm.reset()

    assert cm.matrix.tolist() == [[0] * 3] * 3


def test_matrix_is_a_copy():
    cm = ConfusionMatrix(3)
    cm.update(HAND_PREDICTION, HAND_TARGET)

    cm.matrix.zero_()

    assert cm.matrix.tolist() == HAND_MATRIX


def test_merge_adds_counts_from_another_matrix():
    first, second, whole = ConfusionMatrix(3), ConfusionMatrix(3), ConfusionMatrix(3)
    first.update(HAND_PREDICTION[0], HAND_TARGET[0])
    second.update(HAND_PREDICTION[1], HAND_TARGET[1])
    whole.update(HAND_PREDICTION, HAND_TARGET)

    first.merge(second.matrix)

    assert first.matrix.tolist() == whole.matrix.tolist()
    first.merge(np.eye(3, dtype=np.int64))
    assert torch.diag(first.matrix).tolist() == [3, 4, 3]
    with pytest.raises(ValueError, match="3x3"):
        first.merge(torch.zeros(2, 2, dtype=torch.int64))


def _brute_force_scores(prediction: list[int], target: list[int], num_classes: int):
    """Per-class IoU from pixel-index sets, and accuracies by counting, for valid pixels only."""
    valid = [i for i, t in enumerate(target) if 0 <= t < num_classes]
    ious, recalls, weights = [], [], []
    for c in range(num_classes):
        in_gt = {i for i in valid if target[i] == c}
        in_prediction = {i for i in valid if prediction[i] == c}
        union = in_gt | in_prediction
        ious.append(len(in_gt & in_prediction) / len(union) if union else math.nan)
        if in_gt:
            recalls.append(len(in_gt & in_prediction) / len(in_gt))
        weights.append(len(in_gt) / len(valid))
    correct = sum(prediction[i] == target[i] for i in valid)
    fw_iou = sum(w * iou for w, iou in zip(weights, ious) if w > 0)
    return ious, correct / len(valid), sum(recalls) / len(recalls), fw_iou


def test_random_batches_match_brute_force_set_computation():
    num_classes = 6
    generator = torch.Generator().manual_seed(0)
    cm = ConfusionMatrix(num_classes)
    all_prediction, all_target = [], []
    for _ in range(3):
        # class 5 is never drawn, labels -1, 6, 7 are out of range, 255 is ignored
        target = torch.randint(-1, 8, (4, 7, 9), generator=generator)
        target[target == 5] = 255
        target[torch.rand(target.shape, generator=generator) < 0.1] = 255
        prediction = torch.randint(0, 5, target.shape, generator=generator)
        cm.update(prediction, target)
        all_prediction += prediction.flatten().tolist()
        all_target += target.flatten().tolist()

    ious, pixel_accuracy, class_accuracy, fw_iou = _brute_force_scores(all_prediction, all_target,
                                                                       num_classes)

    np.testing.assert_allclose(cm.iou(), ious)
    assert math.isnan(cm.iou()[5])
    assert cm.miou() == pytest.approx(np.nanmean(ious))
    assert cm.pixel_accuracy() == pytest.approx(pixel_accuracy)
    assert cm.mean_class_accuracy() == pytest.approx(class_accuracy)
    assert cm.frequency_weighted_iou() == pytest.approx(fw_iou)
