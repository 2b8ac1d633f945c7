"""The decoder search as a user runs it: search, decode, retrain, evaluate and export end to end; failed candidates
recorded and kept from the controller; exact resume after SIGTERM and after a process killed outright; the same
candidates whatever the number of processes."""

import json
from pathlib import Path

import pytest
import torch

import decode_autodeeplab
import export as export_script
import train_nas_segm
from engine.checkpoint import load_checkpoint
from engine.interrupt import RunInterrupted
from engine.run_dir import RunDir, read_jsonl
from engine.trainer import Hook
from modeling.architecture_file import load_architecture
from modeling.nas_segm.genotype import DecoderGenotype
from search.nas_segm.agents import UniformPolicy
from search.nas_segm.controller import action_to_config
from search.nas_segm.stage import ranked_candidates
from search.nas_segm.strategy import SAMPLING
from tests.conftest import NAS_SEGM_DATA, NAS_SEGM_SEARCH, ROOT, PreemptAfterStep, Preempted, SignalAtStep, launch
from utils.errors import UserError
from utils.seeds import derived_seed

CANDIDATE_STEPS = 2 * 3 + 4  # stage 0: 2 epochs of 12 cached crops in 4s; stage 1: the 18 meta-train images in 4s
VARYING = ("seconds", "latency_ms", "rank")  # what may differ between two runs of the same search


def search(tmp_path, name, *extra, hooks=()):
    return train_nas_segm.main(NAS_SEGM_SEARCH + ["--out-dir", str(tmp_path / name), *extra], hooks=hooks)


def stable(records):
    return [{k: v for k, v in record.items() if k not in VARYING} for record in records]


def controller(run_dir):
    return load_checkpoint(RunDir(run_dir).checkpoint)["agent"]["controller"]


class FailCandidates(Hook):
    """Candidates ``indices`` run out of memory as their first stage starts."""

    def __init__(self, indices):
        self.indices = set(indices)

    def before_train(self, trainer):
        index = int(trainer.desc.split()[1])
        if index in self.indices and trainer.desc.endswith("stage 0"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    run_dir = search(tmp_path, "run")
    return run_dir, read_jsonl(RunDir(run_dir).candidates)


@pytest.mark.slow
def test_every_candidate_is_one_record_and_the_checkpoint_holds_the_search(uninterrupted):
    run_dir, records = uninterrupted
    assert [r["candidate"] for r in records] == [0, 1, 2] and all(r["status"] == "ok" for r in records)
    for record in records:
        DecoderGenotype.from_json({"space": "wacv", "config": record["genotype"]}, None, {}, "record")
        assert 0 < record["reward"] <= 1 and record["params"] > 56_576 and record["multi_adds"] > 0
        assert record["latency_ms"] > 0 and record["stage"] in (0, 1)
        assert [(c["stage"], c["point"]) for c in record["checks"]] == [(0, 0), (1, 0)][:record["stage"] + 1]
        assert record["reward"] == record["checks"][-1]["reward"]  # the reward is the last score taken
        assert all(c["train_loss"] > 0 for c in record["checks"])
    state = load_checkpoint(RunDir(run_dir).checkpoint, stage="search", system="nas-segm")
    assert state["next_candidate"] == 3 and stable(state["candidates"]) == stable(records)
    assert state["agent"]["inserted"] == 3  # every reward reached PPO's buffer
    assert sorted(state["split"]["meta_train"] + state["split"]["meta_val"]) == list(range(20))
    assert len(state["split"]["meta_val"]) == 2  # 10% of 20
    assert (run_dir / "search_curves.png").is_file() and list((run_dir / "tensorboard").glob("events.*"))


@pytest.mark.slow
def test_a_failing_candidate_is_logged_and_never_reaches_the_controller(tmp_path):
    run_dir = search(tmp_path, "run", hooks=[FailCandidates({1})])
    records = read_jsonl(RunDir(run_dir).candidates)
    assert [r["status"] for r in records] == ["ok", "failed", "ok"]
    assert records[1]["failure"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert "reward" not in records[1]
    agent = load_checkpoint(RunDir(run_dir).checkpoint)["agent"]
    assert agent["inserted"] == 2  # two rewards, no 0 for the failure
    actions = [r["genotype"] for r in records]
    assert agent["rewards"][:2].tolist() == pytest.approx([records[0]["reward"], records[2]["reward"]])
    assert 0.0 not in agent["rewards"][:2].tolist() and actions[1] != actions[0]
    assert "FAILED (OutOfMemoryError" in (run_dir / "log.txt").read_text()


@pytest.mark.slow
def test_too_many_failures_in_a_row_stop_the_search_with_a_clear_message(tmp_path):
    with pytest.raises(UserError, match=r"^2 candidates in a row failed, the last with OutOfMemoryError: CUDA out of "
                                        r"memory.*candidates\.jsonl\. Lower --batch-size"):
        search(tmp_path, "run", "--max_failures", "2", hooks=[FailCandidates({0, 1, 2})])
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pth.tar")
    assert [r["status"] for r in state["candidates"]] == ["failed", "failed"] and state["failures_in_a_row"] == 2


@pytest.mark.slow
def test_sigterm_then_resume_gives_the_same_candidates_and_controller(tmp_path, uninterrupted):
    reference_dir, reference = uninterrupted
    signal_in_candidate_1 = SignalAtStep(CANDIDATE_STEPS + 2)  # stage 0 of candidate 1
    with pytest.raises(RunInterrupted, match="stopped during candidates 1..1, which are dropped"):
        search(tmp_path, "run", hooks=[signal_in_candidate_1])
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pth.tar")["next_candidate"] == 1
    run_dir = train_nas_segm.main(["--resume", str(tmp_path / "run" / "checkpoint.pth.tar")])
    assert stable(read_jsonl(RunDir(run_dir).candidates)) == stable(reference)
    for name, tensor in controller(reference_dir).items():
        assert torch.equal(controller(run_dir)[name], tensor), name


@pytest.mark.slow
def test_a_killed_search_resumes_from_its_last_checkpoint_exactly(tmp_path, uninterrupted):
    reference_dir, reference = uninterrupted
    with pytest.raises(Preempted):
        search(tmp_path, "run", hooks=[PreemptAfterStep(1, "candidate 2 stage 1")])  # the machine goes away
    assert len(read_jsonl(RunDir(tmp_path / "run").candidates)) == 2
    run_dir = train_nas_segm.main(["--resume", str(tmp_path / "run" / "checkpoint.pth.tar")])
    assert stable(read_jsonl(RunDir(run_dir).candidates)) == stable(reference)
    assert all(torch.equal(controller(run_dir)[k], v) for k, v in controller(reference_dir).items())


@pytest.mark.slow
def test_a_finished_search_goes_on_with_more_candidates(tmp_path, uninterrupted):
    _, reference = uninterrupted
    run_dir = search(tmp_path, "run", "--num_candidates", "2")
    run_dir = train_nas_segm.main(["--resume", str(RunDir(run_dir).checkpoint), "--num_candidates", "3"])
    assert stable(read_jsonl(RunDir(run_dir).candidates)) == stable(reference)


@pytest.mark.slow
def test_random_search_draws_uniform_candidates_and_resumes_exactly_like_ppo(tmp_path):
    seed = 9314  # the search's default --seed
    with pytest.raises(Preempted):
        search(tmp_path, "run", "--agent", "random", hooks=[PreemptAfterStep(1, "candidate 2 stage 1")])
    run_dir = train_nas_segm.main(["--resume", str(tmp_path / "run" / "checkpoint.pth.tar")])
    records = read_jsonl(RunDir(run_dir).candidates)
    assert [r["candidate"] for r in records] == [0, 1, 2] and all(r["status"] == "ok" for r in records)
    uninterrupted = search(tmp_path, "uninterrupted", "--agent", "random")
    assert stable(read_jsonl(RunDir(uninterrupted).candidates)) == stable(records)
    policy = UniformPolicy("wacv")  # each candidate is the uniform draw of its own seed, whatever came before
    expected = [action_to_config("wacv", policy.sample(torch.Generator().manual_seed(
        derived_seed(seed, index, SAMPLING)))[0]) for index in range(3)]
    assert [r["genotype"] for r in records] == expected
    assert all(r["log_prob"] == pytest.approx(policy.log_prob) for r in records)
    state = load_checkpoint(RunDir(run_dir).checkpoint)
    assert state["agent"] == {"baseline": pytest.approx(records[-1]["baseline"])}
    assert state["args"]["agent"] == "random"
    genotype = decode_autodeeplab.main(["--resume", str(run_dir), "--out-dir", str(tmp_path / "decoded")])
    assert genotype.source["reward"] == max(r["reward"] for r in records)


@pytest.mark.slow
def test_the_decode_stage_sends_a_random_decoder_search_to_the_search_stage(uninterrupted):
    run_dir, _ = uninterrupted
    with pytest.raises(UserError, match=r"^--strategy random: a nas-segm search draws its random candidates in the "
                                        r"search stage \(train_nas_segm.py --agent random\)"):
        decode_autodeeplab.main(["--resume", str(run_dir), "--strategy", "random"])


def test_ranking_keeps_each_decoder_once_at_its_best_score():
    records = [{"candidate": 0, "status": "ok", "genotype": [1], "reward": 0.5},
               {"candidate": 1, "status": "failed", "genotype": [2]},
               {"candidate": 2, "status": "ok", "genotype": [1], "reward": 0.7},
               {"candidate": 3, "status": "ok", "genotype": [3], "reward": 0.7},
               {"candidate": 4, "status": "ok", "genotype": [4], "reward": 0.6}]
    ranked = ranked_candidates(records)
    assert [(r["candidate"], r["times_sampled"]) for r in ranked] == [(2, 2), (3, 1), (4, 1)]


def test_the_wacv_recipe_crops_stage_1_at_321_as_the_original_script():
    # search_wacv.sh asks for 321: the original's RandomCrop rounds it to 320 when built (the cached stage-0
    # images), and set_config hands stage 1 the 321 unrounded
    from config_utils.recipes import recipe

    assert recipe("nas-segm", "search", "cityscapes")["crop_size"] == [320, 321]


@pytest.mark.slow
def test_search_decode_retrain_evaluate_export_end_to_end(tmp_path, uninterrupted, run_in_process):
    search_dir, records = uninterrupted
    result = run_in_process("decode_autodeeplab.py", "--resume", str(search_dir), "--out-dir",
                            str(tmp_path / "decoded"), "--top-k", "2")
    assert result.returncode == 0, result.stderr
    best = max(records, key=lambda r: (r["reward"], -r["candidate"]))
    genotype = load_architecture(tmp_path / "decoded" / "architecture.json", expected=DecoderGenotype)
    assert genotype.genotype_json() == {"space": "wacv", "config": best["genotype"]}
    assert genotype.source["candidate"] == best["candidate"] and genotype.source["reward"] == best["reward"]
    assert "3 candidates, 3 distinct scored, 0 failed; the best 2:" in result.stdout
    assert result.stdout.count(" 0.") >= 2 and (tmp_path / "decoded" / "architecture.png").is_file()

    retrain = tmp_path / "retrain"
    # 64 px, not 32: at 32 px the stride-32 features are 1x1 and batch norm over 2 values gives gradients of 1e4,
    # which the retrain's learning rate of 0.05 turns into a nan within a few steps. Batch 4, not 2: a decoder whose
    # head reads only its strided blocks' outputs (as the original's) has 1x1 maps at 64 px, and batch norm over 2
    # values went nan within two steps.
    result = run_in_process("train_new_model.py", *NAS_SEGM_DATA[:-1], "64", "--batch_size", "4", "--crop_size",
                            "64", "--epochs", "1", "--saved_arch_path", str(tmp_path / "decoded"), "--out-dir",
                            str(retrain))
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(retrain / "checkpoint.pth.tar", stage="retrain")
    assert state["system"] == "nas-segm" and state["architecture"]["genotype"]["config"] == best["genotype"]
    assert not any("aux" in name for name in state["model"])  # the released settings: no auxiliary heads
    result = run_in_process("evaluate.py", "--ckpt", str(retrain / "model_best.pth.tar"), *NAS_SEGM_DATA)
    assert result.returncode == 0 and "mIoU" in result.stdout, result.stderr
    onnx_path = export_script.main(["--ckpt", str(retrain / "model_best.pth.tar"), "--input-size", "32", "32"])
    assert Path(onnx_path).is_file()


@pytest.mark.parametrize("flags, message", [
    (["--val-every", "2", "1", "--num-segm-epochs", "3", "1"], "--val-every 2 1: must divide --num-segm-epochs 3 1"),
    (["--do-kd"], "--do-kd: needs --kd-teacher"),
    (["--kd-teacher", "missing.pth.tar", "--do-kd"], "--kd-teacher missing.pth.tar: file not found"),
    (["--meta-train-prct", "100"], "--meta-train-prct 100: expected a percentage in 1..99"),
    (["--batch-size", "64", "4"], "--batch-size 64 4: the candidates train on 18 images"),
    (["--val-omit-classes", "9"], "--val-omit-classes 9: the dataset has classes 0..3"),
])
def test_bad_flags_are_one_clear_line(tmp_path, flags, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        search(tmp_path, "run", *flags)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_candidates_do_not_depend_on_the_number_of_processes(tmp_path, run_in_process):
    args = NAS_SEGM_SEARCH + ["--parallel_candidates", "2", "--num_candidates", "2"]
    launch(["torch.distributed.run", "--standalone"], "train_nas_segm.py", args + ["--out-dir", str(tmp_path / "two")],
           tmp_path / "logs-two")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process: the rewards must match to the last bit
    try:
        alone = run_in_process("train_nas_segm.py", *args, "--out-dir", str(tmp_path / "one"))
    finally:
        torch.set_num_threads(threads)
    assert alone.returncode == 0, alone.stderr[-3000:]
    two, one = read_jsonl(RunDir(tmp_path / "two").candidates), read_jsonl(RunDir(tmp_path / "one").candidates)
    assert [r["rank"] for r in two] == [0, 1] and [r["rank"] for r in one] == [0, 0]
    assert stable(two) == stable(one)
    assert all(torch.equal(controller(tmp_path / "two")[k], v) for k, v in controller(tmp_path / "one").items())


def first_candidate(run_dir):
    return read_jsonl(RunDir(run_dir).candidates)[0]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A network retrained by this project on the same data: a released decoder, one epoch."""
    import train_new_model

    path = ROOT / "modeling" / "architectures" / "nas_segm_wacv_arch1.json"
    run_dir = train_new_model.main(NAS_SEGM_DATA + ["--saved_arch_path", str(path), "--epochs", "1", "--batch_size",
                                                    "4", "--crop_size", "32", "--out-dir",
                                                    str(tmp_path_factory.mktemp("t") / "r")])
    return run_dir / "model_best.pth.tar"


@pytest.mark.slow
def test_distillation_from_a_retrained_teacher_changes_stage_0_only_through_its_term(tmp_path, teacher,
                                                                                      uninterrupted):
    one = ["--num_candidates", "1", "--kd-teacher", str(teacher), "--do-kd"]
    plain = first_candidate(uninterrupted[0])
    silent = first_candidate(search(tmp_path, "zero", *one, "--kd-coeff", "0"))
    assert stable([silent]) == stable([plain])  # a zero weight: exactly the run without a teacher
    distilled = first_candidate(search(tmp_path, "kd", *one))
    assert distilled["genotype"] == plain["genotype"]
    assert distilled["checks"][0]["train_loss"] != plain["checks"][0]["train_loss"]


@pytest.mark.slow
def test_a_teacher_for_other_classes_is_refused(tmp_path, teacher):
    with pytest.raises(UserError, match=r"--kd-teacher .*model_best.pth.tar: predicts 4 classes, the search has 5"):
        search(tmp_path, "run", "--do-kd", "--kd-teacher", str(teacher), "--num_classes", "5")


@pytest.mark.slow
def test_without_the_cache_stage_0_encodes_every_step(tmp_path, uninterrupted):
    run_dir = search(tmp_path, "run", "--num_candidates", "1", "--no-stage0-cache")
    record, cached = first_candidate(run_dir), first_candidate(uninterrupted[0])
    assert record["status"] == "ok" and record["genotype"] == cached["genotype"]
    assert record["checks"][0]["train_loss"] != cached["checks"][0]["train_loss"]  # fresh augmentations each epoch
    assert "encoded every step" in (run_dir / "log.txt").read_text()
    assert load_checkpoint(RunDir(run_dir).checkpoint)["cache_bytes"] == 0


@pytest.mark.slow
def test_a_cvpr_search_trains_the_auxiliary_heads_and_counts_without_them(tmp_path):
    from modeling.nas_segm.network import DecoderSearchNetwork

    run_dir = search(tmp_path, "run", "--space", "cvpr", "--num_candidates", "1")
    args = json.loads((run_dir / "args.json").read_text())
    assert (args["dec_aux_weight"], args["aux_cell"]) == (0.15, True)  # the CVPR settings follow --space
    record = first_candidate(run_dir)
    genotype = DecoderGenotype.from_json({"space": "cvpr", "config": record["genotype"]}, None, {}, "record")
    network = DecoderSearchNetwork(genotype, 4, 48, 1, aux_heads=True, aux_cell=True)
    with_aux = sum(p.numel() for p in network.parameters())
    assert record["params"] == with_aux - sum(p.numel() for p in network.decoder.aux_heads.parameters())
    assert record["status"] == "ok"


@pytest.mark.slow
def test_amp_trains_the_candidates_in_bfloat16(tmp_path, uninterrupted):
    run_dir = search(tmp_path, "run", "--num_candidates", "1", "--amp", "--amp_dtype", "bf16")
    record, full_precision = first_candidate(run_dir), first_candidate(uninterrupted[0])
    assert record["status"] == "ok" and record["genotype"] == full_precision["genotype"]
    losses = [check["train_loss"] for check in record["checks"]]
    expected = [check["train_loss"] for check in full_precision["checks"]]
    assert losses != expected and losses == pytest.approx(expected, rel=0.2)  # same steps, rounded to bf16
