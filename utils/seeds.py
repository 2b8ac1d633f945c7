"""Seeds derived from seeds, so that what one candidate or one draw gets depends on nothing but its own keys."""

from __future__ import annotations

import numpy as np


def derived_seed(*keys: int) -> int:
    """A 63-bit seed that is a well-mixed function of ``keys`` (the run's seed, a candidate's index...), so
    what a candidate draws depends on nothing else: not on the process that trains it, nor on a resume."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0]) >> 1
