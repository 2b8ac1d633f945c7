"""The decoder search's MobileNetV2 encoder: the original's exact construction (the original's src/nn/encoders.py)."""

import pytest
import torch
from PIL import Image

from modeling.nas_segm.encoder import CVPR_TAPS, WACV_TAPS, MobileNetV2Encoder, load_encoder_weights
from utils.errors import UserError
from utils.torchvision_compat import import_torchvision


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("taps, expected, torchvision_stages", [(WACV_TAPS, 56_576, 7), (CVPR_TAPS, 1_812_800, 18)])
def test_exact_parameter_counts_and_the_one_difference_from_torchvision(taps, expected, torchvision_stages):
    encoder = MobileNetV2Encoder(taps)
    assert count(encoder) == expected
    reference = import_torchvision().models.mobilenet_v2(weights=None).features[:torchvision_stages]
    assert count(encoder) - count(reference) == 32 * 32 + 2 * 32  # the t=1 block's kept 1x1 expansion + BN
    assert count(encoder.layer1) == count(reference[0])
    assert count(encoder.layer2) - count(reference[1]) == 1_088
    for stage, (first, last) in enumerate(TORCHVISION_STAGES[: taps[-1]], start=1):  # every other stage: equal
        assert count(getattr(encoder, f"layer{stage + 2}")) == count(reference[first:last])


TORCHVISION_STAGES = [(2, 4), (4, 7), (7, 11), (11, 14), (14, 17), (17, 18)]  # features[...] of stages 1..6


def test_features_have_the_stated_channels_and_strides_and_the_original_names():
    encoder = MobileNetV2Encoder(CVPR_TAPS).eval()
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 96, 128))
    assert [(f.shape[1], 96 // f.shape[2], 128 // f.shape[3]) for f in features] == [(24, 4, 4), (32, 8, 8),
                                                                                      (96, 16, 16), (320, 32, 32)]
    assert [(i.channels, i.stride) for i in encoder.feature_info] == [(24, 4), (32, 8), (96, 16), (320, 32)]
    names = set(encoder.state_dict())
    assert {"layer1.0.weight", "layer2.0.conv.0.weight", "layer8.0.conv.7.running_var"} <= names
    assert not hasattr(MobileNetV2Encoder(WACV_TAPS), "layer5")  # built only up to the deepest tap
    with pytest.raises(ValueError, match="taps must be increasing"):
        MobileNetV2Encoder((2, 1))


def test_residuals_where_the_shape_allows():
    encoder = MobileNetV2Encoder(WACV_TAPS)
    assert [block.residual for block in encoder.layer4] == [False, True, True]  # 24 -> 32 at stride 2, then 32 -> 32
    assert encoder.layer2[0].residual is False  # 32 -> 16


def features(encoder, x):
    with torch.no_grad():
        return encoder.eval()(x)


@pytest.mark.parametrize("wrap", [lambda s: s, lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()},
                                                          "epoch": torch.tensor(3)}, lambda s: {"model": s}],
                         ids=["plain", "state_dict-module", "model"])
def test_our_layout_round_trips(tmp_path, wrap):
    torch.manual_seed(0)
    source = MobileNetV2Encoder(CVPR_TAPS)
    source.train()(torch.randn(2, 3, 64, 64))  # non-trivial BN running statistics
    torch.save(wrap(source.state_dict()), tmp_path / "encoder.pt")
    target = MobileNetV2Encoder(CVPR_TAPS)
    assert load_encoder_weights(target, tmp_path / "encoder.pt") == "our layout"
    x = torch.randn(1, 3, 64, 64)
    for ours, theirs in zip(features(target, x), features(source, x), strict=True):
        assert torch.equal(ours, theirs)


def test_a_cvpr_file_loads_into_a_wacv_encoder(tmp_path):
    torch.manual_seed(0)
    cvpr = MobileNetV2Encoder(CVPR_TAPS)
    torch.save(cvpr.state_dict(), tmp_path / "cvpr.pt")
    wacv = MobileNetV2Encoder(WACV_TAPS)
    assert load_encoder_weights(wacv, str(tmp_path / "cvpr.pt")) == "our layout"
    x = torch.randn(1, 3, 64, 64)
    for ours, theirs in zip(features(wacv, x), features(cvpr, x)[:2], strict=True):
        assert torch.equal(ours, theirs)


def randomised_torchvision_mobilenet_v2():
    torch.manual_seed(0)
    model = import_torchvision().models.mobilenet_v2(weights=None)
    for module in model.modules():  # random BN statistics and affine, so a wrongly mapped BN shows
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.normal_(module.bias, 0, 0.1)
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("taps, depths", [(CVPR_TAPS, (4, 7, 14, 18)), (WACV_TAPS, (4, 7))])
def test_torchvision_weights_compute_what_torchvision_computes(tmp_path, taps, depths):
    reference = randomised_torchvision_mobilenet_v2()
    torch.save(reference.state_dict(), tmp_path / "mobilenet_v2.pth")  # with features.18 and the classifier
    encoder = MobileNetV2Encoder(taps)
    assert load_encoder_weights(encoder, tmp_path / "mobilenet_v2.pth") == "torchvision MobileNetV2 layout"
    x = torch.randn(1, 3, 64, 64)
    ours = features(encoder, x)
    with torch.no_grad():
        theirs = [reference.features[:depth](x) for depth in depths]
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()  # the t=1 block's identity BN divides by sqrt(1 + eps)
    block = encoder.layer2[0].conv  # the kept t=1 expansion became the identity
    assert torch.equal(block[0].weight[:, :, 0, 0], torch.eye(32))


def load_error(encoder, path):
    with pytest.raises(UserError) as caught:
        load_encoder_weights(encoder, path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"--encoder-weights {path}: ")
    return message


def test_unusable_files_give_one_line_user_errors(tmp_path):
    encoder = MobileNetV2Encoder(WACV_TAPS)
    assert "no such file" in load_error(encoder, tmp_path / "missing.pt")
    Image.new("RGB", (4, 4)).save(tmp_path / "image.png")
    assert "not a readable" in load_error(encoder, tmp_path / "image.png")
    (tmp_path / "garbage.pt").write_bytes(b"PK\x03\x04 not really a zip archive")
    assert "not a readable" in load_error(encoder, tmp_path / "garbage.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    assert "not a state dict" in load_error(encoder, tmp_path / "tensor.pt")
    torch.save({"head.weight": torch.zeros(3), "head.bias": torch.zeros(3)}, tmp_path / "unrelated.pt")
    message = load_error(encoder, tmp_path / "unrelated.pt")
    assert "head.weight" in message and "layer1" in message and "features" in message
    ours = encoder.state_dict()
    ours["layer3.1.conv.3.weight"] = torch.zeros(144, 1, 5, 5)
    torch.save(ours, tmp_path / "wrong_shape.pt")
    message = load_error(encoder, tmp_path / "wrong_shape.pt")
    assert "layer3.1.conv.3.weight" in message and "[144, 1, 5, 5]" in message and "[144, 1, 3, 3]" in message
    ours = encoder.state_dict()
    ours["layer3.1.conv.9.weight"] = torch.zeros(1)
    torch.save(ours, tmp_path / "extra.pt")
    assert "unexpected key layer3.1.conv.9.weight" in load_error(encoder, tmp_path / "extra.pt")
    torch.save(encoder.state_dict(), tmp_path / "wacv.pt")  # too shallow for a CVPR encoder
    assert "missing key layer5." in load_error(MobileNetV2Encoder(CVPR_TAPS), tmp_path / "wacv.pt")


def test_torchvision_files_with_a_missing_or_misshapen_key_are_refused(tmp_path):
    state = import_torchvision().models.mobilenet_v2(weights=None).state_dict()
    encoder = MobileNetV2Encoder(WACV_TAPS)
    del state["features.5.conv.1.1.running_var"]
    torch.save(state, tmp_path / "missing.pth")
    assert "missing key features.5.conv.1.1.running_var" in load_error(encoder, tmp_path / "missing.pth")
    torch.save({k: v for k, v in state.items() if not k.startswith("features.5.")}, tmp_path / "deeper.pth")
    load_encoder_weights(MobileNetV2Encoder((0,)), tmp_path / "deeper.pth")  # blocks beyond its depth: not needed
    state = import_torchvision().models.mobilenet_v2(weights=None).state_dict()
    state["features.1.conv.1.weight"] = torch.zeros(16, 32, 3, 3)
    torch.save(state, tmp_path / "shape.pth")
    message = load_error(encoder, tmp_path / "shape.pth")
    assert "features.1.conv.1.weight" in message and "layer2.0.conv.6.weight" in message
