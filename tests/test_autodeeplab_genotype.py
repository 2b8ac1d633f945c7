import copy
import json
from pathlib import Path

import pytest

from modeling.autodeeplab.genotype import Architecture, edge_index, num_edges, paper_architecture
from utils.errors import UserError


def test_edge_numbering_is_block_by_block():
    assert num_edges(5) == 20
    assert [edge_index(b, j) for b in range(5) for j in range(2 + b)] == list(range(20))
    assert edge_index(2, 0) == 5 and edge_index(4, 5) == 19
    with pytest.raises(ValueError):
        edge_index(1, 3)


def test_paper_architecture_matches_the_official_encoding():
    # TF hnasnet: input 0 = H^{l-1}, 1 = H^{l-2}, 2+i = block i; ops in hidden-state order.
    tf_ops = ["atrous_5x5", "separable_3x3_2", "separable_3x3_2", "atrous_3x3", "separable_3x3_2",
              "separable_3x3_2", "separable_5x5_2", "separable_5x5_2", "separable_5x5_2", "atrous_5x5"]
    tf_inputs = [1, 0, 1, 0, 3, 1, 4, 2, 3, 5]
    names = {"atrous_5x5": "dil_conv_5x5", "atrous_3x3": "dil_conv_3x3",
             "separable_3x3_2": "sep_conv_3x3", "separable_5x5_2": "sep_conv_5x5"}
    swap = {0: 1, 1: 0}
    expected = [tuple((swap.get(tf_inputs[2 * b + k], tf_inputs[2 * b + k]), names[tf_ops[2 * b + k]])
                      for k in range(2)) for b in range(5)]
    arch = paper_architecture()
    assert list(arch.cell) == expected
    assert list(arch.network_path) == [0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1]
    # the same cell in the public implementation's [edge, op index] rows (the official one, with edge 17)
    rows = sorted([edge_index(b, i), ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                                     "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"].index(op)]
                  for b, block in enumerate(arch.cell) for i, op in block)
    assert rows == [[0, 7], [1, 4], [2, 4], [3, 6], [5, 4], [8, 4], [11, 5], [13, 5], [17, 5], [19, 7]]


def test_json_round_trip(tmp_path):
    arch = Architecture((1, 2, 2, 1), (((0, "sep_conv_3x3"), (1, "skip_connect")),
                                       ((1, "dil_conv_5x5"), (2, "max_pool_3x3"))), 4, 2,
                        source={"checkpoint": "x.pth.tar", "epoch": 3})
    arch.save(tmp_path / "architecture.json")
    loaded = Architecture.load(tmp_path)
    assert loaded == arch and loaded.source == arch.source
    data = json.loads((tmp_path / "architecture.json").read_text())
    assert data["genotype"]["network_strides"] == [8, 16, 16, 8] and data["format_version"] == 2
    assert data["search_space"]["primitives"][0] == "none"


def _paper_json() -> dict:
    """The paper's architecture as a version-1 file (the fields at the top level), as written before version 2."""
    return json.loads((Path(__file__).resolve().parent / "fixtures" / "autodeeplab_paper_v1.json").read_text())


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d.pop("network_path"), "network_path"),
    (lambda d: d["network_path"].__setitem__(3, 3), "network_path[3]"),
    (lambda d: d["network_path"].__setitem__(0, 2), "network_path[0]"),
    (lambda d: d["network_path"].__setitem__(5, 7), "network_path[5]"),
    (lambda d: d["cell"][2][1].__setitem__(1, "none"), "cell[2][1]"),
    (lambda d: d["cell"][2][1].__setitem__(1, "conv_7x7"), "cell[2][1]"),
    (lambda d: d["cell"][1][0].__setitem__(0, 9), "cell[1][0]"),
    (lambda d: d["cell"][4].pop(), "cell[4]"),
    (lambda d: d.__setitem__("filter_multiplier", "eight"), "filter_multiplier"),
    (lambda d: d.__setitem__("block_multiplier", 9), "block_multiplier"),
    (lambda d: d.__setitem__("format_version", 99), "format_version"),
    (lambda d: d["search_space"].__setitem__("num_layers", 11), "network_path"),
])
def test_malformed_architecture_names_the_field(tmp_path, mutate, field):
    data = copy.deepcopy(_paper_json())
    mutate(data)
    path = tmp_path / "architecture.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=rf"{path}: field '{__import__('re').escape(field)}'"):
        Architecture.load(path)


def test_not_json_and_missing_file(tmp_path):
    path = tmp_path / "architecture.json"
    path.write_text("{ not json")
    with pytest.raises(UserError, match="not valid JSON"):
        Architecture.load(path)
    with pytest.raises(UserError, match="not found"):
        Architecture.load(tmp_path / "missing.json")
