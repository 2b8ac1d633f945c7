"""The one training loop: hooks, epoch records, iteration budgets, exact mid-epoch resume, and the hooks that
make a run (best checkpoint by a named metric, stop requests), on a toy regression a person can check."""

import signal

import pytest
import torch
from torch.utils.data import TensorDataset

from dataloaders import SeededSampler, make_loader
from engine.checkpoint import Checkpointer, load_checkpoint
from engine.distributed import DistributedContext
from engine.hooks import Checkpoint, Validation, resume_point
from engine.interrupt import RunInterrupted
from engine.run_dir import RunDir
from engine.trainer import EpochProgress, Hook, NonFiniteLoss, Trainer


class KeyedTensors(TensorDataset):
    """A TensorDataset read with the sampler's (index, seed) keys."""

    def __getitem__(self, key):
        return super().__getitem__(key[0])


def toy_loader(samples=12, batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 2, generator=generator)
    y = x @ torch.tensor([2.0, -1.0]) + 0.5
    sampler = SeededSampler(range(samples), seed, shuffle=True, drop_last=True)
    return make_loader(KeyedTensors(x, y), sampler, batch, 0, drop_last=True)


class ToyStep:
    """Least squares by SGD; returns the loss and the batch's first target, so a test can see the order."""

    def __init__(self, lr=0.1, explode_at=None):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(2, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.explode_at, self.epochs_started = explode_at, []

    def train(self):
        self.model.train()

    def start_epoch(self, epoch, steps_done):
        self.epochs_started.append((epoch, steps_done))

    def __call__(self, batch, global_step):
        x, y = batch
        loss = ((self.model(x).squeeze(1) - y) ** 2).mean()
        if global_step == self.explode_at:
            raise NonFiniteLoss("toy", float("nan"))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"train_loss": loss.item(), "first_target": y[0].item()}

    def learning_rate(self):
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state)


class Recorder(Hook):
    def __init__(self):
        self.calls, self.records, self.steps = [], [], []

    def before_train(self, trainer):
        self.calls.append("before_train")

    def before_epoch(self, trainer):
        self.calls.append(f"before_epoch {trainer.epoch}")

    def after_step(self, trainer):
        self.steps.append((trainer.epoch, trainer.progress.steps, trainer.global_step, trainer.last["first_target"]))

    def after_epoch(self, trainer):
        self.calls.append(f"after_epoch {trainer.epoch}")
        self.records.append(dict(trainer.record))

    def after_train(self, trainer):
        self.calls.append("after_train")


def test_hooks_run_around_every_epoch_and_step_and_the_record_holds_epoch_means():
    step, recorder = ToyStep(), Recorder()
    Trainer(step, toy_loader(), epochs=2, hooks=[recorder]).fit()
    assert recorder.calls == ["before_train", "before_epoch 0", "after_epoch 0", "before_epoch 1", "after_epoch 1",
                              "after_train"]
    assert [(epoch, done, total) for epoch, done, total, _ in recorder.steps] == [
        (0, 1, 1), (0, 2, 2), (0, 3, 3), (0, 4, 4), (1, 1, 5), (1, 2, 6), (1, 3, 7), (1, 4, 8)]
    assert step.epochs_started == [(0, 0), (1, 0)]
    first = recorder.records[0]
    assert list(first) == ["epoch", "train_loss", "lr", "epoch_seconds", "first_target"]
    targets = [target for epoch, _, _, target in recorder.steps if epoch == 0]
    assert first["first_target"] == pytest.approx(sum(targets) / 4) and first["lr"] == 0.1
    assert recorder.records[1]["train_loss"] < first["train_loss"]  # it learns


def test_an_iteration_budget_cuts_the_last_epoch():
    recorder = Recorder()
    trainer = Trainer(ToyStep(), toy_loader(), max_iters=10, hooks=[recorder])
    assert (trainer.steps_per_epoch, trainer.epochs) == (4, 3)
    trainer.fit()
    assert len(recorder.steps) == 10 and [r["epoch"] for r in recorder.records] == [0, 1, 2]
    assert [s[1] for s in recorder.steps if s[0] == 2] == [1, 2]
    with pytest.raises(ValueError, match="exactly one of epochs and max_iters"):
        Trainer(ToyStep(), toy_loader(), epochs=1, max_iters=4)


class EndAfterEpoch(Hook):
    def __init__(self, epoch):
        self.epoch = epoch

    def after_epoch(self, trainer):
        trainer.should_stop = trainer.epoch == self.epoch


def test_a_hook_ends_the_training_after_an_epoch_and_the_next_fit_starts_afresh():
    recorder = Recorder()
    trainer = Trainer(ToyStep(), toy_loader(), epochs=4, hooks=[EndAfterEpoch(1), recorder])
    trainer.fit()
    assert recorder.calls == ["before_train", "before_epoch 0", "after_epoch 0", "before_epoch 1", "after_epoch 1",
                              "after_train"]
    trainer.hooks = [recorder]
    trainer.fit(start_epoch=2)
    assert [r["epoch"] for r in recorder.records] == [0, 1, 2, 3]


class StopAfter(Hook):
    def __init__(self, global_step):
        self.global_step, self.progress = global_step, None

    def after_step(self, trainer):
        if trainer.global_step == self.global_step:
            self.progress = EpochProgress.from_dict(trainer.progress.to_dict())
            raise KeyboardInterrupt


def test_a_fit_resumed_in_the_middle_of_an_epoch_ends_exactly_as_an_uninterrupted_one():
    whole, whole_log = ToyStep(), Recorder()
    Trainer(whole, toy_loader(), epochs=3, hooks=[whole_log]).fit()

    cut, stopper = ToyStep(), StopAfter(6)  # epoch 1, step 2 of 4
    with pytest.raises(KeyboardInterrupt):
        Trainer(cut, toy_loader(), epochs=3, hooks=[stopper]).fit()
    state = {"model": {k: v.clone() for k, v in cut.model.state_dict().items()}, "opt": cut.state_dict()}
    resumed, resumed_log = ToyStep(), Recorder()
    resumed.model.load_state_dict(state["model"])
    resumed.load_state_dict(state["opt"])
    Trainer(resumed, toy_loader(), epochs=3, hooks=[resumed_log]).fit(1, stopper.progress)

    assert resumed.epochs_started == [(1, 2), (2, 0)]
    assert [s[3] for s in resumed_log.steps] == [s[3] for s in whole_log.steps[6:]]  # the same batches
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key])
    strip = lambda record: {k: v for k, v in record.items() if k != "epoch_seconds"}  # noqa: E731
    assert [strip(r) for r in resumed_log.records] == [strip(r) for r in whole_log.records[1:]]


def test_the_loop_can_run_many_times_in_one_process_and_installs_no_signal_handler():
    class SeesHandlers(Hook):
        def after_step(self, trainer):
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    losses = []
    for _ in range(3):  # e.g. the candidates of a decoder search
        recorder = Recorder()
        Trainer(ToyStep(), toy_loader(), epochs=1, hooks=[recorder, SeesHandlers()]).fit()
        losses.append(recorder.records[0]["train_loss"])
    assert losses[0] == losses[1] == losses[2]


def test_a_non_finite_loss_says_where_it_happened_and_that_nothing_was_saved():
    with pytest.raises(NonFiniteLoss, match=r"toy loss is nan at epoch 1, step 1; stopping without saving it "
                                            r"\(no checkpoint holds this run\)\. Try a lower learning rate\."):
        Trainer(ToyStep(explode_at=5), toy_loader(), epochs=2).fit()


def test_epoch_progress_reads_the_earlier_two_list_format():
    old = {"epoch": 2, "steps": 3, "seconds": 1.5, "losses": [1.0, 2.0, 3.0], "arch_losses": [0.5, 0.25, 0.125]}
    progress = EpochProgress.from_dict(old)
    assert progress.values == {"train_loss": [1.0, 2.0, 3.0], "arch_loss": [0.5, 0.25, 0.125]}
    assert EpochProgress.from_dict(progress.to_dict()) == progress
    retrain = EpochProgress.from_dict(old | {"arch_losses": []})
    assert list(retrain.values) == ["train_loss"]


def test_validation_runs_every_n_epochs_and_after_the_last():
    seen = []

    class Board:
        writer = None

    validation = Validation(lambda epoch, writer: seen.append(epoch) or {"val_score": float(epoch)}, 2, Board())
    recorder = Recorder()
    Trainer(ToyStep(), toy_loader(), epochs=5, hooks=[validation, recorder]).fit()
    assert seen == [1, 3, 4]
    assert ["val_score" in record for record in recorder.records] == [False, True, False, True, True]


class Scores(Hook):
    def __init__(self, scores):
        self.scores = scores

    def after_epoch(self, trainer):
        trainer.record["reward"] = self.scores[trainer.epoch]


def test_the_best_checkpoint_follows_the_named_metric_and_a_stop_request_saves_the_exact_step(tmp_path):
    step = ToyStep()
    run = RunDir(tmp_path)
    checkpointer = Checkpointer({"system": "toy", "stage": "search"}, step.model, optimizer=step)
    checkpoint = Checkpoint(checkpointer, run, DistributedContext(), "reward")
    Trainer(step, toy_loader(), epochs=3, hooks=[Scores([0.2, 0.7, 0.5]), checkpoint]).fit()
    assert checkpoint.best == 0.7 and checkpoint.best_text() == "0.7000"
    assert load_checkpoint(run.best)["epoch"] == 1 and load_checkpoint(run.checkpoint)["epoch"] == 2
    assert load_checkpoint(run.checkpoint)["best"] == {"metric": "reward", "value": 0.7}

    class Flag:  # a StopRequest whose signal has arrived
        def requested(self, context):
            return signal.SIGTERM

    stopping = Checkpoint(checkpointer, run, DistributedContext(), "reward", best=0.7, stop=Flag())
    with pytest.raises(RunInterrupted, match="stopped by SIGTERM after step 1 of epoch 0"):
        Trainer(ToyStep(), toy_loader(), epochs=3, hooks=[stopping]).fit()
    state = load_checkpoint(run.checkpoint)
    assert state["epoch"] == -1 and state["partial_epoch"]["steps"] == 1

    fresh = ToyStep(lr=0.5)
    start, partial, best = resume_point(state, Checkpointer({}, fresh.model, optimizer=fresh), None, "test")
    assert (start, partial.epoch, partial.steps, best) == (0, 0, 1, 0.7)
    assert fresh.learning_rate() == 0.1  # the optimizer's state came back too


def small_segmenter():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 4, 1))


def supervised_step(model, compile):
    from engine.precision import PrecisionStep
    from engine.trainer import SupervisedStep

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - 0.1 * step)
    precision = PrecisionStep(False, torch.device("cpu"), torch.float32)
    return SupervisedStep(model, optimizer, scheduler, precision, torch.device("cpu"), compile=compile)


def test_a_compiled_step_trains_as_the_plain_one_and_checkpoints_the_plain_module():
    """--compile: inductor's kernels reorder floating-point sums, so the losses and weights agree to rounding,
    step by step; the module's own state dict (what checkpoints hold) keeps its plain keys."""
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(2, 3, 12, 12, generator=generator), torch.randint(0, 4, (2, 12, 12), generator=generator))
               for _ in range(3)]
    plain_model, compiled_model = small_segmenter(), small_segmenter()
    plain, compiled = supervised_step(plain_model, False), supervised_step(compiled_model, True)
    assert compiled.forward is not compiled_model and plain.forward is plain_model
    for step, batch in enumerate(batches):
        expected, got = plain(batch, step), compiled(batch, step)
        assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-5, abs=1e-6)
    assert compiled_model.state_dict().keys() == plain_model.state_dict().keys()
    for name, value in plain_model.state_dict().items():
        torch.testing.assert_close(compiled_model.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert compiled.learning_rate() == pytest.approx(plain.learning_rate())


def test_a_step_that_cannot_compile_says_so_in_one_line(monkeypatch):
    import torch._dynamo.exc

    from utils.errors import UserError

    def fails(*args, **kwargs):
        raise torch._dynamo.exc.BackendCompilerFailed(lambda *a: None, RuntimeError("no C++ compiler found"), None)

    monkeypatch.setattr(torch, "compile", lambda model: fails)
    step = supervised_step(small_segmenter(), True)
    with pytest.raises(UserError, match=r"^--compile: torch.compile could not compile the training step "
                                        r"\(RuntimeError: no C\+\+ compiler found\); run without --compile$"):
        step((torch.randn(2, 3, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long)), 0)
