"""Mixed precision (--amp) on torch.amp: autocast for forward passes, a gradient scaler for float16.

bfloat16 keeps float32's exponent range and needs no loss scaling; float16 does (on CUDA). Parameters,
optimizer state and the architecture distribution (softmax of α and β) stay in float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.amp import GradScaler

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: float16 on CUDA (the fastest there, with loss scaling), bfloat16 on CPU (no loss scaling
    needed, and the faster of the two there)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return AMP_DTYPES[name]


class PrecisionStep:
    """Backward and optimizer step of one optimizer, with loss scaling when float16 needs it.

    The gradient scaler's state goes into checkpoints (``state_dict``) so a resumed float16 run keeps
    its scale.
    """

    def __init__(self, enabled: bool, device: torch.device, dtype: torch.dtype) -> None:
        self.enabled = enabled
        self.device_type = device.type
        self.dtype = dtype
        self.scaler = GradScaler(device.type, enabled=enabled and dtype == torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    def backward(self, loss: torch.Tensor, inputs: Sequence[torch.Tensor] | None = None) -> None:
        self.scaler.scale(loss).backward(inputs=inputs)

    def step(self, optimizer: torch.optim.Optimizer, clip_params: Sequence[torch.Tensor] = (),
             clip_norm: float = 0.0, before_step: Callable[[], None] | None = None) -> bool:
        """Run ``before_step`` (averaging gradients over processes: before unscaling, so that every process
        sees the same overflow verdict), then unscale, clip, step and update the scale. The gradients are
        released at once (set to None): kept, they would hold memory through the next forward.

        Returns whether the optimizer stepped: False when float16 gradients overflowed, the step was
        skipped and the scale backed off. The caller then leaves its learning-rate schedule alone, so the
        schedule counts the updates actually made.
        """
        if before_step is not None:
            before_step()
        self.scaler.unscale_(optimizer)
        if clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(clip_params, clip_norm)
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return self.scaler.get_scale() >= scale  # the scale shrinks exactly when inf/NaN gradients were found

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scaler.load_state_dict(state)
