"""Benchmark of the decoder search's PPO update: seconds per update at several fillings of its 100-slot buffer, with
the backward passes of zero-gradient slots skipped (what the search does) and with every slot's backward pass run
(the original's arithmetic; the two give the same controller, ``tests/test_nas_segm_agents.py``).

Every update takes one Adam step per slot. Before the buffer is full most slots are empty, and an empty slot's
clipped surrogate is constant (gradient exactly zero), so its step needs the forward pass (to know that) but not
the backward pass. Prints one row per (space, filled slots) with the median of ``--repeats`` updates:

    python benchmarks/controller_update.py
    python benchmarks/controller_update.py --spaces wacv --filled 1 16 100 --threads 1 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from search.nas_segm import agents  # noqa: E402
from search.nas_segm.agents import PPO, Agent  # noqa: E402
from search.nas_segm.controller import DecoderController  # noqa: E402


def filled_agent(space: str, filled: int, seed: int) -> tuple[PPO, torch.Generator]:
    """A PPO agent whose buffer holds ``filled - 1`` sampled actions, so that the next update fills ``filled``."""
    torch.manual_seed(seed)
    agent = PPO(DecoderController(space), seed=seed)
    generator = torch.Generator().manual_seed(seed)
    for slot in range(filled - 1):  # fill the buffer directly: only the update under test is timed
        action, log_prob, _ = agent.controller.sample(generator)
        agent.actions[slot], agent.old_log_probs[slot] = torch.tensor(action), float(log_prob)
        agent.rewards[slot] = 0.2 + 0.01 * slot
        agent._update_baseline(float(agent.rewards[slot]))
    agent.inserted = filled - 1
    return agent, generator


def seconds_per_update(space: str, filled: int, skip: bool, repeats: int) -> float:
    times = []
    for repeat in range(repeats):
        agent, generator = filled_agent(space, filled, repeat)
        if not skip:
            agent._step = lambda loss, zero_gradient=False, agent=agent: Agent._step(agent, loss)
        action, log_prob, _ = agent.controller.sample(generator)
        started = time.perf_counter()
        agent.update(0.3, action, float(log_prob))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spaces", nargs="+", default=["wacv", "cvpr"], choices=["wacv", "cvpr"])
    parser.add_argument("--filled", nargs="+", type=int, default=[1, 16, 100],
                        help="slots holding a candidate after the update (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="updates timed per row; the median is printed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if not all(1 <= filled <= agents.PPO_BUFFER for filled in args.filled) or args.repeats < 1 or args.threads < 1:
        parser.error(f"--filled takes 1..{agents.PPO_BUFFER}; --repeats and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    rows = []
    for space in args.spaces:
        for filled in args.filled:
            skipped, every = (seconds_per_update(space, filled, skip, args.repeats) for skip in (True, False))
            rows.append({"space": space, "filled": filled, "update_s": round(skipped, 3),
                         "every_backward_s": round(every, 3), "speedup": round(every / skipped, 2)})
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'space':<6} {'filled':>6} {'update s':>9} {'every backward s':>17} {'speed-up':>9}")
        for row in rows:
            print(f"{row['space']:<6} {row['filled']:>6} {row['update_s']:>9.3f} {row['every_backward_s']:>17.3f} "
                  f"{row['speedup']:>9.2f}")
    return rows


if __name__ == "__main__":
    main()
