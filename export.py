"""Export a trained network for deployment without this project or PyTorch.

    python export.py --ckpt run/cityscapes/retrain/experiment_0/model_best.pth.tar --format onnx \
        --input-size 1024 2048

Writes ``model_best.onnx`` beside the checkpoint: input ``image``, float32 [N, 3, H, W], RGB scaled to
0..1 then normalised with the ImageNet mean and std; output ``logits``, float32 [N, classes, H, W]. The
batch size N is free, H and W are the exported ones. The model's ``metadata_props`` hold the class names,
palette, input size, mean, std and architecture. Before the file is written, onnxruntime's output is
checked against PyTorch's.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
from torch import nn

from config_utils.export_args import MIN_OPSET, export_parser
from dataloaders.transforms import IMAGENET_MEAN, IMAGENET_STD
from engine.cli import run_cli
from modeling.registry import checkpoint_classes, checkpoint_model, load_trained_model
from utils.atomic import atomic_path
from utils.errors import UserError
from utils.output_path import check_output_path

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
# Largest allowed |onnxruntime - PyTorch|, relative to the largest |logit| where that exceeds 1: float32 carries
# about 7 digits, so logits in the thousands (a briefly trained network) differ by more than 1e-4 in the last digit.
MAX_DIFFERENCE = 1e-4
CHECK_BATCH = 2  # also the example batch: torch.export would fix a batch of 1 as a constant


def require_onnx_packages() -> None:
    """Fail before the slow export when the optional export packages are missing."""
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(f"ONNX export needs {', '.join(ONNX_PACKAGES)} ({name} is not installed): "
                            "pip install -r requirements-export.txt") from None


def default_output_path(ckpt: Path) -> Path:
    """``model_best.pth.tar`` -> ``model_best.onnx`` in the same folder."""
    name = ckpt.name.removesuffix(".tar")
    for suffix in (".pth", ".pt"):
        name = name.removesuffix(suffix)
    return ckpt.with_name(f"{name}.onnx")


def onnx_metadata(checkpoint: dict, input_size: tuple[int, int], source: str) -> dict[str, str]:
    """What a deployer needs besides the graph: how to preprocess, how to name and colour the classes, and
    which network it is (the registered model's own description: architecture or backbone)."""
    names, palette = checkpoint_classes(checkpoint)
    spec, genotype = checkpoint_model(checkpoint, source)
    return {
        "class_names": json.dumps(names),
        "palette": json.dumps(palette.tolist()),
        "input_size": json.dumps(list(input_size)),
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
        "preprocessing": "RGB, scaled to [0, 1], then (x - mean) / std per channel; layout NCHW, float32",
        "output": "logits [N, classes, H, W]; the argmax over axis 1 is the class id",
        **spec.export_metadata(checkpoint["args"], genotype),
    }


def export_onnx(model: nn.Module, input_size: tuple[int, int], opset: int) -> torch.onnx.ONNXProgram:
    """The network as ONNX with a free batch dimension, through torch.export (the maintained exporter)."""
    example = torch.zeros(CHECK_BATCH, 3, *input_size)
    program = torch.onnx.export(model, (example,), dynamo=True, input_names=["image"], output_names=["logits"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset,
                                verbose=False)
    written = program.model.opset_imports[""]
    if written != opset:
        raise UserError(f"--opset {opset}: the exporter could not convert the model to it (it wrote opset "
                        f"{written}); use {written}")
    return program


@torch.no_grad()
def max_difference_to_pytorch(path: Path, model: nn.Module, input_size: tuple[int, int]) -> float:
    """Largest |onnxruntime - PyTorch| on one random batch, divided by the largest |logit| where that exceeds 1, so
    a wrong export never reaches a deployer and float32 rounding of large logits is not mistaken for one."""
    import onnxruntime

    generator = torch.Generator().manual_seed(0)
    image = torch.randn(CHECK_BATCH, 3, *input_size, generator=generator)
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own exception types derive from Exception only
        raise UserError(f"onnxruntime {onnxruntime.__version__} cannot load the exported model "
                        f"({str(error).strip().splitlines()[0]}); try a lower --opset or a newer onnxruntime") \
            from None
    logits = session.run(["logits"], {"image": image.numpy()})[0]
    reference = model(image)
    return float(abs(torch.from_numpy(logits) - reference).max() / max(1.0, float(reference.abs().max())))


def main(argv: list[str] | None = None) -> Path:
    args = export_parser().parse_args(argv)
    if args.opset < MIN_OPSET:
        raise UserError(f"--opset {args.opset}: the exporter writes opset {MIN_OPSET} or newer")
    ckpt = Path(args.ckpt)
    out = check_output_path("--out", args.out or default_output_path(ckpt), folder=False)
    require_onnx_packages()
    model, checkpoint, _ = load_trained_model(ckpt, "cpu")
    input_size = tuple(args.input_size)
    metadata = onnx_metadata(checkpoint, input_size, args.ckpt)
    program = export_onnx(model, input_size, args.opset)
    program.model.metadata_props.update(metadata)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as temporary:
        program.save(temporary, external_data=False)
        difference = max_difference_to_pytorch(temporary, model, input_size)
        print(f"onnxruntime vs PyTorch on a random batch of {CHECK_BATCH}: max difference {difference:.3g} (of the "
              "largest logit, where above 1)")
        if not difference <= MAX_DIFFERENCE:
            raise UserError(f"the exported model differs from PyTorch by up to {difference:.3g} (more than "
                            f"{MAX_DIFFERENCE:g}, relative to the largest logit where above 1); nothing was written")
    height, width = input_size
    print(f"exported {ckpt} to {out} (opset {args.opset}, input 'image' [N, 3, {height}, {width}], "
          f"output 'logits' [N, {checkpoint['args']['num_classes']}, {height}, {width}])")
    return out


if __name__ == "__main__":
    run_cli(main, "export.py")
