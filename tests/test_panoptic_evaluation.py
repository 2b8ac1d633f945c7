"""A panoptic network's outputs turned into panoptic maps and scored: the semantic argmax resized as PIL does, the
masks pasted into their boxes at the original size as the original's Masker does (checked against a paste
written out here), hand cases, and a perfect prediction of the synthetic panoptic data."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from dataloaders.datasets.synthetic_panoptic import SyntheticPanoptic
from dataloaders.panoptic import PanopticDataset, PanopticTransform, collate, instance_targets
from evaluation.panoptic import evaluate_panoptic, panoptic_prediction, resize_labels

THINGS, STUFF = [1, 2], [7, 9]
MASK_SIDE = 28


def output(masks, boxes, labels, scores, semantic_labels, classes=3):
    semantic = F.one_hot(torch.as_tensor(semantic_labels), classes).permute(2, 0, 1).float() * 5
    masks = torch.as_tensor(np.asarray(masks, dtype=np.float32))[:, None]
    return {"boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels),
            "scores": torch.tensor(scores), "masks": masks, "semantic": semantic}


def reference_paste(mask, box, height, width):
    """maskrcnn-benchmark's Masker (padding 1, threshold 0.5) for one M×M probability map, written out: pad the map
    by one pixel of zeros, widen the box about its centre by (M + 2) / M, truncate its corners to integers, resize
    the padded map bilinearly to the box's size counting both corner pixels, threshold, and keep what falls inside
    the image."""
    side = mask.shape[-1]
    padded = np.pad(mask, 1)
    scale = (side + 2) / side
    center_x, center_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half_w, half_h = (box[2] - box[0]) / 2 * scale, (box[3] - box[1]) / 2 * scale
    x0, y0, x1, y1 = (int(v) for v in (center_x - half_w, center_y - half_h, center_x + half_w, center_y + half_h))
    w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
    resized = F.interpolate(torch.tensor(padded, dtype=torch.float32)[None, None], size=(h, w), mode="bilinear",
                            align_corners=False)[0, 0].numpy() > 0.5
    pasted = np.zeros((height, width), dtype=bool)
    top, left, bottom, right = max(y0, 0), max(x0, 0), min(y1 + 1, height), min(x1 + 1, width)
    pasted[top:bottom, left:right] = resized[top - y0:bottom - y0, left - x0:right - x0]
    return pasted


def test_the_semantic_argmax_is_resized_as_pil_resizes_it():
    """PIL's NEAREST, the original's resize; torch's nearest moves 3,720 of these 4,800 pixels, nearest-exact 392."""
    rows, cols = np.mgrid[:64, :96]
    pattern = (rows * 7 + cols * 3) % 3
    expected = np.asarray(Image.fromarray(pattern.astype(np.uint8)).resize((80, 60), Image.Resampling.NEAREST))
    assert np.array_equal(resize_labels(pattern, (60, 80)), expected)
    torch_nearest = F.interpolate(torch.tensor(pattern)[None, None].float(), size=(60, 80), mode="nearest")[0, 0]
    assert (torch_nearest.numpy() != expected).sum() > 1000  # what it replaces
    ids, segments = panoptic_prediction(output(np.zeros((0, MASK_SIDE, MASK_SIDE)), [], [], [], pattern), THINGS,
                                        STUFF, (60, 80), stuff_area_limit=1)
    category = {0: 0} | {segment["id"]: segment["category_id"] for segment in segments}
    assert np.array_equal(np.vectorize(category.get)(ids), np.choose(expected, [0, *STUFF]))


def test_masks_are_pasted_into_their_boxes_at_the_original_size():
    """Input 30×40, original 45×61: each box scaled to the original size and its mask pasted there."""
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(2, MASK_SIDE, MASK_SIDE, generator=generator).numpy()
    boxes = np.array([[2.5, 3.0, 17.25, 14.5], [21.0, 12.75, 39.0, 29.5]])  # disjoint at both sizes
    ids, segments = panoptic_prediction(output(masks, boxes, [1, 2], [0.9, 0.8], np.zeros((30, 40), dtype=np.int64)),
                                        THINGS, STUFF, (45, 61), stuff_area_limit=1)
    scale = np.array([61 / 40, 45 / 30] * 2)
    for segment, mask, box in zip(segments, masks, boxes, strict=True):
        expected = reference_paste(mask, box * scale, 45, 61)
        assert expected.sum() > 100 and np.array_equal(ids == segment["id"], expected)
    pasted_then_resized = F.interpolate(torch.tensor(ids > 0)[None, None].float(), size=(30, 40))  # the old order
    assert not np.array_equal(F.interpolate(pasted_then_resized, size=(45, 61))[0, 0].numpy() > 0, ids > 0)


def test_instances_over_stuff_with_the_category_maps_of_both_branches():
    masks = np.zeros((2, MASK_SIDE, MASK_SIDE))
    masks[0] = 0.9
    masks[1] = 0.4  # below the mask threshold: no pixel
    semantic = np.zeros((6, 6), dtype=np.int64)
    semantic[:, 3:] = 2
    semantic[:, :3] = 1
    boxes = [[0, 0, 2, 2], [3, 3, 5, 5]]  # the paste counts both corner pixels: rows and columns 0..2
    ids, segments = panoptic_prediction(output(masks, boxes, [2, 1], [0.9, 0.8], semantic), THINGS, STUFF, (6, 6),
                                        stuff_area_limit=5)
    by_id = {segment["id"]: segment for segment in segments}
    assert [(s["category_id"], s["area"]) for s in segments] == [(2, 9), (7, 9), (9, 18)]
    assert (ids[:3, :3] == segments[0]["id"]).all() and by_id[ids[5, 0]]["category_id"] == 7
    assert by_id[ids[0, 5]]["category_id"] == 9


def perfect(model, images, targets):
    """What a perfect network outputs for ``targets``: each instance's mask cut to its box and resized to the mask
    head's 28×28, as certainties, and one-hot semantic labels."""
    outputs = []
    for target in targets:
        semantic = target["semantic"].clone()
        semantic[semantic == 255] = 0
        boxes = target["boxes"]
        masks = [F.interpolate(mask[None, None, int(y0):int(y1), int(x0):int(x1)].float(), size=(MASK_SIDE,) * 2)[0]
                 for mask, (x0, y0, x1, y1) in zip(target["masks"], boxes.tolist())]
        # the paste counts both corner pixels, so the box it is given ends on the mask's last row and column
        outputs.append({"boxes": boxes - torch.tensor([0.0, 0, 1, 1]), "labels": target["labels"],
                        "masks": torch.stack(masks) if masks else torch.zeros(0, 1, MASK_SIDE, MASK_SIDE),
                        "scores": torch.full((len(masks),), 0.99),
                        "semantic": F.one_hot(semantic, 4).permute(2, 0, 1).float()})
    return outputs


def test_a_perfect_prediction_of_the_synthetic_data_matches_every_segment():
    """Every segment found (RQ 1); the masks' round trip through 28×28 costs a few edge pixels of IoU."""
    source = SyntheticPanoptic("val", 6, 64, seed=3)
    dataset = PanopticDataset(source, PanopticTransform(64, 64, train=False))
    batches = list(DataLoader(dataset, batch_size=3, collate_fn=collate))
    served = iter(batches)

    def forward(model, images):
        return perfect(model, images, next(served)[1])

    result = evaluate_panoptic(torch.nn.Identity(), batches, source.categories, torch.device("cpu"), forward,
                               stuff_area_limit=1)
    assert result["rq"] == 1.0 and result["pq"] > 0.9 and result["semantic_miou"] == pytest.approx(1.0)
    assert result["panoptic"]["Things"]["n"] > 0 and result["panoptic"]["Stuff"]["n"] > 0
    assert any(instance_targets(*source.load(i)[1:], source.categories)["labels"].size for i in range(6))


def test_a_prediction_missing_every_instance_loses_the_things():
    source = SyntheticPanoptic("val", 4, 64, seed=3)
    batches = list(DataLoader(PanopticDataset(source, PanopticTransform(64, 64, train=False)), batch_size=2,
                              collate_fn=collate))
    served = iter(batches)

    def forward(model, images):
        outputs = perfect(model, images, next(served)[1])
        return [{**o, "labels": o["labels"][:0], "scores": o["scores"][:0], "masks": o["masks"][:0]} for o in outputs]

    result = evaluate_panoptic(torch.nn.Identity(), batches, source.categories, torch.device("cpu"), forward,
                               stuff_area_limit=1)
    assert result["pq_things"] == 0 and result["pq_stuff"] == pytest.approx(1.0)  # no instance takes stuff pixels
