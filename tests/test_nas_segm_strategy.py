"""The decoder search's state object: rounds of candidates drawn by index, failures counted and kept from the agent,
and a search restored from its ``state_dict`` (through a checkpoint file) samples and learns exactly as the one it
was saved from."""

import copy

import torch

from engine.checkpoint import Checkpointer, load_checkpoint, save_checkpoint
from search.nas_segm.agents import make_agent
from search.nas_segm.strategy import ControllerSearch

CHECKS = (2, 1)  # validation points of stage 0 and stage 1


def new_search(agent="reinforce", seed=7):  # PPO takes 100 controller steps per update: slow, and its own test
    torch.manual_seed(0)
    return ControllerSearch(make_agent(agent, "wacv", hidden=16, lr=0.01, seed=seed), "wacv", seed, CHECKS)


def scored(plan, reward):
    """A candidate's record as the runner writes it, scored at both stage-0 checks."""
    return {"candidate": plan["candidate"], "genotype": plan["config"], "status": "ok", "reward": reward,
            "checks": [{"stage": 0, "point": 0, "reward": reward / 2}, {"stage": 0, "point": 1, "reward": reward}]}


def failed(plan):
    return {"candidate": plan["candidate"], "genotype": plan["config"], "status": "failed", "failure": "OOM"}


def run_round(search, size, total, rewards):
    plans = search.sample(search.next_round(size, total))
    search.record(plans, [scored(plan, reward) for plan, reward in zip(plans, rewards)], learn=True)
    return plans


def test_rounds_draw_the_same_candidates_whatever_their_size():
    one_by_one, in_threes = new_search(), new_search()
    singles = [run_round(one_by_one, 1, 6, [0.0])[0] for _ in range(3)]
    triple = in_threes.sample(in_threes.next_round(3, 6))
    assert [p["action"] for p in singles] == [p["action"] for p in triple]
    assert in_threes.next_round(4, 5) == range(0, 4) and one_by_one.next_round(4, 5) == range(3, 5)


def test_a_failed_candidate_is_recorded_counted_and_never_reaches_the_agent():
    search = new_search()
    controller = copy.deepcopy(search.agent.controller.state_dict())
    plans = search.sample(search.next_round(2, 10))
    search.record(plans, [failed(plan) for plan in plans], learn=True)
    assert search.failures_in_a_row == 2 and search.next_candidate == 2 and len(search.records) == 2
    assert search.agent.baseline is None
    assert all(torch.equal(value, search.agent.controller.state_dict()[key]) for key, value in controller.items())
    assert all(monitor.n_steps == 0 for stage in search.monitors for monitor in stage)
    run_round(search, 1, 10, [0.4])
    assert search.failures_in_a_row == 0 and search.agent.baseline == 0.4 and search.records[-1]["baseline"] == 0.4
    assert [monitor.n_steps > 0 for monitor in search.monitors[0]] == [True, True] and search.monitors[1][0].n_steps == 0


def test_only_the_sampling_process_teaches_the_agent():
    search = new_search()
    plans = search.sample(search.next_round(1, 10))
    search.record(plans, [scored(plans[0], 0.3)], learn=False)
    assert search.agent.baseline is None and "baseline" not in search.records[0] and search.next_candidate == 1


def test_a_search_restored_from_its_checkpoint_goes_on_exactly(tmp_path):
    original = new_search()
    for rewards in ([0.1, 0.5], [0.3, 0.2]):
        run_round(original, 2, 10, rewards)
    path = tmp_path / "checkpoint.pth.tar"
    save_checkpoint(Checkpointer({"system": "nas-segm", "stage": "search"}).state(**original.state_dict()), path)
    restored = new_search()
    restored.load_state_dict(load_checkpoint(path, stage="search"))
    assert (restored.next_candidate, restored.failures_in_a_row, restored.records) == (4, 0, original.records)
    for search in (original, restored):
        run_round(search, 2, 10, [0.6, 0.05])
    assert [r["genotype"] for r in restored.records] == [r["genotype"] for r in original.records]
    assert restored.agent.baseline == original.agent.baseline
    for key, value in original.agent.controller.state_dict().items():
        assert torch.equal(value, restored.agent.controller.state_dict()[key]), key
    assert [m.state_dict() for m in restored.monitors[0]] == [m.state_dict() for m in original.monitors[0]]


def test_random_search_state_holds_no_controller():
    search = new_search("random")
    run_round(search, 2, 4, [0.2, 0.4])
    state = search.state_dict()
    assert state["agent"] == {"baseline": search.agent.baseline} and state["next_candidate"] == 2
    restored = new_search("random")
    restored.load_state_dict(state)
    assert restored.sample(restored.next_round(2, 4)) == search.sample(search.next_round(2, 4))
