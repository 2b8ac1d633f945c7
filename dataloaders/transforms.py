"""Joint image/mask transforms on tensors, and the train/eval pipelines built from them.

Images are float32 [3, H, W] in [0, 1] until ``normalize``; masks are int64 [H, W]. Every random
decision draws from an explicit ``torch.Generator`` so that an augmentation depends only on the
seed the sampler hands out, never on the worker that happens to run it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255

ImageMask = tuple[torch.Tensor, torch.Tensor]


def to_tensors(image_np: np.ndarray, mask_np: np.ndarray) -> ImageMask:
    """uint8 [H, W, 3] image and [H, W] mask arrays → float [3, H, W] in [0, 1] and int64 [H, W]."""
    image = torch.from_numpy(np.ascontiguousarray(image_np)).permute(2, 0, 1).float().div_(255)
    mask = torch.from_numpy(np.asarray(mask_np, dtype=np.int64))
    return image, mask


def resize(image: torch.Tensor, mask: torch.Tensor, size_hw: tuple[int, int]) -> ImageMask:
    """Bilinear for the image, nearest for the mask (labels are never blended)."""
    size_hw = (int(size_hw[0]), int(size_hw[1]))
    image = F.interpolate(image[None], size=size_hw, mode="bilinear", align_corners=False)[0]
    # "nearest-exact" samples at pixel centres, the same grid bilinear uses with align_corners=False.
    mask = F.interpolate(mask[None, None].float(), size=size_hw, mode="nearest-exact")[0, 0]
    return image, mask.long()


def resize_short_side(image: torch.Tensor, mask: torch.Tensor, short: int) -> ImageMask:
    """Resize so that the shorter side is ``short``, keeping the aspect ratio."""
    height, width = image.shape[-2:]
    if height <= width:
        return resize(image, mask, (short, max(1, round(width * short / height))))
    return resize(image, mask, (max(1, round(height * short / width)), short))


def pad_to(image: torch.Tensor, mask: torch.Tensor, min_h: int, min_w: int,
           ignore_index: int = IGNORE_INDEX,
           image_fill: float | Sequence[float] = 0.0) -> ImageMask:
    """Pad bottom/right up to at least [min_h, min_w]; padded labels are ``ignore_index``."""
    height, width = image.shape[-2:]
    if height >= min_h and width >= min_w:
        return image, mask
    out_h, out_w = max(height, min_h), max(width, min_w)
    fill = torch.as_tensor(image_fill, dtype=image.dtype).reshape(-1, 1, 1)
    padded_image = fill.expand(image.shape[0], out_h, out_w).clone()
    padded_image[:, :height, :width] = image
    padded_mask = mask.new_full((out_h, out_w), ignore_index)
    padded_mask[:height, :width] = mask
    return padded_image, padded_mask


def random_crop(image: torch.Tensor, mask: torch.Tensor, crop_h: int, crop_w: int,
                generator: torch.Generator) -> ImageMask:
    """A uniformly placed crop; the image must be at least the crop size (pad first)."""
    height, width = image.shape[-2:]
    if height < crop_h or width < crop_w:
        raise ValueError(f"crop {crop_h}x{crop_w} is larger than the {height}x{width} image; "
                         f"lower --crop_size or pad the image first")
    top = int(torch.randint(height - crop_h + 1, (1,), generator=generator))
    left = int(torch.randint(width - crop_w + 1, (1,), generator=generator))
    return (image[:, top:top + crop_h, left:left + crop_w],
            mask[top:top + crop_h, left:left + crop_w])


def random_hflip(image: torch.Tensor, mask: torch.Tensor,
                 generator: torch.Generator) -> ImageMask:
    if torch.rand((), generator=generator) < 0.5:
        return image.flip(-1), mask.flip(-1)
    return image, mask


def random_scale(image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator,
                 scale_range: tuple[float, float] = (0.5, 2.0)) -> ImageMask:
    """Resize both by one factor drawn uniformly from ``scale_range``."""
    low, high = scale_range
    scale = low + (high - low) * float(torch.rand((), generator=generator))
    height, width = image.shape[-2:]
    return resize(image, mask, (max(1, round(height * scale)), max(1, round(width * scale))))


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.as_tensor(mean, dtype=image.dtype).reshape(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=image.dtype).reshape(-1, 1, 1)
    return (image - mean_t) / std_t


class SearchTrainTransform:
    """Architecture search: optional short-side resize → random crop → flip → normalise."""

    def __init__(self, resize: int | None, crop: int) -> None:
        self.resize = resize
        self.crop = crop

    def __call__(self, image_np: np.ndarray, mask_np: np.ndarray,
                 generator: torch.Generator) -> ImageMask:
        image, mask = to_tensors(image_np, mask_np)
        if self.resize is not None:
            image, mask = resize_short_side(image, mask, self.resize)
        image, mask = random_crop(image, mask, self.crop, self.crop, generator)
        image, mask = random_hflip(image, mask, generator)
        return normalize(image, IMAGENET_MEAN, IMAGENET_STD), mask


class RetrainTrainTransform:
    """Retraining: random scale → pad (labels ignored) → random crop → flip → normalise."""

    def __init__(self, crop: int, scale_range: tuple[float, float] = (0.5, 2.0)) -> None:
        self.crop = crop
        self.scale_range = scale_range

    def __call__(self, image_np: np.ndarray, mask_np: np.ndarray,
                 generator: torch.Generator) -> ImageMask:
        image, mask = to_tensors(image_np, mask_np)
        image, mask = random_scale(image, mask, generator, self.scale_range)
        # Padding with the mean colour makes the padded area exactly 0 after normalisation.
        image, mask = pad_to(image, mask, self.crop, self.crop, image_fill=IMAGENET_MEAN)
        image, mask = random_crop(image, mask, self.crop, self.crop, generator)
        image, mask = random_hflip(image, mask, generator)
        return normalize(image, IMAGENET_MEAN, IMAGENET_STD), mask


class EvalTransform:
    """Evaluation: optional short-side resize and normalisation; ``generator`` is unused."""

    def __init__(self, resize: int | None) -> None:
        self.resize = resize

    def __call__(self, image_np: np.ndarray, mask_np: np.ndarray,
                 generator: torch.Generator | None = None) -> ImageMask:
        image, mask = to_tensors(image_np, mask_np)
        if self.resize is not None:
            image, mask = resize_short_side(image, mask, self.resize)
        return normalize(image, IMAGENET_MEAN, IMAGENET_STD), mask
