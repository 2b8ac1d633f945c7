"""Auto-Panoptic's network wired as the original's (Wu et al., NeurIPS 2020, Sec. 3 and Fig. 1): the
attention reads P3..P6 (not P2) and the semantic features, the pyramid the detector sees is modulated, the
semantic loss is the original's, and a supernet on a path computes what the searched network computes."""

import pytest
import torch
import torch.nn.functional as F

from modeling.autopanoptic.backbone import RETRAIN_WIDTHS
from modeling.autopanoptic.genotype import HEAD_OPS, PanopticGenotype, layer_choices, released
from modeling.autopanoptic.network import (PIXEL_MEAN_BGR, SEGMENTATION_WEIGHT, AutoPanoptic, BatchTopProposals,
                                           PanopticSizes, build, segmentation_loss, upsample_to)
from utils.errors import UserError

REPEATS = (2, 2, 4, 2)
SIZES = PanopticSizes(widths=(16, 32, 64, 128, 256), stage_repeats=REPEATS, fpn_channels=64, subnet_channels=32,
                      rpn_pre_nms_train=100, rpn_post_nms_train=100, rpn_pre_nms_test=100, rpn_post_nms_test=100,
                      rois_per_image=64, detections_per_image=20)
PATH = [2, 0, 1, 3, 0, 1, 2, 3, 1, 0] + [2, 3, 4, 5, 2, 3, 0] + [0, 1, 2, 0, 1, 2, 0, 1, 2]


def target(height, width):
    masks = torch.zeros(2, height, width, dtype=torch.uint8)
    masks[0, 10:50, 20:60] = 1
    masks[1, 70:100, 30:90] = 1
    semantic = torch.randint(0, 4, (height, width))
    semantic[:5] = 255
    return {"boxes": torch.tensor([[20.0, 10, 60, 50], [30, 70, 90, 100]]), "labels": torch.tensor([1, 2]),
            "masks": masks, "semantic": semantic}


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    return AutoPanoptic(2, 3, None, SIZES)


def images():
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, 128, 128, generator=generator), torch.rand(3, 112, 120, generator=generator)]


def test_training_returns_the_detection_losses_and_the_weighted_semantic_loss(supernet):
    supernet.train()
    torch.manual_seed(0)
    losses = supernet(images(), [target(128, 128), target(112, 120)], PATH)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask",
                           "loss_segmentation"}
    assert all(torch.isfinite(value) for value in losses.values())
    sum(losses.values()).backward()
    chosen = supernet.subnet[0].ops[PATH[10 + 4]]
    unchosen = supernet.subnet[0].ops[(PATH[10 + 4] + 1) % len(HEAD_OPS)]
    assert chosen[0].weight.grad is not None and unchosen[0].weight.grad is None
    supernet.zero_grad(set_to_none=True)


def test_the_semantic_loss_is_summed_cross_entropy_over_labelled_pixels_of_the_cropped_logits():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    targets = [{"semantic": torch.randint(0, 4, (8, 8))}, {"semantic": torch.randint(0, 4, (6, 5))}]
    targets[1]["semantic"][0] = 255
    total, count = 0.0, 0
    for index, (height, width) in enumerate([(8, 8), (6, 5)]):
        labels = targets[index]["semantic"]
        for y in range(height):
            for x in range(width):
                if labels[y, x] != 255:
                    total -= F.log_softmax(logits[index, :, y, x], 0)[labels[y, x]].item()
                    count += 1
    assert segmentation_loss(logits, [(8, 8), (6, 5)], targets).item() == pytest.approx(total / count, rel=1e-5)
    assert SEGMENTATION_WEIGHT == 0.3


def test_images_become_bgr_0_255_minus_the_mean_padded_to_32(supernet):
    batch = supernet.batch_images(images())
    assert batch.tensors.shape == (2, 3, 128, 128) and batch.image_sizes == [(128, 128), (112, 120)]
    first = images()[1]
    expected = first.flip(0) * 255 - torch.tensor(PIXEL_MEAN_BGR).view(3, 1, 1)
    assert torch.allclose(batch.tensors[1, :, :112, :120], expected) and not batch.tensors[1, :, 112:].any()


def test_the_attention_reads_p3_to_p6_and_the_detector_sees_the_modulated_pyramid(supernet):
    supernet.eval()
    seen = {}
    hooks = [supernet.fpn.register_forward_hook(lambda m, i, o: seen.__setitem__("fpn", list(o.values()))),
             supernet.things_to_stuff[0].register_forward_hook(lambda m, i, o: seen.__setitem__("t2s", i[0])),
             supernet.rpn.head.register_forward_hook(lambda m, i, o: seen.__setitem__("rpn", i[0]))]
    gains = []
    hooks += [layer.register_forward_hook(lambda m, i, o: gains.append(o)) for layer in supernet.stuff_to_things]
    with torch.no_grad():
        supernet(images(), path=PATH)
    for hook in hooks:
        hook.remove()
    pyramid = seen["fpn"]
    top = pyramid[0].shape[-2:]
    assert torch.equal(seen["t2s"], torch.cat([upsample_to(level, top) for level in pyramid[1:]], 1))
    assert len(seen["rpn"]) == 5
    for level, gain, modulated in zip(pyramid, gains, seen["rpn"], strict=True):
        assert gain.shape == (2, 64, 1, 1) and torch.allclose(modulated, level + gain * level)


def test_training_keeps_the_best_proposals_of_the_whole_batch_and_testing_those_of_each_image(supernet):
    """The original's FPN_POST_NMS_PER_BATCH: 4 proposals for the batch of 2 in training, not 4 per image."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

    assert isinstance(supernet.rpn, BatchTopProposals)
    settings = dict(fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
                    pre_nms_top_n={"training": 10, "testing": 10}, post_nms_top_n={"training": 4, "testing": 4},
                    nms_thresh=0.7)
    ours = BatchTopProposals(AnchorGenerator(((32,),), ((1.0,),)), RPNHead(8, 1), **settings)
    torchvision_rpn = RegionProposalNetwork(AnchorGenerator(((32,),), ((1.0,),)), RPNHead(8, 1), **settings)
    boxes = torch.tensor([[20.0 * k, 0, 20 * k + 10, 10] for k in range(5)])  # disjoint: NMS keeps every one
    logits = torch.tensor([[5.0, 1, 4, -2, 3], [2.0, -1, 0.5, -3, -4]])
    call = (boxes.expand(2, 5, 4), logits.reshape(-1, 1), [(100, 100)] * 2, [5])

    ours.train()
    kept, scores = ours.filter_proposals(*call)
    assert torch.equal(kept[0], boxes[[0, 2, 4]]) and torch.equal(kept[1], boxes[[0]])  # logits 5, 4, 3 and 2
    assert torch.allclose(torch.cat(scores), torch.tensor([5.0, 4, 3, 2]).sigmoid())
    torchvision_rpn.train()
    assert [len(image) for image in torchvision_rpn.filter_proposals(*call)[0]] == [4, 4]
    ours.eval()
    kept, _ = ours.filter_proposals(*call)
    assert torch.equal(kept[0], boxes[[0, 2, 4, 1]]) and torch.equal(kept[1], boxes[[0, 2, 1, 3]])


def copy_path_weights(supernet, network, path):
    """The supernet's weights of the ops on ``path``, under the searched network's names."""
    choices, state, layer = {}, {}, 0
    for name, module in supernet.named_modules():
        if type(module).__name__ == "Choice":
            choices[name] = layer
            layer += 1
    order = ([f"backbone.blocks.{k}" for k in range(10)] + [f"roi_heads.mask_head.layers.{k}" for k in range(4)]
             + [f"subnet.{k}" for k in range(3)] + [f"things_to_stuff.{k}" for k in range(4)]
             + [f"stuff_to_things.{k}" for k in range(5)])
    assert sorted(order) == sorted(choices)
    chosen = dict(zip(order, path))
    for name, value in supernet.state_dict().items():
        owner = next((c for c in chosen if name.startswith(c + ".ops.")), None)
        if owner is None:
            state[name] = value
        elif name.startswith(f"{owner}.ops.{chosen[owner]}."):
            state[f"{owner}.ops.0." + name[len(f"{owner}.ops.{chosen[owner]}."):]] = value
    network.load_state_dict(state)


def test_a_supernet_on_a_path_computes_what_the_searched_network_computes(supernet):
    genotype = PanopticGenotype.from_path(PATH, REPEATS)
    network = AutoPanoptic(2, 3, genotype, SIZES)
    copy_path_weights(supernet, network, PATH)
    supernet.eval(), network.eval()
    with torch.no_grad():
        ours, theirs = supernet(images(), path=PATH), network(images())
    for a, b in zip(ours, theirs, strict=True):
        assert torch.allclose(a["semantic"], b["semantic"], atol=1e-5)
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-4) and torch.equal(a["labels"], b["labels"])


def test_paths_and_genotypes_are_checked(supernet):
    with pytest.raises(ValueError, match=f"a path of {len(layer_choices(REPEATS))} ops"):
        supernet(images(), path=PATH[:-1])
    with pytest.raises(ValueError, match="stage repeats"):
        AutoPanoptic(2, 3, released("COCO_3.8G"), SIZES)


def test_the_released_coco_network_builds_at_the_paper_widths():
    network = AutoPanoptic(80, 53, released("COCO_3.8G"), PanopticSizes(widths=RETRAIN_WIDTHS))
    mask_ops = [type(layer.ops[0][0]).__name__ for layer in network.roi_heads.mask_head.layers]
    assert mask_ops == ["Conv2d", "SeparableConv", "ModulatedDeformConv", "ModulatedDeformConv"]
    assert network.roi_heads.mask_head.layers[0].ops[0][0].dilation == (2, 2)
    assert network.semantic_score.out_channels == 54 and network.roi_heads.box_predictor.cls_score.out_features == 81
    assert network.backbone.out_channels == [172, 432, 864, 1728]
    assert all(m.momentum == 0.01 for m in network.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_backbone_weights_load_from_a_local_file_with_every_key_checked(tmp_path):
    genotype = PanopticGenotype.from_path(PATH, REPEATS)
    args = {"thing_classes": 2, "stuff_classes": 3, "widths": list(SIZES.widths), "stage_repeats": list(REPEATS),
            "fpn_channels": 64, "subnet_channels": 32, "rpn_pre_nms_train": 100, "rpn_post_nms_train": 100,
            "rpn_pre_nms_test": 100, "rpn_post_nms_test": 100, "rois_per_image": 64, "detections_per_image": 20}
    torch.manual_seed(1)
    trained = build(args, genotype, None)
    torch.save(trained.backbone.state_dict(), tmp_path / "backbone.pth")
    torch.manual_seed(2)
    loaded = build(args, genotype, str(tmp_path / "backbone.pth"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.backbone.state_dict().values(),
                                                trained.backbone.state_dict().values()))
    assert not torch.equal(loaded.fpn.inner_blocks[0][0].weight, trained.fpn.inner_blocks[0][0].weight)
    torch.save({"stem.0.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="other.pth: the weights do not fit the network"):
        build(args, genotype, str(tmp_path / "other.pth"))
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="broken.pth: not a readable weights file"):
        build(args, genotype, str(tmp_path / "broken.pth"))


def test_summary_counts_the_released_coco_network_per_component(capsys):
    """train_new_model.py --summary of COCO_3.8G: parameters as the built network has them, the box head's
    Multi-Adds by hand at 1,000 proposals, and the backbone at 224×224 what the paper's "3.8G" counts once the
    ImageNet classifier's 1×1 conv to 1728 (on 7×7) and 1000-way FC are added (3.72 G by an independent count)."""
    import train_new_model
    from modeling.autopanoptic.genotype import RELEASED, RELEASED_FILES

    architecture = str(RELEASED / RELEASED_FILES["COCO_3.8G"])
    train_new_model.main(["--saved_arch_path", architecture, "--summary"])
    rows = {line[:33].strip(): line[33:].split() for line in capsys.readouterr().out.splitlines()[1:9]}
    with torch.device("meta"):
        network = AutoPanoptic(80, 53, released("COCO_3.8G"), PanopticSizes(widths=RETRAIN_WIDTHS))
    assert int(rows["total"][0].replace(",", "")) == sum(p.numel() for p in network.parameters())
    assert int(rows["backbone"][0].replace(",", "")) == sum(p.numel() for p in network.backbone.parameters())
    box = 1000 * (256 * 49 * 1024 + 1024 * 1024 + 1024 * 81 + 1024 * 4 * 81) / 1e9
    assert float(rows["box head (1000 proposals)"][1]) == pytest.approx(box, abs=0.01)
    assert sum(float(row[1]) for name, row in rows.items() if name != "total") == pytest.approx(
        float(rows["total"][1]), abs=0.05)

    train_new_model.main(["--saved_arch_path", architecture, "--summary", "--input_size", "224", "224"])
    backbone = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("backbone"))
    classifier = (1728 * 1728 * 7 * 7 + 1728 * 1000) / 1e9
    assert float(backbone.split()[-1]) + classifier == pytest.approx(3.72, abs=0.05)
