"""Auto-Panoptic's search as a user runs it: the supernet trained with fair paths and per-group learning rates,
resumed exactly from the middle of an accumulation window, then the greedy path search, resumed exactly from a
partial cache."""

import json

import pytest
import torch

import decode_autodeeplab
import train_autopanoptic
from modeling.architecture_file import load_architecture
from modeling.autopanoptic.genotype import PanopticGenotype, layer_choices
from modeling.autopanoptic.network import AutoPanoptic
from search import autopanoptic
from search.one_shot import rank_scores
from tests.conftest import SignalAtStep
from utils.checkpoint import load_checkpoint
from utils.errors import UserError
from utils.interrupt import RunInterrupted

SMALL = ["--synthetic_train_samples", "16", "--synthetic_val_samples", "2", "--synthetic_size", "64", "--min-size",
         "64", "--max-size", "64", "--held-out", "4", "--max-iter", "24", "--warmup-iters", "4",
         "--checkpoint-period", "12", "--search-cycles", "2", "--bn-recalibration-iters", "2", "--deterministic"]
REPEATS = (2, 2, 4, 2)


def train(tmp_path, name, *extra, hooks=()):
    return train_autopanoptic.main(SMALL + ["--out-dir", str(tmp_path / name), *extra], hooks=hooks)


@pytest.fixture(scope="module")
def supernet_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("supernet"), "run")


def test_every_parameter_takes_the_learning_rate_of_its_group():
    model = AutoPanoptic(3, 3, None, autopanoptic.network_sizes(vars(train_autopanoptic.parse_args(SMALL)[0])))
    groups = autopanoptic.lr_param_groups(model.named_parameters(), autopanoptic.parameter_group, 0.02, 1e-4)
    rate = {id(p): (group["lr"], group["weight_decay"]) for group in groups for p in group["params"]}
    named = dict(model.named_parameters())
    assert len(rate) == len(named)
    expected = {"backbone.stem.0.weight": 0.02 / 12, "backbone.blocks.3.ops.1.main.0.weight": 0.02 / 3,
                "roi_heads.mask_head.layers.2.ops.4.1.weight": 0.02 / 2, "subnet.0.ops.0.0.depthwise.weight": 0.02 / 2,
                "things_to_stuff.1.ops.2.squeeze.weight": 0.02 / 4, "stuff_to_things.4.ops.0.excite.weight": 0.02 / 4,
                "fpn.inner_blocks.0.0.weight": 0.02 / 12, "roi_heads.box_head.fc6.weight": 0.02 / 12,
                "rpn.head.cls_logits.weight": 0.02 / 12, "semantic_score.weight": 0.02 / 12}
    for name, lr in expected.items():
        assert rate[id(named[name])] == (pytest.approx(lr), 1e-4), name
    biases = [name for name in named if "bias" in name]
    assert biases and all(rate[id(named[name])] == (0.04, 0.0) for name in biases)


def test_the_supernet_trains_and_writes_its_split_and_paths(supernet_run):
    state = load_checkpoint(supernet_run / "checkpoint.pth.tar", stage="search", system="autopanoptic")
    assert state["step"]["iterations"] == 24 and not state["step"]["gradients"]  # a window just ended
    train_split, held_out = state["split"]["train"], state["split"]["held_out"]
    assert len(held_out) == 4 and not set(train_split) & set(held_out) and len(train_split) + 4 <= 16
    records = [json.loads(line) for line in (supernet_run / "metrics.jsonl").read_text().splitlines()]
    assert all(record["train_loss"] > 0 and "loss_segmentation" in record for record in records)


def test_weights_change_only_at_the_end_of_a_window_of_twelve(tmp_path):
    seen = []

    class Watch(autopanoptic.Hook):
        def after_step(self, trainer):
            weight = trainer.step.model.semantic_score.weight
            seen.append(weight.detach().clone())

    train(tmp_path, "run", "--max-iter", "13", hooks=[Watch()])
    assert all(torch.equal(seen[0], later) for later in seen[1:11])
    assert not torch.equal(seen[10], seen[11]) and torch.equal(seen[11], seen[12])


def test_sigterm_in_the_middle_of_a_window_then_resume_gives_the_same_supernet(tmp_path, supernet_run):
    with pytest.raises(RunInterrupted, match="after step"):
        train(tmp_path, "run", hooks=[SignalAtStep(17)])
    interrupted = load_checkpoint(tmp_path / "run" / "checkpoint.pth.tar")
    assert interrupted["step"]["iterations"] == 17 and interrupted["step"]["gradients"]
    train_autopanoptic.main(["--resume", str(tmp_path / "run" / "checkpoint.pth.tar")])
    resumed = load_checkpoint(tmp_path / "run" / "checkpoint.pth.tar")["model"]
    uninterrupted = load_checkpoint(supernet_run / "checkpoint.pth.tar")["model"]
    assert all(torch.equal(resumed[name], value) for name, value in uninterrupted.items())


@pytest.mark.parametrize("flags, message", [
    (["--fpn-channels", "48"], "--fpn-channels 48: must be a multiple of 32"),
    (["--warmup-iters", "24"], "--warmup-iters 24: must be below --max-iter 24"),
    (["--held-out", "16"], "--held-out 16: the training split has only"),
])
def test_bad_flags_are_one_clear_line(tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        train(tmp_path, "run", *flags)


def decode(run_dir, out_dir):
    return decode_autodeeplab.main(["--resume", str(run_dir), "--out-dir", str(out_dir)])


def test_the_greedy_search_takes_each_layers_best_ranked_op_and_resumes_exactly(tmp_path, supernet_run,
                                                                               monkeypatch):
    genotype = decode(supernet_run, tmp_path / "full")
    saved = json.loads((supernet_run / autopanoptic.GREEDY_STATE).read_text())
    records = saved["records"]
    assert len(records) == 24 and all(0 <= record["pq"] <= 1 for record in records)
    # the scoreboard recomputed from the recorded fitnesses, cycle by cycle
    boards = [[0] * n for n in layer_choices(REPEATS)]
    for cycle in saved["search"]["candidates"]:
        fitness = {tuple(p): f for p, f in saved["search"]["fitness"]}
        for path, score in zip(cycle, rank_scores([fitness[tuple(path)] for path in cycle])):
            for board, op in zip(boards, path):
                board[op] += score
    assert all(sum(board) == 2 * 66 for board in boards)
    best = [max(range(len(board)), key=lambda op: (board[op], op)) for board in boards]
    assert genotype.path == best and genotype.source["scoreboard"] == boards
    written = load_architecture(tmp_path / "full", expected=PanopticGenotype)
    assert written == genotype and (tmp_path / "full" / "architecture.png").is_file()

    (supernet_run / autopanoptic.GREEDY_STATE).unlink()
    calls = []
    original = autopanoptic.CandidateEvaluator.__call__

    def failing_after_five(self, path):
        if len(calls) == 5:
            raise RuntimeError("the machine went away")
        calls.append(path)
        return original(self, path)

    monkeypatch.setattr(autopanoptic.CandidateEvaluator, "__call__", failing_after_five)
    with pytest.raises(RuntimeError, match="went away"):
        decode(supernet_run, tmp_path / "interrupted")
    monkeypatch.setattr(autopanoptic.CandidateEvaluator, "__call__", original)
    resumed = decode(supernet_run, tmp_path / "interrupted")
    assert resumed.path == genotype.path and resumed.source["scoreboard"] == boards
    again = json.loads((supernet_run / autopanoptic.GREEDY_STATE).read_text())["records"]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in again] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_a_greedy_search_cache_of_another_supernet_is_refused(tmp_path, supernet_run):
    state_file = supernet_run / autopanoptic.GREEDY_STATE
    saved = json.loads(state_file.read_text()) if state_file.is_file() else None
    try:
        state_file.write_text(json.dumps({"format": autopanoptic.GREEDY_FORMAT, "supernet": {"iterations": 1}}))
        with pytest.raises(UserError, match="scored on another supernet checkpoint"):
            decode(supernet_run, tmp_path / "out")
    finally:
        if saved is None:
            state_file.unlink()
        else:
            state_file.write_text(json.dumps(saved))
