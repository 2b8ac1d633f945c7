"""A panoptic network's outputs turned into panoptic maps and scored: hand cases, and a perfect prediction of
the synthetic panoptic data scoring 1."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dataloaders.datasets.synthetic_panoptic import SyntheticPanoptic
from dataloaders.panoptic import PanopticDataset, PanopticTransform, collate, instance_targets
from utils.panoptic_evaluation import evaluate_panoptic, panoptic_prediction

THINGS, STUFF = [1, 2], [7, 9]


def output(masks, labels, scores, semantic_labels, classes=3):
    semantic = torch.nn.functional.one_hot(torch.as_tensor(semantic_labels), classes).permute(2, 0, 1).float() * 5
    masks = torch.as_tensor(np.asarray(masks, dtype=np.float32))[:, None]
    return {"boxes": torch.zeros(len(labels), 4), "labels": torch.tensor(labels), "scores": torch.tensor(scores),
            "masks": masks, "semantic": semantic}


def test_instances_over_stuff_with_the_category_maps_of_both_branches():
    masks = np.zeros((2, 6, 6))
    masks[0, :3, :3] = 0.9
    masks[1, 3:, 3:] = 0.4  # below the mask threshold: no pixel
    semantic = np.zeros((6, 6), dtype=np.int64)
    semantic[:, 3:] = 2
    semantic[:, :3] = 1
    ids, segments = panoptic_prediction(output(masks, [2, 1], [0.9, 0.8], semantic), THINGS, STUFF, (6, 6),
                                        stuff_area_limit=5)
    by_id = {segment["id"]: segment for segment in segments}
    assert [(s["category_id"], s["area"]) for s in segments] == [(2, 9), (7, 9), (9, 18)]
    assert (ids[:3, :3] == segments[0]["id"]).all() and by_id[ids[5, 0]]["category_id"] == 7
    assert by_id[ids[0, 5]]["category_id"] == 9


def test_outputs_at_the_input_size_are_brought_to_the_original_size():
    masks = np.zeros((1, 4, 4))
    masks[0, :2, :2] = 1.0
    semantic = np.ones((4, 4), dtype=np.int64)
    ids, segments = panoptic_prediction(output(masks, [1], [0.9], semantic), THINGS, STUFF, (8, 8), stuff_area_limit=1)
    assert ids.shape == (8, 8) and (ids[:4, :4] == segments[0]["id"]).all() and segments[1]["area"] == 48


def perfect(model, images, targets):
    """What a perfect network outputs for ``targets`` (instance masks as certainties, one-hot semantic labels)."""
    outputs = []
    for target in targets:
        semantic = target["semantic"].clone()
        semantic[semantic == 255] = 0
        masks = target["masks"].float()[:, None]
        outputs.append({"boxes": target["boxes"], "labels": target["labels"], "masks": masks,
                        "scores": torch.full((len(masks),), 0.99),
                        "semantic": torch.nn.functional.one_hot(semantic, 4).permute(2, 0, 1).float()})
    return outputs


def test_a_perfect_prediction_of_the_synthetic_data_scores_one():
    source = SyntheticPanoptic("val", 6, 64, seed=3)
    dataset = PanopticDataset(source, PanopticTransform(64, 64, train=False))
    batches = list(DataLoader(dataset, batch_size=3, collate_fn=collate))
    served = iter(batches)

    def forward(model, images):
        return perfect(model, images, next(served)[1])

    result = evaluate_panoptic(torch.nn.Identity(), batches, source.categories, torch.device("cpu"), forward,
                               stuff_area_limit=1)
    assert result["pq"] == pytest.approx(1.0) and result["semantic_miou"] == pytest.approx(1.0)
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
    assert result["pq_things"] == 0 and result["pq_stuff"] == pytest.approx(1.0)
