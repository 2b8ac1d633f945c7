"""--amp: autocast in the forward passes, float32 architecture parameters and distribution, training runs."""

import json

import pytest
import torch

import train_autodeeplab
import train_new_model
from engine.checkpoint import load_checkpoint
from engine.precision import PrecisionStep, amp_dtype
from modeling.autodeeplab.model_search import AutoDeepLabSearch

CPU = torch.device("cpu")


def test_dtype_choice():
    assert amp_dtype("auto", CPU) == torch.bfloat16
    assert amp_dtype("auto", torch.device("cuda")) == torch.float16
    assert amp_dtype("bf16", torch.device("cuda")) == torch.bfloat16
    assert amp_dtype("fp16", CPU) == torch.float16  # CPU autocast runs float16 too: the scaler path is testable


def test_autocast_runs_convolutions_in_bf16_but_keeps_the_architecture_in_float32():
    torch.manual_seed(0)
    model = AutoDeepLabSearch(3, 3, filter_multiplier=2, block_multiplier=2, steps=2)
    conv_dtypes, softmax_dtypes = set(), set()
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda module, inputs, output: conv_dtypes.add(output.dtype))
    original_softmax = torch.softmax

    def recording_softmax(tensor, *args, **kwargs):
        result = original_softmax(tensor, *args, **kwargs)
        softmax_dtypes.add(result.dtype)
        return result

    precision = PrecisionStep(True, CPU, torch.bfloat16)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "softmax", recording_softmax)
        with precision.autocast():
            logits = model(torch.randn(2, 3, 24, 24))
    assert conv_dtypes == {torch.bfloat16}
    assert softmax_dtypes == {torch.float32}  # α's softmax (and β's normalisation) ran in float32
    loss = torch.nn.functional.cross_entropy(logits.float(), torch.randint(0, 3, (2, 24, 24)))
    precision.backward(loss, inputs=model.arch_parameters())
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in model.arch_parameters())
    assert all(b.dtype == torch.float32 for b in model.buffers() if b.is_floating_point())


def test_loss_scaling_only_for_float16_and_its_state_travels_with_the_checkpoint():
    assert PrecisionStep(True, CPU, torch.bfloat16).state_dict() == {}  # bf16 needs no loss scaling
    float16 = PrecisionStep(True, CPU, torch.float16)
    assert float16.state_dict()["scale"] == 65536.0
    resumed = PrecisionStep(True, CPU, torch.float16)
    resumed.load_state_dict(float16.state_dict() | {"scale": 1024.0})
    assert resumed.state_dict()["scale"] == 1024.0


def test_float16_step_unscales_before_clipping_and_skips_an_overflowed_step():
    assert PrecisionStep(False, CPU, torch.float32).step(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))]))
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([parameter], lr=0.5)
    precision = PrecisionStep(True, CPU, torch.float16)
    precision.backward((parameter * torch.tensor([3.0, 4.0])).sum())  # true gradient (3, 4): norm 5
    assert precision.step(optimizer, [parameter], clip_norm=1.0)
    # clipped after unscaling: the gradient becomes (0.6, 0.8), not the scaled one clipped then unscaled
    assert parameter.tolist() == pytest.approx([-0.3, -0.4])
    assert parameter.grad is None and precision.state_dict()["scale"] == 65536.0

    precision.backward((parameter * torch.tensor([float("inf"), 1.0])).sum())
    assert not precision.step(optimizer, [parameter], clip_norm=1.0)
    assert parameter.tolist() == pytest.approx([-0.3, -0.4])  # an overflowed step changes nothing
    assert precision.state_dict()["scale"] == 32768.0  # and halves the scale


DATA = ["--synthetic_train_samples", "8", "--synthetic_val_samples", "2", "--synthetic_size", "36",
        "--batch_size", "2", "--crop_size", "32", "--filter_multiplier", "2", "--epochs", "2", "--amp"]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("module, extra, scalers", [
    (train_autodeeplab, ["--num_layers", "3", "--steps", "2", "--block_multiplier", "2", "--alpha_epoch", "0"],
     ["weight_scaler", "arch_scaler"]),
    (train_new_model, [], ["scaler"]),
], ids=["search", "retrain"])
def test_a_few_steps_under_amp(tmp_path, module, extra, scalers, dtype):
    run_dir = module.main(DATA + extra + ["--amp_dtype", dtype, "--out-dir", str(tmp_path / "run")])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in records)
    expected = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    assert f"amp {expected}" in (run_dir / "log.txt").read_text()
    state = load_checkpoint(run_dir / "checkpoint.pth.tar")
    assert all(value.dtype == torch.float32 for value in state["model"].values() if value.is_floating_point())
    for name in scalers:  # float16 checkpoints its loss scale; bfloat16 has none to keep
        assert ("scale" in state[name]) == (dtype == "fp16"), name
