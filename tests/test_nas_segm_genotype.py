"""Decoders of the RL decoder search as architecture files (system nas-segm): the released WACV ones ship with
the project, load through the same envelope, and retrain through the same scripts."""

import copy
import json

import pytest

import train_new_model
from engine.checkpoint import load_checkpoint
from modeling.architecture_file import architecture_from_json, architecture_to_json, load_architecture
from modeling.nas_segm.genotype import DecoderGenotype, released
from modeling.registry import load_trained_model, model_for_system
from tests.conftest import ROOT, TINY_DATA
from tests.test_nas_segm_decoder import CVPR_ARCH0, WACV_ARCH0, WACV_ARCH1
from utils.errors import UserError


def test_the_released_architectures_ship_as_version_2_files():
    cvpr = released("cvpr_arch0")
    assert cvpr.genotype_json() == {"space": "cvpr", "config": CVPR_ARCH0}
    assert architecture_from_json(architecture_to_json(cvpr)) == cvpr
    for name, config in (("wacv_arch0", WACV_ARCH0), ("wacv_arch1", WACV_ARCH1)):
        genotype = released(name)
        assert genotype.genotype_json() == {"space": "wacv", "config": config}
        data = json.loads((ROOT / "modeling" / "architectures" / f"nas_segm_{name}.json").read_text())
        assert (data["format_version"], data["system"]) == (2, "nas-segm")
        assert architecture_from_json(architecture_to_json(genotype)) == genotype
    assert model_for_system("nas-segm").name == "nas-segm"


@pytest.mark.parametrize("change, message", [
    (lambda g: g.update(space="nasfpn"), r"'genotype.space': expected 'wacv' or 'cvpr'"),
    (lambda g: g.update(space="cvpr"), r"'genotype.config\[0\]': expected \[op0, \[pos_a, pos_b, op_a, op_b\] x 3\]"),
    (lambda g: g["config"].pop(), r"'genotype.config': expected \[templates, structure\]"),
    (lambda g: g["config"][0].pop(), r"'genotype.config\[0\]': expected 3 templates"),
    (lambda g: g["config"][0][1].__setitem__(2, 2), r"'genotype.config\[0\]\[1\]': expected \[op1, op2, aggregation\]"),
    (lambda g: g["config"][0][2].__setitem__(0, 6), r"'genotype.config\[0\]\[2\]': .*ops in 0..5"),
    (lambda g: g["config"][1][0].__setitem__(0, 2), r"'genotype.config\[1\]\[0\]': .*inputs in 0..1"),
    (lambda g: g["config"][1][6].__setitem__(3, 4), r"'genotype.config\[1\]\[6\]': .*repeats - 1 in 0..3"),
    (lambda g: g["config"][1].pop(), r"'genotype.config\[1\]': expected 7 blocks"),
])
def test_a_malformed_decoder_genotype_names_the_field(change, message):
    data = copy.deepcopy(architecture_to_json(released("wacv_arch0")))
    change(data["genotype"])
    with pytest.raises(UserError, match=f"^arch.json: field {message}"):
        architecture_from_json(data, "arch.json")


@pytest.mark.parametrize("change, message", [
    (lambda c: c[0][1].__setitem__(0, 2), r"'genotype.config\[0\]\[1\]': .*positions in 0..1"),
    (lambda c: c[0][3].__setitem__(3, 11), r"'genotype.config\[0\]\[3\]': .*ops in 0..10"),
    (lambda c: c[1][0].__setitem__(1, 4),
     r"'genotype.config\[1\]\[0\]': expected \[input1, input2\] with inputs in 0..3"),
    (lambda c: c[1].pop(), r"'genotype.config\[1\]': expected 3 \[input1, input2\] pairs"),
])
def test_a_malformed_cvpr_genotype_names_the_field(change, message):
    data = copy.deepcopy(architecture_to_json(released("cvpr_arch0")))
    change(data["genotype"]["config"])
    with pytest.raises(UserError, match=f"^arch.json: field {message}"):
        architecture_from_json(data, "arch.json")


@pytest.mark.parametrize("name, total", [("wacv_arch0", 280_147), ("wacv_arch1", 268_235), ("cvpr_arch0", 2_629_909),
                                         ("cvpr_arch1", 2_810_133), ("cvpr_arch2", 2_853_141)])
def test_summary_prints_the_published_parameter_count(run_in_process, name, total):
    path = ROOT / "modeling" / "architectures" / f"nas_segm_{name}.json"
    result = run_in_process("train_new_model.py", "--saved_arch_path", str(path),
                            "--num_classes", "21" if name.startswith("cvpr") else "19", "--summary")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(total)
    assert ("cell 2" if name.startswith("cvpr") else "block 6") in result.stdout
    assert "encoder (MobileNetV2)" in result.stdout


def test_a_released_decoder_retrains_and_loads_through_the_same_scripts(tmp_path):
    path = ROOT / "modeling" / "architectures" / "nas_segm_wacv_arch1.json"
    run = train_new_model.main(TINY_DATA + ["--saved_arch_path", str(path), "--epochs", "1", "--crop_size", "32",
                                            "--out-dir", str(tmp_path / "run")])
    state = load_checkpoint(run / "model_best.pth.tar", stage="retrain")
    assert (state["system"], state["args"]["model"]) == ("nas-segm", "nas-segm")
    assert load_architecture(run) == released("wacv_arch1")
    model, _, _ = load_trained_model(run / "model_best.pth.tar")
    assert sum(p.numel() for p in model.parameters()) == 268_235 - 19 * (64 * 9 + 1) + 4 * (64 * 9 + 1)  # 4 classes
    with pytest.raises(UserError, match="--drop_path_prob: does not apply to nas-segm architectures"):
        train_new_model.main(TINY_DATA + ["--saved_arch_path", str(path), "--drop_path_prob", "0.1"])
