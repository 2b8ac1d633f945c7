"""architecture.json, format version 2: one envelope naming the search system; version-1 files still load."""

import copy
import json
from pathlib import Path

import pytest

from modeling.architecture_file import (GENOTYPES, architecture_from_json, architecture_to_json, load_architecture,
                                        save_architecture)
from modeling.autodeeplab.genotype import PAPER_ARCHITECTURE_PATH, Architecture, paper_architecture
from modeling.registry import MODELS, model_for_system
from search.registry import SYSTEMS
from utils.errors import UserError

V1_PAPER = Path(__file__).resolve().parent / "fixtures" / "autodeeplab_paper_v1.json"


def test_the_shipped_paper_architecture_is_version_2_and_equals_its_version_1_form():
    shipped = json.loads(PAPER_ARCHITECTURE_PATH.read_text())
    assert (shipped["format_version"], shipped["system"]) == (2, "autodeeplab")
    assert set(shipped) == {"format", "format_version", "system", "genotype", "search_space", "source"}
    old = json.loads(V1_PAPER.read_text())
    assert old["format_version"] == 1 and "system" not in old
    v1, v2 = load_architecture(V1_PAPER), load_architecture(PAPER_ARCHITECTURE_PATH)
    assert isinstance(v1, Architecture) and v1 == v2 and v1.source == v2.source
    assert v2.network_path == (0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1)


def test_round_trip_keeps_every_field(tmp_path):
    arch = paper_architecture(32)
    save_architecture(arch, tmp_path / "architecture.json")
    again = load_architecture(tmp_path)  # a run directory holding the file
    assert again == arch and again.filter_multiplier == 32 and again.source == arch.source
    assert json.loads((tmp_path / "architecture.json").read_text()) == architecture_to_json(arch)
    assert Architecture.from_json_dict(arch.to_json_dict()) == arch


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(system="nas-fpn"), "field 'system': unknown search system 'nas-fpn'; known: autodeeplab"),
    (lambda d: d.update(format_version=3), "field 'format_version': expected 1 or 2, got 3"),
    (lambda d: d.update(format="darts"), "field 'format': expected 'autodeeplab-architecture'"),
    (lambda d: d.update(genotype=[1, 2]), "field 'genotype': expected an object"),
    (lambda d: d["genotype"]["network_path"].__setitem__(1, 2), r"field 'genotype.network_path\[1\]': level 2 follows"),
    (lambda d: d["genotype"]["cell"][0].__setitem__(1, [1, "none"]), r"field 'genotype.cell\[0\]\[1\]': op must"),
    (lambda d: d["search_space"].update(steps=4), "field 'genotype.cell': has 5 blocks but search_space.steps is 4"),
    (lambda d: d.update(source=[]), "field 'source': expected an object"),
])
def test_a_malformed_file_is_one_line_naming_the_field(change, message):
    data = copy.deepcopy(architecture_to_json(paper_architecture()))
    change(data)
    with pytest.raises(UserError, match=f"^somewhere.json: {message}"):
        architecture_from_json(data, "somewhere.json")


def test_a_version_1_error_names_the_field_as_version_1_spells_it():
    data = json.loads(V1_PAPER.read_text())
    data["network_path"] = []
    with pytest.raises(UserError, match="field 'network_path': expected a non-empty list"):
        architecture_from_json(data, "old.json")


def test_each_system_registers_its_genotype_its_network_and_its_search():
    assert GENOTYPES["autodeeplab"] is Architecture and SYSTEMS["autodeeplab"].genotype is Architecture
    assert model_for_system("autodeeplab") is MODELS["autodeeplab"]
    assert MODELS["deeplabv3plus"].genotype_system is None
    with pytest.raises(UserError, match="no network is registered for toy architectures"):
        model_for_system("toy")
