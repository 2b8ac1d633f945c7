"""Training and scoring one candidate of a sampled-architecture search (Nekrasov et al.'s decoder search):
the reward, the running-max early termination, Polyak averaging of the weights, the stage-0 feature cache, and
the steps of the two training stages (run by the shared loop, ``engine.trainer``).

These are the pieces the original code defines (DrSleep/nas-segm-pytorch: ``helpers/miou_utils.pyx``,
``helpers/utils.py:TaskPerformer``, ``engine/trainer.py:init_polyak/apply_polyak``), written here to do
what the papers intend where the code did otherwise (see each docstring).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from engine.interrupt import StopRequest
from engine.losses import cross_entropy
from engine.precision import PrecisionStep
from engine.trainer import Hook, NonFiniteLoss, Trainer


def geometric_reward(confusion: np.ndarray | torch.Tensor, omitted: Sequence[int] = ()) -> dict[str, float]:
    """The candidate's reward: the geometric mean of mIoU, mean class accuracy and frequency-weighted IoU
    over the classes present, ``omitted`` classes left out (the original omits VOC's background), from a
    confusion matrix [ground truth, prediction].

    A class counts for the IoU mean where it occurs in the ground truth or the predictions, and for the
    accuracy mean where it occurs in the ground truth. (The original gave a class predicted but absent
    from the ground truth an accuracy of 2 and kept it, inflating the mean accuracy.)
    """
    counts = np.asarray(confusion, dtype=np.float64)
    hits, ground_truth, predicted = np.diag(counts), counts.sum(axis=1), counts.sum(axis=0)
    union = ground_truth + predicted - hits
    kept = np.ones(len(counts), dtype=bool)
    kept[list(omitted)] = False
    in_iou, in_accuracy = kept & (union > 0), kept & (ground_truth > 0)
    if not in_accuracy.any():
        raise ValueError("no kept class occurs in the ground truth: the reward is undefined")
    iou = np.divide(hits, union, out=np.zeros_like(hits), where=union > 0)
    accuracy = np.divide(hits, ground_truth, out=np.zeros_like(hits), where=ground_truth > 0)
    miou, mean_accuracy = iou[in_iou].mean(), accuracy[in_accuracy].mean()
    fw_iou = float((iou * ground_truth)[in_iou].sum() / ground_truth[in_iou].sum())
    reward = float(np.cbrt(miou * mean_accuracy * fw_iou))
    return {"reward": reward, "miou": float(miou), "mean_accuracy": float(mean_accuracy), "fw_iou": fw_iou}


class RunningMaxStop:
    """Early termination of poor candidates (the original's ``TaskPerformer``), one per validation point.

    ``step(value, rng)`` keeps an exponential moving average of the values seen (``decay``, starting from
    ``maxval``; the new value included) and says whether the candidate goes on: always when it beats
    the average, else with probability ``(delta - 1 + value / average) / delta`` (clipped to [0, 1]),
    where ``delta`` shrinks as candidates accumulate (x0.9, 0.8, 0.7, 0.6 at the 100th..400th). The
    state moves the same whatever ``rng`` draws: the draw only decides, so a search can seed it per
    candidate and give the same decisions however its candidates are spread over processes.
    """

    SCHEDULE = {100: 0.9, 200: 0.8, 300: 0.7, 400: 0.6}

    def __init__(self, maxval: float = 0.01, delta: float = 0.9, decay: float = 0.99) -> None:
        self.maxval, self.delta, self.decay, self.n_steps = maxval, delta, decay, 0

    def step(self, value: float, rng: np.random.Generator) -> bool:
        self.delta *= self.SCHEDULE.get(self.n_steps, 1.0)
        self.n_steps += 1
        self.maxval = self.decay * self.maxval + (1 - self.decay) * value
        if value > self.maxval:
            self.n_steps += 1  # as the original: a schedule key may be stepped over
            return True
        return bool(value > self.maxval * (1 - rng.uniform(0, self.delta)))

    def state_dict(self) -> dict[str, Any]:
        return {"maxval": self.maxval, "delta": self.delta, "decay": self.decay, "n_steps": self.n_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.maxval, self.delta, self.decay, self.n_steps = (state["maxval"], state["delta"], state["decay"],
                                                             state["n_steps"])


class PolyakAverage(Hook):
    """Polyak (exponential moving) averages of ``params``: after every step ``avg = decay * avg + (1 - decay)
    * p``, and at the end of every epoch the averages are copied into the parameters (as the original does;
    BatchNorm buffers are not averaged). Starts from the parameters' values when the loop starts."""

    def __init__(self, params: Iterable[nn.Parameter], decay: float) -> None:
        self.params = list(params)
        self.decay = decay
        self.averages: list[torch.Tensor] = []

    def before_train(self, trainer: Trainer) -> None:
        self.averages = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def after_step(self, trainer: Trainer) -> None:
        for average, param in zip(self.averages, self.params):
            average.mul_(self.decay).add_(param.detach(), alpha=1 - self.decay)

    @torch.no_grad()
    def after_epoch(self, trainer: Trainer) -> None:
        for average, param in zip(self.averages, self.params):
            param.copy_(average)


@dataclass(frozen=True)
class CandidateRecipe:
    """How every candidate trains, per stage where a pair (stage 0: the decoder on cached encoder features;
    stage 1: end to end), and how it is scored."""

    epochs: tuple[int, int]
    val_every: tuple[int, int]
    batch_size: tuple[int, int]
    encoder_optim: str
    decoder_optim: str
    encoder_lr: tuple[float, float]
    decoder_lr: tuple[float, float]
    encoder_momentum: tuple[float, float]
    decoder_momentum: tuple[float, float]
    encoder_wd: tuple[float, float]
    decoder_wd: tuple[float, float]
    encoder_grad_clip: float
    decoder_grad_clip: float
    aux_weight: float
    kd_coeff: float  # 0 without distillation
    polyak: bool
    omitted: tuple[int, ...]

    POLYAK_DECAYS = (0.9, 0.99)

    def checks(self, stage: int) -> int:
        """How many times a candidate is scored in ``stage``."""
        return self.epochs[stage] // self.val_every[stage]


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """The original's optimisers: SGD with momentum, or Adam (default betas); weight decay is L2 in both."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@dataclass
class FeatureCache:
    """Stage 0's data, computed once per search: the encoder's features of ``n-task0`` augmented training
    crops (one frozen augmentation each), their labels at the first feature's size (stride 4, nearest), and
    with distillation the teacher's logits at that size. ``features[k]`` is [N, C_k, H_k, W_k]."""

    features: list[torch.Tensor]
    labels: torch.Tensor
    teacher: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        tensors = [*self.features, self.labels] + ([self.teacher] if self.teacher is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)


class CachedFeatures(Dataset):
    """A ``FeatureCache`` read with a ``SeededSampler``'s (index, seed) keys."""

    def __init__(self, cache: FeatureCache) -> None:
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index = key[0]
        item: dict[str, Any] = {"features": [f[index] for f in self.cache.features], "labels": self.cache.labels[index]}
        if self.cache.teacher is not None:
            item["teacher"] = self.cache.teacher[index]
        return item


def downsample_labels(masks: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Masks [N, H, W] at ``size`` by nearest neighbour (label 255 stays 255)."""
    return F.interpolate(masks[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


class EncoderFeatures:
    """Stage 0's inputs of an (images, masks) batch: the frozen encoder's features (eval mode, no gradient), the
    labels at the first feature's size (stride 4, nearest) and, with a teacher, its logits bilinearly brought to
    that size. The cache holds these once per search; without the cache they are recomputed every step."""

    def __init__(self, encoder: nn.Module, teacher: nn.Module | None, device: torch.device) -> None:
        self.encoder, self.teacher, self.device = encoder, teacher, device

    @torch.no_grad()
    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
        images, masks = batch
        images = images.to(self.device, non_blocking=True)
        self.encoder.eval()
        features = self.encoder(images)
        size = features[0].shape[-2:]
        inputs = {"features": features, "labels": downsample_labels(masks.to(self.device), size)}
        if self.teacher is not None:
            inputs["teacher"] = F.interpolate(self.teacher(images).float(), size=size, mode="bilinear",
                                              align_corners=False)
        return inputs


def build_feature_cache(encoder: nn.Module, loader: DataLoader, device: torch.device, store: torch.device,
                        teacher: nn.Module | None = None) -> FeatureCache:
    """Stage 0's inputs of every batch of ``loader``, computed once and kept on ``store`` (the original keeps them
    on the GPU)."""
    prepare = EncoderFeatures(encoder, teacher, device)
    features: list[list[torch.Tensor]] = []
    labels, teacher_logits = [], []
    for batch in tqdm(loader, desc="stage-0 feature cache", leave=False):
        inputs = prepare(batch)
        features.append([f.to(store) for f in inputs["features"]])
        labels.append(inputs["labels"].to(store))
        if teacher is not None:
            teacher_logits.append(inputs["teacher"].to(store))
    return FeatureCache([torch.cat(parts) for parts in zip(*features)], torch.cat(labels),
                        torch.cat(teacher_logits) if teacher is not None else None)


def candidate_loss(logits: torch.Tensor, aux: Sequence[torch.Tensor], labels: torch.Tensor,
                   aux_weight: float) -> torch.Tensor:
    """Cross-entropy of the logits against ``labels`` (logits resized to the labels where their sizes
    differ), plus ``aux_weight`` times each auxiliary head's, its logits upsampled to the labels."""
    def at_labels(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x if x.shape[-2:] == labels.shape[-2:] else F.interpolate(x, size=labels.shape[-2:], mode="bilinear",
                                                                          align_corners=False)
    loss = cross_entropy(at_labels(logits), labels)
    for head in aux:
        loss = loss + aux_weight * cross_entropy(at_labels(head), labels)
    return loss


def _check_finite(loss: torch.Tensor, what: str) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLoss(what, loss.item())


class DecoderStep:
    """Stage 0: the decoder alone on a batch of cached features (or of images, which ``prepare``, an
    ``EncoderFeatures``, turns into features), against the stride-4 labels, plus the distillation term
    ``kd_coeff * MSE(logits at stride 4, teacher logits)`` when the batch holds teacher logits."""

    def __init__(self, decoder: nn.Module, optimizer: torch.optim.Optimizer, precision: PrecisionStep,
                 device: torch.device, recipe: CandidateRecipe, prepare: EncoderFeatures | None = None) -> None:
        self.decoder, self.optimizer, self.precision, self.device, self.recipe = (decoder, optimizer, precision,
                                                                                 device, recipe)
        self.prepare = prepare
        self.params = list(decoder.parameters())

    def train(self) -> None:
        self.decoder.train()

    def start_epoch(self, epoch: int, steps_done: int) -> None:
        pass

    def __call__(self, batch: Any, global_step: int) -> dict[str, float]:
        if self.prepare is not None:
            batch = self.prepare(batch)
        features = [f.to(self.device, non_blocking=True) for f in batch["features"]]
        labels = batch["labels"].to(self.device, non_blocking=True)
        with self.precision.autocast():
            logits, aux = self.decoder.forward_with_aux(features)
        loss = candidate_loss(logits, aux, labels, self.recipe.aux_weight)
        if "teacher" in batch and self.recipe.kd_coeff > 0:
            logits_s4 = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
            loss = loss + self.recipe.kd_coeff * F.mse_loss(logits_s4, batch["teacher"].to(self.device))
        _check_finite(loss, "stage-0")
        self.precision.backward(loss)
        self.precision.step(self.optimizer, self.params, self.recipe.decoder_grad_clip)
        return {"train_loss": loss.item()}

    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


class EndToEndStep:
    """Stage 1: encoder and decoder on image batches, the labels brought down to the logits' size (nearest,
    as the original: the logits are not upsampled); encoder and decoder have their own optimiser and
    gradient clipping, under one loss scale."""

    def __init__(self, network: nn.Module, encoder_optimizer: torch.optim.Optimizer,
                 decoder_optimizer: torch.optim.Optimizer, precision: PrecisionStep, device: torch.device,
                 recipe: CandidateRecipe) -> None:
        self.network, self.precision, self.device, self.recipe = network, precision, device, recipe
        self.parts = ((encoder_optimizer, list(network.encoder.parameters()), recipe.encoder_grad_clip),
                      (decoder_optimizer, list(network.decoder.parameters()), recipe.decoder_grad_clip))

    def train(self) -> None:
        self.network.train()

    def start_epoch(self, epoch: int, steps_done: int) -> None:
        pass

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor], global_step: int) -> dict[str, float]:
        images, masks = batch
        with self.precision.autocast():
            logits, aux = self.network.decoder.forward_with_aux(self.network.encoder(images.to(self.device)))
        labels = downsample_labels(masks.to(self.device), logits.shape[-2:])
        loss = candidate_loss(logits, aux, labels, self.recipe.aux_weight)
        _check_finite(loss, "stage-1")
        scaler = self.precision.scaler
        scaler.scale(loss).backward()
        for optimizer, params, clip in self.parts:
            scaler.unscale_(optimizer)
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(params, clip)
            scaler.step(optimizer)
        scaler.update()
        for optimizer, _, _ in self.parts:
            optimizer.zero_grad(set_to_none=True)
        return {"train_loss": loss.item()}

    def learning_rate(self) -> float:
        return self.parts[1][0].param_groups[0]["lr"]


class CandidateInterrupted(Exception):
    """SIGTERM/SIGINT arrived while a candidate trained: it is dropped, and redone on resume."""


class StopBetweenSteps(Hook):
    """Ends a candidate's training at the next step once a stop was requested in this process."""

    def __init__(self, stop: StopRequest) -> None:
        self.stop = stop

    def after_step(self, trainer: Trainer) -> None:
        if self.stop.signum is not None:
            raise CandidateInterrupted


class ScoreAndDecide(Hook):
    """Every ``val_every`` epochs of a stage: the reward on the held-out split (after Polyak's copy, so the
    averaged weights are scored), and the early-termination rule's verdict; a poor score ends the candidate.
    Each check joins ``outcome["checks"]`` with the epoch's training loss."""

    def __init__(self, stage: int, val_every: int, score: Callable[[], dict[str, float]],
                 decide: Callable[[int, int, float], bool], outcome: dict[str, Any]) -> None:
        self.stage, self.val_every, self.score, self.decide, self.outcome = stage, val_every, score, decide, outcome

    def after_epoch(self, trainer: Trainer) -> None:
        if (trainer.epoch + 1) % self.val_every:
            return
        point = (trainer.epoch + 1) // self.val_every - 1
        scores = self.score()
        trainer.record.update(scores)
        self.outcome.update(scores, stage=self.stage)
        self.outcome["checks"].append({"stage": self.stage, "point": point, "reward": scores["reward"],
                                       "train_loss": trainer.record["train_loss"]})
        if not self.decide(self.stage, point, scores["reward"]):
            self.outcome["stopped_early"] = True
            trainer.should_stop = True
