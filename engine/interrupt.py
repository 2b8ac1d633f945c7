"""Stopping a run cleanly on SIGTERM or SIGINT (preemption, Ctrl-C).

The first signal asks the training loop to finish its current step, write a checkpoint of exactly
that point (mid-epoch included) and exit; ``--resume`` then continues from the next step as if
nothing happened. A second Ctrl-C stops at once, with one line saying which checkpoint is left (an
atomic write never leaves a half-written one), and no traceback.
"""

from __future__ import annotations

import signal
import types
from pathlib import Path

import torch
import torch.distributed as dist

from engine.distributed import DistributedContext

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(Exception):
    """Raised after the checkpoint of an interrupted run is written; the CLI exits with ``exit_code``."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for "ended by signal N"


class StopRequest:
    """A context that turns the first SIGTERM/SIGINT into a flag the training loop polls between steps, and a
    second Ctrl-C into ``RunInterrupted`` at once (the user does not want to wait for the step).

    ``checkpoint`` is the file the run resumes from (rank 0's; None where unknown) and ``resume`` how to continue
    from it (default: ``--resume CHECKPOINT``), both quoted when a second Ctrl-C stops the run.
    """

    def __init__(self, checkpoint: Path | None = None, resume: str | None = None) -> None:
        self.signum: int | None = None
        self.checkpoint, self.resume = checkpoint, resume
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
            raise RunInterrupted(f"stopped at once by a second Ctrl-C; {self._kept()}", signum)
        self.signum = signum

    def _kept(self) -> str:
        """What a run stopped at once keeps: its last checkpoint, untouched by the step it was in."""
        if self.checkpoint is None:
            return "the last checkpoint is intact"
        if not self.checkpoint.is_file():
            return f"the run had not written {self.checkpoint} yet: there is nothing to resume"
        return (f"the last checkpoint {self.checkpoint} is intact: "
                f"{self.resume or f'continue with --resume {self.checkpoint}'}")

    def requested(self, context: DistributedContext) -> int | None:
        """The signal that asked to stop, agreed by every process (any rank's signal stops them all at the
        same step, so their checkpoints and collectives stay in step)."""
        if context.enabled:
            flag = torch.tensor([self.signum or 0])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return int(flag.item()) or None
        return self.signum
