"""Stopping a run cleanly on SIGTERM or SIGINT (preemption, Ctrl-C).

The first signal asks the training loop to finish its current step, write a checkpoint of exactly
that point (mid-epoch included) and exit; ``--resume`` then continues from the next step as if
nothing happened. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
import types

import torch
import torch.distributed as dist

from utils.distributed import DistributedContext

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(Exception):
    """Raised after the checkpoint of an interrupted run is written; the CLI exits with ``exit_code``."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for "ended by signal N"


class StopRequest:
    """A context that turns the first SIGTERM/SIGINT into a flag the training loop polls between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        self.signum = signum

    def requested(self, context: DistributedContext) -> int | None:
        """The signal that asked to stop, agreed by every process (any rank's signal stops them all at the
        same step, so their checkpoints and collectives stay in step)."""
        if context.enabled:
            flag = torch.tensor([self.signum or 0])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return int(flag.item()) or None
        return self.signum
