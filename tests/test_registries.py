"""A new search system joins by registering a genotype, a network and a search strategy: the stage scripts,
the training loop, decoding, evaluation and checkpoints then serve it unchanged. Shown with a toy system."""

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn

import decode_autodeeplab
import evaluate as evaluate_script
import train_new_model
from dataloaders import DATASETS
from engine.checkpoint import load_checkpoint, save_checkpoint
from modeling.architecture_file import GENOTYPES, load_architecture, register_genotype, save_architecture
from modeling.registry import MODELS, ModelSpec, load_trained_model, register_model
from search.registry import SYSTEMS, SearchSystem, register_system
from tests.conftest import TINY_DATA
from utils.errors import UserError


@dataclass(frozen=True)
class ToyGenotype:
    """A one-number architecture: the width of a two-layer network."""

    system: ClassVar[str] = "toy"
    width: int
    source: dict[str, Any] = field(default_factory=dict, compare=False)

    def genotype_json(self):
        return {"width": self.width}

    def search_space_json(self):
        return {"widths": [2, 4, 8]}

    @classmethod
    def from_json(cls, genotype, search_space, source, origin, prefix):
        if not isinstance(genotype, dict) or genotype.get("width") not in (2, 4, 8):
            raise UserError(f"{origin}: field '{prefix}width': expected 2, 4 or 8")
        return cls(genotype["width"], source)

    def describe(self):
        return f"toy network of width {self.width}"


class ToyNet(nn.Module):
    def __init__(self, width, num_classes):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                    nn.Conv2d(width, num_classes, 1))

    def forward(self, x):
        return self.layers(x)


def draw(genotype):
    figure, axes = plt.subplots()
    axes.set_title(genotype.describe())
    return figure


def never_called(*args):
    raise AssertionError("the toy search is not run here")


@pytest.fixture
def toy_system():
    register_genotype(ToyGenotype)
    register_model(ModelSpec("toy", build=lambda args, genotype, weights: ToyNet(genotype.width, args["num_classes"]),
                             describe=lambda args, genotype: genotype.describe(),
                             export_metadata=lambda args, genotype: {"model": "toy"}, genotype_system="toy"))
    register_system(SearchSystem("toy", ToyGenotype, search=never_called,
                                 decode=lambda state, path: ToyGenotype(int(state["model"]["width"]), {"epoch": 0}),
                                 draw=draw))
    yield
    del GENOTYPES["toy"], MODELS["toy"], SYSTEMS["toy"]


def test_a_registered_systems_search_checkpoint_decodes_to_its_architecture_file(tmp_path, toy_system):
    save_checkpoint({"system": "toy", "stage": "search", "epoch": 0, "args": {}, "model": {"width": torch.tensor(4)}},
                    tmp_path / "checkpoint.pth.tar")
    genotype = decode_autodeeplab.main(["--resume", str(tmp_path)])  # a run directory works too
    assert genotype == ToyGenotype(4)
    data = json.loads((tmp_path / "architecture.json").read_text())
    assert (data["system"], data["genotype"], data["source"]) == ("toy", {"width": 4}, {"epoch": 0})
    assert load_architecture(tmp_path) == ToyGenotype(4) and (tmp_path / "architecture.png").is_file()


def test_a_registered_systems_architecture_retrains_and_evaluates_through_the_same_scripts(tmp_path, toy_system):
    save_architecture(ToyGenotype(8), tmp_path / "toy.json")
    run = train_new_model.main(TINY_DATA + ["--saved_arch_path", str(tmp_path / "toy.json"), "--epochs", "1",
                                            "--out-dir", str(tmp_path / "retrain")])
    state = load_checkpoint(run / "model_best.pth.tar", stage="retrain")
    assert (state["system"], state["args"]["model"], state["architecture"]["genotype"]) == ("toy", "toy", {"width": 8})
    assert "toy network of width 8" in (run / "log.txt").read_text()
    model, _, spec = load_trained_model(run / "model_best.pth.tar")
    assert isinstance(model, ToyNet) and model.layers[0].out_channels == 8 and spec.name == "toy"
    report = evaluate_script.main(["--ckpt", str(run / "model_best.pth.tar")])
    assert json.loads((report / "metrics.json").read_text())["miou"] >= 0


def test_registries_refuse_a_second_entry_and_a_mismatched_system(toy_system):
    with pytest.raises(ValueError, match="search system 'toy' is already registered"):
        register_genotype(ToyGenotype)
    with pytest.raises(ValueError, match="model 'toy' is already registered"):
        register_model(MODELS["toy"])
    with pytest.raises(ValueError, match="its genotype class names system 'toy'"):
        register_system(SearchSystem("other", ToyGenotype, never_called, never_called, draw))


def test_every_dataset_states_the_tasks_its_labels_serve():
    panoptic = {"coco_panoptic", "synthetic_panoptic", "synthetic_panoptic_context"}
    assert {name: info.tasks for name, info in DATASETS.items()} == {
        name: ("panoptic",) if name in panoptic else ("semantic",) for name in DATASETS}
