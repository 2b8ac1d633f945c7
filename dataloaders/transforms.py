"""The joint image/mask pipelines of the stage scripts, built from torchvision's ``transforms.v2``.

``transforms.v2`` transforms an image and its mask together: geometric ops apply the same random
parameters to both, resize masks with nearest-neighbour, and leave masks alone in photometric
ops such as blur. A pipeline takes the uint8 arrays a source loads (image [H, W, 3], mask [H, W])
and returns a normalised float32 image [3, H, W] and an int64 mask [H, W].

Randomness comes from torch's default CPU generator, as in torchvision; ``SegmentationDataset``
seeds it per sample (``seeded_rng``), so an augmentation depends on the sampler's seed alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from utils.labels import IGNORE_INDEX
from utils.torchvision_compat import import_torchvision

import_torchvision()
from torchvision import tv_tensors  # noqa: E402 - needs import_torchvision() first
from torchvision.transforms import v2  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The mean colour as uint8: padding with it makes the padded area about 0 after normalisation.
MEAN_FILL = [round(255 * channel) for channel in IMAGENET_MEAN]
PAD_FILL = {tv_tensors.Image: MEAN_FILL, tv_tensors.Mask: IGNORE_INDEX}
BLUR_PROBABILITY, BLUR_KERNEL, BLUR_SIGMA = 0.5, 5, (0.1, 1.0)  # as the DeepLab PyTorch ports blur

ImageMask = tuple[torch.Tensor, torch.Tensor]


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed torch's default CPU generator for the block, then restore its state.

    Only the CPU generator is touched (``torch.manual_seed`` would also reseed every CUDA device
    and so change dropout on the GPU).
    """
    state = torch.default_generator.get_state()
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.default_generator.set_state(state)


class RandomScale(v2.Transform):
    """Resize by one factor drawn uniformly from ``scale_range``: DeepLab's random scale.

    torchvision's resizes pick a target size; the DeepLab recipe scales each image relative to its
    own size, whatever that is, so the factor is drawn here and the resize left to torchvision.
    """

    def __init__(self, scale_range: tuple[float, float]) -> None:
        super().__init__()
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < min <= max, got {scale_range}")
        self.scale_range = (float(low), float(high))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = TF.get_size(next(x for x in flat_inputs if isinstance(x, tv_tensors.Image)))
        low, high = self.scale_range
        scale = low + (high - low) * float(torch.rand(()))
        return {"size": [max(1, round(height * scale)), max(1, round(width * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(TF.resize, inpt, params["size"], antialias=True)


class BoundedRandomScale(v2.Transform):
    """Nekrasov et al.'s resize: a random factor in ``scale_range``, raised until the shorter side reaches
    ``side`` (or, with ``longer``, lowered until the longer side is at most ``side``)."""

    def __init__(self, side: int, scale_range: tuple[float, float] = (1.0, 1.0), longer: bool = False) -> None:
        super().__init__()
        self.side, self.scale_range, self.longer = side, scale_range, longer

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = TF.get_size(next(x for x in flat_inputs if isinstance(x, tv_tensors.Image)))
        low, high = self.scale_range
        scale = low + (high - low) * float(torch.rand(()))
        if self.longer and max(height, width) * scale > self.side:
            scale = self.side / max(height, width)
        elif not self.longer and min(height, width) * scale < self.side:
            scale = self.side / min(height, width)
        return {"size": [max(1, round(height * scale)), max(1, round(width * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(TF.resize, inpt, params["size"], antialias=True)


class PaddedCenterCrop(v2.Transform):
    """The central ``size`` x ``size`` crop, padding a smaller image with the mean colour (its mask with
    label 255), where torchvision's CenterCrop would pad masks with class 0."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = TF.get_size(inpt)
        pad_h, pad_w = max(0, self.size - height), max(0, self.size - width)
        if pad_h or pad_w:
            fill = IGNORE_INDEX if isinstance(inpt, tv_tensors.Mask) else MEAN_FILL
            inpt = self._call_kernel(TF.pad, inpt, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2],
                                     fill=fill)
        return self._call_kernel(TF.center_crop, inpt, [self.size, self.size])


def _writable(array: np.ndarray) -> np.ndarray:
    """A C-contiguous, writable array for torch.from_numpy (Pillow's arrays are read-only views)."""
    return np.require(array, requirements=["C", "W"])


class JointPipeline:
    """uint8 arrays in, normalised image and int64 mask out, through ``steps`` applied to both."""

    def __init__(self, steps: Sequence[v2.Transform]) -> None:
        self.pipeline = v2.Compose([
            *steps,
            v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None},
                       scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> ImageMask:
        image_t = tv_tensors.Image(torch.from_numpy(_writable(image)).permute(2, 0, 1))
        mask_t = tv_tensors.Mask(torch.from_numpy(_writable(mask)))
        out_image, out_mask = self.pipeline(image_t, mask_t)
        return out_image.as_subclass(torch.Tensor), out_mask.as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return repr(self.pipeline)


def search_train_transform(resize: int | None, crop: int) -> JointPipeline:
    """Architecture search: short side resized to ``resize`` → random crop → flip (the paper's
    half-resolution Cityscapes with 321 crops is ``resize=512, crop=321``)."""
    steps = [] if resize is None else [v2.Resize(resize, antialias=True)]
    return JointPipeline(steps + [v2.RandomCrop(crop), v2.RandomHorizontalFlip()])


def retrain_train_transform(crop: int, scale_range: tuple[float, float] = (0.5, 2.0),
                            blur: bool = True) -> JointPipeline:
    """Retraining: random scale → pad (mean colour, label 255) → random crop → flip → blur."""
    steps = [RandomScale(scale_range), v2.RandomCrop(crop, pad_if_needed=True, fill=PAD_FILL),
             v2.RandomHorizontalFlip()]
    if blur:
        steps.append(v2.RandomApply([v2.GaussianBlur(BLUR_KERNEL, BLUR_SIGMA)], p=BLUR_PROBABILITY))
    return JointPipeline(steps)


def candidate_train_transform(side: int, crop: int, longer: bool) -> JointPipeline:
    """Training a candidate of the decoder search: bounded random scale in [0.7, 1.4] → random crop (padded
    where the image is smaller) → flip, as Nekrasov et al. train them."""
    return JointPipeline([BoundedRandomScale(side, (0.7, 1.4), longer),
                          v2.RandomCrop(crop, pad_if_needed=True, fill=PAD_FILL), v2.RandomHorizontalFlip()])


def candidate_eval_transform(side: int, crop: int, longer: bool) -> JointPipeline:
    """Scoring a candidate: the bounded resize at scale 1, then the central crop."""
    return JointPipeline([BoundedRandomScale(side, (1.0, 1.0), longer), PaddedCenterCrop(crop)])


def eval_transform(resize: int | None) -> JointPipeline:
    """Evaluation: the whole image, short side optionally resized, normalised."""
    return JointPipeline([] if resize is None else [v2.Resize(resize, antialias=True)])


def image_to_input(image: np.ndarray) -> torch.Tensor:
    """A uint8 [H, W, 3] image as the normalised float [3, H, W] a model takes (no mask, no resize)."""
    tensor = TF.to_dtype(torch.from_numpy(_writable(image)).permute(2, 0, 1), torch.float32, scale=True)
    return TF.normalize(tensor, IMAGENET_MEAN, IMAGENET_STD)


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """A normalised float image [..., 3, H, W] back to [0, 1] for pictures."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).reshape(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).reshape(3, 1, 1)
    return (image * std + mean).clamp(0, 1)
