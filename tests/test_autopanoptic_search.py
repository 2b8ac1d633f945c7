"""Auto-Panoptic as a user runs it: the supernet trained with fair paths and per-group learning rates, resumed
exactly from the middle of an accumulation window; the greedy path search, resumed exactly from a partial cache;
the retrain of its result (or of the original's released file), evaluation by PQ and panoptic inference."""

import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import decode_autodeeplab
import evaluate as evaluate_script
import inference as inference_script
import train_autopanoptic
import train_new_model
from dataloaders.datasets.synthetic_panoptic import SyntheticPanoptic
from engine.checkpoint import load_checkpoint
from engine.interrupt import RunInterrupted
from evaluation.panoptic_quality import rgb_to_id
from modeling.architecture_file import load_architecture
from modeling.autopanoptic.genotype import RELEASED, RELEASED_FILES, PanopticGenotype, layer_choices
from modeling.autopanoptic.network import AutoPanoptic, PanopticSizes
from retrain import panoptic as panoptic_retrain
from search.autopanoptic import stage as autopanoptic
from search.autopanoptic.one_shot import rank_scores, uniform_paths
from tests.conftest import AUTOPANOPTIC_RETRAIN, AUTOPANOPTIC_SEARCH, SignalAtStep, launch
from utils.errors import UserError

REPEATS = (2, 2, 4, 2)


def train(tmp_path, name, *extra, hooks=()):
    return train_autopanoptic.main(AUTOPANOPTIC_SEARCH + ["--out-dir", str(tmp_path / name), *extra], hooks=hooks)


@pytest.fixture(scope="module")
def supernet_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("supernet"), "run")


def test_every_parameter_takes_the_learning_rate_of_its_group():
    sizes = PanopticSizes.from_args(vars(train_autopanoptic.parse_args(AUTOPANOPTIC_SEARCH)[0]))
    model = AutoPanoptic(3, 3, None, sizes)
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


@pytest.mark.slow
def test_the_supernet_trains_and_writes_its_split_and_paths(supernet_run):
    state = load_checkpoint(supernet_run / "checkpoint.pth.tar", stage="search", system="autopanoptic")
    assert state["step"]["iterations"] == 24 and not state["step"]["gradients"]  # a window just ended
    train_split, held_out = state["split"]["train"], state["split"]["held_out"]
    assert len(held_out) == 4 and not set(train_split) & set(held_out) and len(train_split) + 4 <= 16
    records = [json.loads(line) for line in (supernet_run / "metrics.jsonl").read_text().splitlines()]
    assert all(record["train_loss"] > 0 and "loss_segmentation" in record for record in records)


@pytest.mark.slow
def test_weights_change_only_at_the_end_of_a_window_of_twelve(tmp_path):
    seen = []

    class Watch(autopanoptic.Hook):
        def after_step(self, trainer):
            weight = trainer.step.model.semantic_score.weight
            seen.append(weight.detach().clone())

    train(tmp_path, "run", "--max-iter", "13", hooks=[Watch()])
    assert all(torch.equal(seen[0], later) for later in seen[1:11])
    assert not torch.equal(seen[10], seen[11]) and torch.equal(seen[11], seen[12])


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_random_search_scores_uniform_paths_as_the_greedy_search_and_keeps_the_best(tmp_path, supernet_run):
    decode_autodeeplab.main(["--resume", str(supernet_run), "--strategy", "random", "--random-candidates", "3",
                             "--seed", "5", "--out-dir", str(tmp_path / "random")])
    genotype = load_architecture(tmp_path / "random", expected=PanopticGenotype)
    saved = json.loads((supernet_run / "random_search_seed5.json").read_text())
    drawn = uniform_paths(layer_choices(REPEATS), 3, 5)
    assert [tuple(record["path"]) for record in saved["records"]] == drawn
    best = max(saved["records"], key=lambda record: record["pq"])
    assert genotype.path == best["path"] and genotype.source["strategy"] == "random"
    assert genotype.source["supernet_pq"] == best["pq"] and genotype.source["candidates_scored"] == 3

    decode_autodeeplab.main(["--resume", str(supernet_run), "--strategy", "random", "--random-candidates", "1",
                             "--seed", "6", "--out-dir", str(tmp_path / "one")])
    one = load_architecture(tmp_path / "one", expected=PanopticGenotype)
    assert tuple(one.path) == uniform_paths(layer_choices(REPEATS), 1, 6)[0]  # drawn, not scored
    assert one.source["candidates_scored"] == 0 and not (supernet_run / "random_search_seed6.json").exists()


@pytest.mark.slow
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




def test_the_multistep_schedule_of_the_retrain_by_hand():
    factor = panoptic_retrain.warmup_multistep_factor
    assert factor(0, [60000, 80000], 0.1, 500) == pytest.approx(0.1)
    assert factor(250, [60000, 80000], 0.1, 500) == pytest.approx(0.1 * 0.5 + 0.5)
    assert factor(500, [60000, 80000], 0.1, 500) == 1.0
    assert factor(59999, [60000, 80000], 0.1, 500) == 1.0
    assert factor(60000, [60000, 80000], 0.1, 500) == pytest.approx(0.1)
    assert factor(89999, [60000, 80000], 0.1, 500) == pytest.approx(0.01)


@pytest.mark.slow
def test_decode_retrain_evaluate_and_segment_end_to_end(tmp_path, supernet_run):
    decode(supernet_run, tmp_path / "decoded")
    run_dir = train_new_model.main(AUTOPANOPTIC_RETRAIN + ["--saved_arch_path", str(tmp_path / "decoded"), "--out-dir",
                                              str(tmp_path / "retrain")])
    state = load_checkpoint(run_dir / "model_best.pth.tar", stage="retrain", system="autopanoptic")
    genotype = load_architecture(tmp_path / "decoded", expected=PanopticGenotype)
    assert state["architecture"]["genotype"] == genotype.genotype_json()
    assert set(state["optimizer"]["param_groups"][0]) >= {"lr", "weight_decay"}
    assert {group["name"] for group in state["optimizer"]["param_groups"]} == {"weights", "bias"}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= record["pq"] <= 1 and "semantic_miou" in record for record in records)
    report = json.loads((run_dir / "report_val" / "metrics.json").read_text())
    assert set(report["panoptic"]) == {"All", "Things", "Stuff", "per_class"}

    out_dir = evaluate_script.main(["--ckpt", str(run_dir / "model_best.pth.tar"), "--synthetic_val_samples", "3"])
    evaluated = json.loads((out_dir / "metrics.json").read_text())
    assert evaluated["pq"] == pytest.approx(report["pq"]) and evaluated["images"] == 3

    images = tmp_path / "images"
    images.mkdir()
    source = SyntheticPanoptic("val", 2, 64, 0)
    for index in range(2):
        Image.fromarray(source.load(index)[0]).save(images / f"{index}.png")
    out = inference_script.main(["--ckpt", str(run_dir / "model_best.pth.tar"), "--in-path", str(images),
                                 "--out-path", str(tmp_path / "segmented")])
    written = json.loads((out / "panoptic.json").read_text())
    assert [a["file_name"] for a in written["annotations"]] == ["0.png", "1.png"]
    for annotation in written["annotations"]:
        ids = rgb_to_id(np.asarray(Image.open(out / "panoptic" / annotation["file_name"])))
        assert ids.shape == (64, 64)
        assert set(np.unique(ids)) - {0} == {segment["id"] for segment in annotation["segments_info"]}
    assert (out / "overlays" / "0.jpg").is_file()


@pytest.mark.slow
def test_the_originals_coco_architecture_retrains(tmp_path):
    coco = RELEASED / RELEASED_FILES["COCO_3.8G"]
    run_dir = train_new_model.main(AUTOPANOPTIC_RETRAIN + ["--saved_arch_path", str(coco), "--max-iter", "2",
                                                           "--lr-steps", "1", "--warmup-iters", "0",
                                                           "--out-dir", str(tmp_path / "retrain")])
    state = load_checkpoint(run_dir / "checkpoint.pth.tar", stage="retrain")
    assert state["args"]["stage_repeats"] == [8, 8, 16, 8]
    assert sum(1 for name in state["model"] if name.startswith("backbone.blocks.") and name.endswith(
        "main.0.weight")) == 40


def test_a_semantic_dataset_cannot_retrain_a_panoptic_architecture(tmp_path):
    with pytest.raises(UserError, match="--dataset synthetic: its labels serve semantic, not panoptic \\(panoptic "
                                        "datasets: coco_panoptic, synthetic_panoptic, synthetic_panoptic_context\\)"):
        train_new_model.main(["--dataset", "synthetic", "--saved_arch_path",
                              str(RELEASED / RELEASED_FILES["COCO_3.8G"]), "--out-dir", str(tmp_path / "run")])


def without_seconds(records):
    return [{key: value for key, value in record.items() if key != "seconds"} for record in records]


def sigterm_at_the_third_candidate(monkeypatch):
    """SIGTERM as the third candidate is scored; returns the list of the candidates scored."""
    original, calls = autopanoptic.CandidateEvaluator.__call__, []

    def signalled_at_the_third(self, path):
        calls.append(path)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, path)

    monkeypatch.setattr(autopanoptic.CandidateEvaluator, "__call__", signalled_at_the_third)
    return calls


def forbid_scoring(monkeypatch):
    def refuse(self, path):
        raise AssertionError(f"decode scored candidate {path}: the search stage had scored them all")
    monkeypatch.setattr(autopanoptic.CandidateEvaluator, "__call__", refuse)


@pytest.mark.slow
def test_two_processes_train_the_supernet_on_the_same_paths_and_share_the_greedy_search(tmp_path, monkeypatch):
    """Under torchrun every process takes the iteration's path from the seed alone; the gradients of each window
    are averaged over the processes, which fails outright if the processes ran different paths (their sets of
    gradients would differ). The greedy search that follows gives each process one candidate per round and scores
    them as one process does; decode then reads its scoreboard and scores nothing."""
    run = tmp_path / "two"
    args = AUTOPANOPTIC_SEARCH + ["--max-iter", "13", "--greedy-search", "--search-cycles", "1", "--out-dir", str(run)]
    output = launch(["torch.distributed.run", "--standalone"], "train_autopanoptic.py", args, tmp_path / "logs")
    assert "2 process(es)" in output and "candidate 12/12" in output and "search finished" in output
    state = load_checkpoint(run / "checkpoint.pth.tar")
    assert state["step"]["iterations"] == 13 and state["step"]["gradients"]
    assert all(torch.isfinite(value).all() for value in state["model"].values() if value.is_floating_point())
    shared = json.loads((run / autopanoptic.GREEDY_STATE).read_text())
    cycle = [tuple(path) for path in shared["search"]["candidates"][0]]
    assert [tuple(r["path"]) for r in shared["records"]] == list(dict.fromkeys(cycle))  # each once, in cycle order

    with monkeypatch.context() as patch:
        forbid_scoring(patch)
        genotype = decode(run, tmp_path / "decoded")
    scores = dict(zip(cycle, rank_scores([r["pq"] for r in shared["records"]])))
    boards = [[sum(score for path, score in scores.items() if path[layer] == op) for op in range(n)]
              for layer, n in enumerate(layer_choices(REPEATS))]
    assert genotype.source["scoreboard"] == boards and genotype.source["candidates_scored"] == len(cycle)

    scoring = autopanoptic.SupernetScoring(state, run / "checkpoint.pth.tar")
    first_round = shared["records"][:2]  # rank 0's candidate and rank 1's, scored again on this one process
    assert without_seconds([scoring.evaluator(record["path"]) for record in first_round]) == without_seconds(first_round)


@pytest.mark.slow
def test_the_search_stage_resumes_its_greedy_search_after_sigterm(tmp_path, supernet_run, monkeypatch):
    """A supernet run with --no-greedy-search, resumed with --greedy-search: the search runs in the stage; SIGTERM
    stops it after the candidate in hand, and --resume scores only the rest."""
    run = tmp_path / "run"
    shutil.copytree(supernet_run, run, ignore=shutil.ignore_patterns("*.json"))
    shutil.copy(supernet_run / "args.json", run / "args.json")
    calls = sigterm_at_the_third_candidate(monkeypatch)
    flags = ["--resume", str(run), "--greedy-search", "--search-cycles", "1"]
    with pytest.raises(RunInterrupted, match="stopped by SIGTERM after 3 of 12 candidates"):
        train_autopanoptic.main(flags)
    assert len(json.loads((run / autopanoptic.GREEDY_STATE).read_text())["records"]) == 3
    train_autopanoptic.main(flags)
    records = json.loads((run / autopanoptic.GREEDY_STATE).read_text())["records"]
    assert len(calls) == len(records) == 12 and len({tuple(r["path"]) for r in records}) == 12
    forbid_scoring(monkeypatch)
    assert decode(run, tmp_path / "decoded").source["candidates_scored"] == 12


@pytest.mark.slow
def test_sigterm_stops_the_greedy_search_after_the_candidate_in_hand(tmp_path, supernet_run, monkeypatch):
    state_file = supernet_run / autopanoptic.GREEDY_STATE
    saved = state_file.read_text() if state_file.is_file() else None
    state_file.unlink(missing_ok=True)
    calls = sigterm_at_the_third_candidate(monkeypatch)
    try:
        with pytest.raises(RunInterrupted, match="stopped by SIGTERM after 3 of 24 candidates"):
            decode(supernet_run, tmp_path / "out")
        assert len(json.loads(state_file.read_text())["records"]) == len(calls) == 3
        assert not (tmp_path / "out" / "architecture.json").exists()
    finally:
        if saved is None:
            state_file.unlink(missing_ok=True)
        else:
            state_file.write_text(saved)
