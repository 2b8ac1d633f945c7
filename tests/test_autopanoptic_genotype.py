"""The Auto-Panoptic genotype: the original's released files read exactly, the version-2 file round trip, and a
malformed file named by its field."""

import json
import math
import re

import pytest

from modeling.architecture_file import architecture_from_json, load_architecture, save_architecture
from modeling.autopanoptic.genotype import (BACKBONE_OPS, HEAD_OPS, INTER_OPS, RELEASED, RELEASED_FILES,
                                            PanopticGenotype, layer_choices, released)
from utils.errors import UserError

COCO_FILE = RELEASED / RELEASED_FILES["COCO_3.8G"]


def test_the_released_coco_file_is_the_originals_and_decodes_as_published():
    text = COCO_FILE.read_bytes()
    assert len(text) == 151 and not text.endswith(b"\n")
    genotype = released("COCO_3.8G")
    assert (len(genotype.backbone), len(genotype.head), len(genotype.inter)) == (40, 7, 9)
    stages = genotype.describe().splitlines()[1:5]
    assert stages[0].endswith("X3 S7 S3 S7 S5 X3 S7 S3") and stages[3].endswith("S5 S7 S3 S7 S3 S7 X3 S3")
    assert [sum(op == k for op in genotype.backbone) for k in range(4)] == [11, 10, 11, 8]
    assert HEAD_OPS[genotype.mask_head[0]] == "atrous_conv_3x3" and HEAD_OPS[genotype.subnet[2]] == "dw_conv_3x3"
    assert INTER_OPS[genotype.stuff_to_things[3]] == "se_r6"  # the attention on P5: the paper's r16
    assert genotype.original_json().encode() == text


def test_the_released_ade_file_reads():
    genotype = released("ADE_3.8G")
    assert genotype.head == (2, 0, 3, 3, 3, 2, 3) and genotype.inter == (2, 0, 1, 1, 0, 0, 1, 0, 2)
    assert genotype.original_json().encode() == (RELEASED / RELEASED_FILES["ADE_3.8G"]).read_bytes()


def test_version_2_file_round_trip_with_a_scaled_down_backbone(tmp_path):
    genotype = PanopticGenotype.from_path(list(range(4)) * 2 + [1, 2] + [5, 4, 3, 2, 1, 0, 5] + [0, 1, 2] * 3,
                                          (2, 2, 4, 2), {"cycle": 3})
    save_architecture(genotype, tmp_path / "architecture.json")
    loaded = load_architecture(tmp_path, expected=PanopticGenotype)
    assert loaded == genotype and loaded.source == {"cycle": 3} and loaded.stage_repeats == (2, 2, 4, 2)
    assert loaded.path == genotype.path and len(loaded.path) == len(layer_choices((2, 2, 4, 2)))


def test_the_path_covers_every_choice_layer_with_a_window_of_twelve():
    choices = layer_choices()
    assert len(choices) == 56 and choices.count(4) == 40 and choices.count(6) == 7 and choices.count(3) == 9
    assert math.lcm(*choices) == 12
    assert (len(BACKBONE_OPS), len(HEAD_OPS), len(INTER_OPS)) == (4, 6, 3)


@pytest.mark.parametrize("edit, field", [
    (lambda d: d[0]["backbone"].pop(), "'[0].backbone': expected 40 integers in 0..3"),
    (lambda d: d[0]["head"].__setitem__(2, 6), "'[0].head': expected 7 integers in 0..5"),
    (lambda d: d[0]["inter"].__setitem__(0, True), "'[0].inter': expected 9 integers in 0..2"),
])
def test_a_malformed_original_file_names_the_field(edit, field):
    data = json.loads(COCO_FILE.read_text())
    edit(data)
    with pytest.raises(UserError, match=re.escape(f"COCO_3.8G: field {field}")):
        architecture_from_json(data, "COCO_3.8G")


def test_a_malformed_version_2_file_names_the_field(tmp_path):
    genotype = released("COCO_3.8G")
    save_architecture(genotype, tmp_path / "architecture.json")
    data = json.loads((tmp_path / "architecture.json").read_text())
    data["genotype"]["stage_repeats"] = [8, 8, 16]
    with pytest.raises(UserError, match="field 'genotype.stage_repeats': expected 4 positive integers"):
        architecture_from_json(data, "architecture.json")
    data["genotype"]["stage_repeats"] = [8, 8, 8, 8]
    with pytest.raises(UserError, match="field 'genotype.backbone': expected 32 integers"):
        architecture_from_json(data, "architecture.json")


def test_a_list_that_is_no_known_format_is_refused():
    with pytest.raises(UserError, match="expected a JSON object at the top level"):
        architecture_from_json([{"backbone": []}], "x.json")
    with pytest.raises(UserError, match="not a released Auto-Panoptic architecture"):
        released("VOC_3.8G")
