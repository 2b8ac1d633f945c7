"""Multi-process training: the collective helpers under 2 gloo processes, and both stages under torchrun."""


import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.distributed import (DistributedContext, all_reduce_mean, broadcast_from_main, check_batchnorm_batch,
                                check_identical, per_process_batch, uses_sync_batchnorm)
from engine.precision import PrecisionStep
from engine.run_dir import RunDir, read_jsonl
from engine.trainer import mean_over_ranks
from evaluation.semantic import evaluate
from modeling.autodeeplab.fused_edges import EdgeFanOut
from modeling.autodeeplab.genotype import PRIMITIVES
from tests.conftest import DISTRIBUTED_RETRAIN, DISTRIBUTED_SEARCH, launch, records
from utils.errors import UserError

WORLD = 2


def run_in_two_processes(function, tmp_path, *args):
    """Run ``function(context, *args)`` in 2 gloo processes; each returns a picklable result."""
    results = mp.get_context("spawn").Manager().dict()
    mp.spawn(_worker, args=(function, str(tmp_path / "rendezvous"), results, args), nprocs=WORLD, join=True)
    return [results[rank] for rank in range(WORLD)]


def _worker(rank, function, rendezvous, results, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        results[rank] = function(DistributedContext(rank, WORLD, rank), *args)
    finally:
        dist.barrier()
        dist.destroy_process_group()


class Lookup(torch.nn.Module):
    """A deterministic 'model': class scores read from a fixed table by the image's first pixel."""

    def forward(self, images):
        first = images[:, 0, :, :].round().long().clamp(0, 2)
        return torch.nn.functional.one_hot(first, 3).permute(0, 3, 1, 2).float() * 5


def _sharded_evaluation(context, batches):
    shard = batches[context.rank::context.world_size]
    return evaluate(Lookup(), shard, 3, torch.device("cpu"), context=context)


@pytest.mark.slow
def test_sharded_validation_sums_to_the_single_process_scores(tmp_path):
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 3, (1, 3, 5, 6), generator=generator).float(),
                torch.randint(0, 3, (1, 5, 6), generator=generator)) for _ in range(5)]  # odd count: uneven shards
    whole = evaluate(Lookup(), batches, 3, torch.device("cpu"))
    for result in run_in_two_processes(_sharded_evaluation, tmp_path, batches):
        assert result["confusion_matrix"] == whole["confusion_matrix"]
        assert result["miou"] == whole["miou"]
        assert result["loss"] == pytest.approx(whole["loss"], rel=1e-12)


def _collectives(context):
    gradient = torch.full((3,), float(context.rank + 1))
    all_reduce_mean([gradient], context)
    loss = mean_over_ranks([1.0, 3.0] if context.rank == 0 else [5.0, 7.0], context)
    module = torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        module.running_mean.fill_(context.rank)
        module.weight.fill_(context.rank + 10)
    broadcast_from_main(module, context)
    buffers_only = (module.running_mean.tolist(), module.weight.tolist())
    broadcast_from_main(module, context, parameters=True)
    same = torch.ones(4)
    check_identical([same], "ones", context)
    try:
        check_identical([torch.full((2,), float(context.rank))], "α and β", context)
        divergence = None
    except RuntimeError as error:
        divergence = str(error)
    return gradient.tolist(), loss, buffers_only, module.weight.tolist(), divergence


@pytest.mark.slow
def test_collective_helpers(tmp_path):
    for rank, (gradient, loss, buffers_only, weights, divergence) in enumerate(
            run_in_two_processes(_collectives, tmp_path)):
        assert gradient == [1.5, 1.5, 1.5]
        assert loss == 4.0
        assert buffers_only == ([0.0, 0.0], [rank + 10.0] * 2)  # parameters untouched unless asked
        assert weights == [10.0, 10.0]
        assert divergence is not None and "α and β differ between rank 0 and rank 1" in divergence


def _float16_steps(context):
    """Two float16 steps with gradients averaged before unscaling; rank 1's first gradient overflows."""
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    precision = PrecisionStep(True, torch.device("cpu"), torch.float16)
    results = []
    for factor in (float("inf") if context.rank == 1 else 1.0, float(context.rank + 1)):
        precision.backward((parameter * factor).sum())
        stepped = precision.step(optimizer, before_step=lambda: all_reduce_mean([parameter.grad], context))
        results.append((stepped, parameter.tolist(), precision.state_dict()["scale"]))
    return results


@pytest.mark.slow
def test_float16_overflow_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    for results in run_in_two_processes(_float16_steps, tmp_path):
        assert results == [(False, [0.0, 0.0], 32768.0),  # nobody steps, every scale backs off
                           (True, [-1.5, -1.5], 32768.0)]  # then the mean gradient (1 + 2) / 2 on both


def _fan_out_gradients(fan_out, x, weights, upstream):
    x, weights = x.clone().requires_grad_(), weights.clone().requires_grad_()
    out = fan_out(x, weights)
    grads = torch.autograd.grad((out * upstream).sum(), [x, weights, *fan_out.parameters()])
    return out.detach(), grads, fan_out.running_mean.clone(), fan_out.running_var.clone()


def _synchronised_fan_out(context, state, x, weights, upstream):
    """This process's half of each group's images through a fan-out that synchronises its statistics."""
    fan_out = EdgeFanOut(3, 2, groups=2).double()
    fan_out.load_state_dict(state)
    fan_out.synchronize = True
    half = slice(2 * context.rank, 2 * context.rank + 2)
    return _fan_out_gradients(fan_out, x.unflatten(0, (2, 4))[:, half].flatten(0, 1), weights, upstream[:, :, half])


@pytest.mark.slow
def test_synchronised_fan_out_statistics_make_two_half_batches_one_batch(tmp_path):
    torch.manual_seed(0)
    fan_out = EdgeFanOut(3, 2, groups=2).double()
    state = {name: value.clone() for name, value in fan_out.state_dict().items()}
    x = torch.randn(8, 3, 5, 6, dtype=torch.float64)  # 2 groups (directions) of 4 images
    x[:2] += 3  # the two processes' shards differ in mean: the combined variance must account for it
    weights = torch.softmax(torch.randn(2, len(PRIMITIVES), dtype=torch.float64), dim=1)
    upstream = torch.randn(2, 2, 4, 3, 5, 6, dtype=torch.float64)  # [edges, groups, images, C, H, W]
    out, grads, running_mean, running_var = _fan_out_gradients(fan_out, x, weights, upstream)
    results = run_in_two_processes(_synchronised_fan_out, tmp_path, state, x, weights, upstream)
    for rank, (shard_out, shard_grads, shard_mean, shard_var) in enumerate(results):
        half = slice(2 * rank, 2 * rank + 2)
        torch.testing.assert_close(shard_out, out[:, :, half], rtol=1e-10, atol=1e-12)
        # the input's gradient includes the other process's loss, through the shared statistics
        torch.testing.assert_close(shard_grads[0], grads[0].unflatten(0, (2, 4))[:, half].flatten(0, 1),
                                   rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(shard_mean, running_mean, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(shard_var, running_var, rtol=1e-12, atol=1e-14)  # unbiased over all 4 images
    for index, whole in enumerate(grads[1:], start=1):  # α and the weights: the sum over processes (DDP averages)
        torch.testing.assert_close(results[0][1][index] + results[1][1][index], whole, rtol=1e-9, atol=1e-12)


def test_sync_batchnorm_only_for_several_cuda_processes():
    two = DistributedContext(0, 2, 0)
    assert uses_sync_batchnorm(two, torch.device("cuda", 0), requested=True)
    assert not uses_sync_batchnorm(two, torch.device("cuda", 0), requested=False)
    assert not uses_sync_batchnorm(two, torch.device("cpu"), requested=True)
    assert not uses_sync_batchnorm(DistributedContext(), torch.device("cuda", 0), requested=True)


def test_global_batch_must_split_evenly():
    assert per_process_batch(8, DistributedContext(0, 4, 0)) == 2
    with pytest.raises(UserError, match="--batch_size 6: the global batch must split evenly over the 4 processes"):
        per_process_batch(6, DistributedContext(0, 4, 0))


def test_batchnorm_batch_is_checked_per_process_unless_synchronised():
    alone, two = DistributedContext(), DistributedContext(0, 2, 0)
    check_batchnorm_batch(2, alone, False, 2, "BatchNorm")
    check_batchnorm_batch(4, two, False, 2, "BatchNorm")
    check_batchnorm_batch(2, two, True, 2, "BatchNorm")  # one image per process, statistics over both
    with pytest.raises(UserError, match="--batch_size 1: training needs at least 2 images per step"):
        check_batchnorm_batch(1, alone, False, 2, "BatchNorm")
    with pytest.raises(UserError, match=r"--batch_size 2: each of the 2 processes gets 1 image\(s\), and BatchNorm "
                                        r"needs at least 2 per process .*use --batch_size 4 or fewer processes"):
        check_batchnorm_batch(2, two, False, 2, "BatchNorm")


# ---------------------------------------------------------------- torchrun, end to end



@pytest.mark.slow
@pytest.mark.parametrize("script, args, launcher", [
    ("train_autodeeplab.py", DISTRIBUTED_SEARCH, ["torch.distributed.run", "--standalone"]),  # what torchrun runs
    ("train_new_model.py", DISTRIBUTED_RETRAIN, ["torch.distributed.launch"]),  # the older launcher passes --local-rank
    # rank 1 has LOCAL_RANK 0 like rank 0, yet must stay quiet; float16 overflow verdicts must agree across ranks
    ("train_autodeeplab.py", DISTRIBUTED_SEARCH + ["--amp", "--amp_dtype", "fp16"], "two-nodes"),
], ids=["search-torchrun", "retrain-launch", "search-two-nodes-fp16"])
def test_two_processes_train_like_one(tmp_path, run_in_process, script, args, launcher):
    launch(launcher, script, args + ["--out-dir", str(tmp_path / "two")], tmp_path / "logs-two")
    alone = run_in_process(script, *args, "--out-dir", str(tmp_path / "one"))  # this test's process: one thread
    assert alone.returncode == 0, alone.stderr[-3000:]
    log = (tmp_path / "two" / "log.txt").read_text()
    assert "2 process(es) of 2 images" in log
    assert "1 process(es) of 4 images" in (tmp_path / "one" / "log.txt").read_text()
    assert log.count("epoch 1:") == 1  # rank 0 alone logs
    # and alone writes a run directory
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("logs")) == ["one", "two"]
    # Same global batches, but BatchNorm statistics are per process on CPU (SyncBatchNorm needs CUDA, so
    # --sync_bn synchronises nothing there), so the runs agree only approximately: at batch 2 against 4 the
    # gradients of these tiny networks differ by about their own size. (Validation of networks this barely
    # trained swings wildly in eval mode, so only the training losses are compared.)
    two_records, one_records = records(tmp_path / "two"), records(tmp_path / "one")
    assert [r["epoch"] for r in two_records] == [r["epoch"] for r in one_records] == [0, 1]
    for two_epoch, one_epoch in zip(two_records, one_records):
        assert two_epoch["train_loss"] == pytest.approx(one_epoch["train_loss"], rel=0.2)
    if script == "train_autodeeplab.py":
        history = read_jsonl(RunDir(tmp_path / "two").search_log)
        # every architecture step passed the check that all ranks hold identical α and β
        assert len(history) == 2
    else:
        assert (tmp_path / "two" / "report_val" / "metrics.json").is_file()


@pytest.mark.slow
def test_one_image_per_cpu_process_is_refused_before_the_run_starts(tmp_path):
    """The original's multi-GPU example, one image per process: on CPU BatchNorm cannot be synchronised."""
    args = DISTRIBUTED_SEARCH + ["--batch_size", "2", "--out-dir", str(tmp_path / "run")]  # the last --batch_size wins
    output = launch(["torch.distributed.run", "--standalone"], "train_autodeeplab.py", args, tmp_path / "logs",
                    expect_code=1)  # torchrun's own code when its processes fail
    assert "train_autodeeplab.py: error: --batch_size 2: each of the 2 processes gets 1 image(s)" in output
    assert "Expected more than 1 value per channel" not in output
    assert not (tmp_path / "run").exists()
