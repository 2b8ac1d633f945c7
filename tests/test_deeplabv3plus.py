import pytest
import torch
from torch import nn

from modeling.deeplabv3plus import DeepLabV3Plus
from modeling.heads import ASPP, DeepLabV3PlusDecoder
from utils.errors import UserError
from utils.torchvision_compat import import_torchvision

import_torchvision()
from torchvision.models import resnet50, resnet101  # noqa: E402 - needs import_torchvision() first


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("output_stride,layer4_size", [(16, 4), (8, 8)])
def test_odd_sizes_and_dilated_backbone(output_stride, layer4_size):
    model = DeepLabV3Plus(num_classes=5, backbone="resnet50", output_stride=output_stride).eval()
    sizes = []
    model.backbone.layer4.register_forward_hook(lambda module, inputs, output: sizes.append(output.shape[-2:]))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 65, 47)).shape == (1, 5, 65, 47)
        model(torch.randn(1, 3, 64, 64))
    assert sizes[-1] == (layer4_size, layer4_size)


def expected_count(resnet: nn.Module, rates: list[int], num_classes: int) -> int:
    backbone = sum(p.numel() for name, p in resnet.named_parameters() if not name.startswith("fc."))
    return backbone + n_params(ASPP(2048, 256, rates)) + n_params(DeepLabV3PlusDecoder(256, 256, num_classes))


@pytest.mark.parametrize("output_stride,rates", [(16, [6, 12, 18]), (8, [12, 24, 36])])
def test_resnet50_parameter_count_and_aspp_rates(output_stride, rates):
    model = DeepLabV3Plus(num_classes=19, backbone="resnet50", output_stride=output_stride)
    assert [branch[0].dilation[0] for branch in model.aspp.branches[1:]] == rates
    assert n_params(model) == expected_count(resnet50(), rates, 19)


def test_resnet101_construction_and_parameter_count():
    model = DeepLabV3Plus(num_classes=19)
    assert len(model.backbone.layer3) == 23
    # output stride 16 by default: layer3 keeps its stride, layer4 trades it for dilation 2
    assert model.backbone.layer3[0].conv2.stride == (2, 2)
    assert model.backbone.layer4[0].conv2.stride == (1, 1)
    assert model.backbone.layer4[1].conv2.dilation == (2, 2)
    assert n_params(model) == expected_count(resnet101(), [6, 12, 18], 19)


def test_every_parameter_gets_a_gradient():
    model = DeepLabV3Plus(num_classes=3, backbone="resnet50").train()
    model(torch.randn(2, 3, 64, 48)).sum().backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []
    assert not any(name.startswith(("fc.", "backbone.fc.")) for name, _ in model.named_parameters())


@pytest.mark.parametrize("kwargs", [{"output_stride": 32}, {"output_stride": 4}, {"backbone": "resnet18"}])
def test_unsupported_configurations_are_value_errors(kwargs):
    with pytest.raises(ValueError):
        DeepLabV3Plus(num_classes=3, **kwargs)


def distinctive_resnet50_state() -> dict[str, torch.Tensor]:
    """A random resnet50 state dict whose BN statistics differ from a fresh model's zeros/ones."""
    state = resnet50().state_dict()
    for key in state:
        if key.endswith(("running_mean", "running_var")):
            state[key] = torch.rand_like(state[key]) + 0.5
    return state


def test_backbone_weights_are_loaded(tmp_path):
    state = distinctive_resnet50_state()
    path = tmp_path / "r50.pth"
    torch.save(state, path)
    loaded = DeepLabV3Plus(num_classes=3, backbone="resnet50", backbone_weights=str(path)).backbone.state_dict()
    assert set(loaded) == {key for key in state if not key.startswith("fc.")}
    for key in loaded:
        torch.testing.assert_close(loaded[key], state[key], rtol=0, atol=0, msg=key)
    assert not torch.equal(loaded["layer3.2.bn1.running_mean"], torch.zeros(256))


def test_older_files_without_batchnorm_counters_load(tmp_path):
    state = {key: value for key, value in distinctive_resnet50_state().items()
             if not key.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    model = DeepLabV3Plus(num_classes=3, backbone="resnet50", output_stride=8, backbone_weights=path)
    torch.testing.assert_close(model.backbone.conv1.weight.detach(), state["conv1.weight"], rtol=0, atol=0)


def test_resnet101_weights_do_not_fit_resnet50(tmp_path):
    path = tmp_path / "r101.pth"
    torch.save(resnet101().state_dict(), path)
    with pytest.raises(UserError, match=r"r101\.pth: weights do not fit resnet50: unexpected layer3\.6\."):
        DeepLabV3Plus(num_classes=3, backbone="resnet50", backbone_weights=path)


def test_missing_keys_and_wrong_shapes_are_named(tmp_path):
    state = resnet50().state_dict()
    del state["layer4.2.conv3.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(UserError, match=r"partial\.pth: .*missing layer4\.2\.conv3\.weight"):
        DeepLabV3Plus(num_classes=3, backbone="resnet50", backbone_weights=path)
    state = resnet50().state_dict()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    torch.save(state, path)
    with pytest.raises(UserError, match=r"partial\.pth: .*wrong shape conv1\.weight \(64, 1, 7, 7\)"):
        DeepLabV3Plus(num_classes=3, backbone="resnet50", backbone_weights=path)


@pytest.mark.parametrize("content", [b"not a checkpoint", b"", None])
def test_unreadable_weights_files(tmp_path, content):
    path = tmp_path / "weights.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=r"weights\.pth: ") as raised:
        DeepLabV3Plus(num_classes=3, backbone="resnet50", backbone_weights=path)
    assert "\n" not in str(raised.value)


def test_a_file_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(UserError, match=r"checkpoint\.pth: holds a list"):
        DeepLabV3Plus(num_classes=3, backbone="resnet50", backbone_weights=path)
