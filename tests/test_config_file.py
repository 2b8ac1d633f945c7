"""--config FILE: flag values from a JSON file (a run's own args.json replays the run), under the command line."""

import json

import pytest

import train_new_model
from config_utils.decode_args import decode_parser
from config_utils.retrain_args import retrain_parser
from config_utils.search_args import search_parser
from engine.run_dir import RunDir, read_jsonl
from tests.conftest import TINY_RETRAIN
from utils.errors import UserError


def write(tmp_path, data, name="experiment.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_file_values_replace_defaults_and_the_command_line_overrides_them(tmp_path):
    config = write(tmp_path, {"epochs": 7, "lr": 0.01, "dataset": "cityscapes", "sync_bn": False,
                              "scale_range": [0.75, 1.5], "model": "deeplabv3plus", "output_stride": 8})
    args = retrain_parser().parse_args(["--config", config, "--epochs", "9"])
    assert (args.epochs, args.base_lr, args.dataset, args.sync_bn, args.scale_range) == (9, 0.01, "cityscapes",
                                                                                          False, [0.75, 1.5])
    assert (args.model, args.output_stride, args.config) == ("deeplabv3plus", 8, config)
    assert retrain_parser().parse_args([]).epochs is None  # another parser is untouched
    search = search_parser().parse_args(["--config", write(tmp_path, {"num_layers": 4, "steps": 3}, "s.json")])
    assert (search.num_layers, search.steps) == (4, 3)
    decode = decode_parser().parse_args(["--config", write(tmp_path, {"dataset": "pascal"}, "d.json")])
    assert decode.dataset == "pascal"


@pytest.mark.parametrize("data, message", [
    ({"epoch": 3}, r"unknown key 'epoch': train_new_model.py has no --epoch flag"),
    ({"epochs": "three"}, r"key 'epochs': invalid literal"),
    ({"epochs": 0}, r"key 'epochs': expected a positive integer, got 0"),
    ({"epochs": 2.5}, r"key 'epochs': invalid literal"),
    ({"sync_bn": "yes"}, r"key 'sync_bn': expected true or false, got \"yes\""),
    ({"scale_range": 0.5}, r"key 'scale_range': expected a list, got 0.5"),
    ({"scale_range": [0.5]}, r"key 'scale_range': expected 2 values, got 1"),
    ({"model": "unet"}, r"key 'model': \"unet\" is not one of"),
    ({"dataset": 3}, r"key 'dataset': expected a string, got 3"),
    ({"momentum": None}, r"key 'momentum': expected a value, got null"),
])
def test_an_unknown_key_or_a_wrong_type_names_the_key_and_the_file(tmp_path, data, message):
    config = write(tmp_path, data)
    with pytest.raises(UserError, match=f"^{config}: {message}"):
        retrain_parser().parse_args(["--config", config])


def test_unreadable_files_are_one_line(tmp_path):
    with pytest.raises(UserError, match="--config .*missing.json: file not found"):
        retrain_parser().parse_args(["--config", str(tmp_path / "missing.json")])
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(UserError, match="not a readable JSON file"):
        retrain_parser().parse_args(["--config", str(tmp_path / "broken.json")])
    with pytest.raises(UserError, match="expected a JSON object of flag values"):
        retrain_parser().parse_args(["--config", write(tmp_path, [1, 2])])
    with pytest.raises(UserError, match="YAML files need PyYAML"):
        retrain_parser().parse_args(["--config", str(tmp_path / "experiment.yaml")])


@pytest.mark.slow
def test_a_runs_args_json_replays_it(tmp_path):
    first = RunDir(train_new_model.main(TINY_RETRAIN + ["--epochs", "1", "--out-dir", str(tmp_path / "first")]))
    replay = RunDir(train_new_model.main(["--config", str(first.args), "--out-dir", str(tmp_path / "replay")]))
    original, again = read_jsonl(first.metrics), read_jsonl(replay.metrics)
    assert again[0]["train_loss"] == original[0]["train_loss"] and again[0]["val_miou"] == original[0]["val_miou"]
    replayed = json.loads(replay.args.read_text())
    assert {k: v for k, v in replayed.items() if k not in ("argv", "out_dir", "config")} == {
        k: v for k, v in json.loads(first.args.read_text()).items() if k not in ("argv", "out_dir", "config")}
