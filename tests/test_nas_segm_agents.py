"""PPO and REINFORCE on the controller: each moves the policy toward a rewarded action; PPO's first update
changes nothing; a restored agent updates exactly as the one it was saved from. The random agent draws every
decision uniformly (chi-square), the same actions from the same seed, and learns nothing."""

import copy
import math

import pytest
import torch
from scipy.stats import chisquare

from search.nas_segm import agents
from search.nas_segm.agents import AGENTS, LEARNING_AGENTS, PPO, Agent, RandomSearch, UniformPolicy, make_agent
from search.nas_segm.controller import DecoderController, action_to_config, decision_sizes


def probability_of(controller, decision, choice):
    with torch.no_grad():
        return torch.softmax(controller.logits()[decision], dim=-1)[choice].item()


def test_the_first_ppo_update_leaves_the_controller_unchanged():
    torch.manual_seed(0)
    controller = DecoderController("wacv")
    before = copy.deepcopy(controller.state_dict())
    agent = PPO(controller)
    action, log_prob, _ = controller.sample(torch.Generator().manual_seed(1))
    agent.update(0.7, action, log_prob.item())
    assert all(torch.equal(value, controller.state_dict()[key]) for key, value in before.items())
    assert agent.baseline == 0.7 and agent.inserted == 1


# PPO's rounds take 100 steps each and learn only once a reward differs from the baseline: its seed draws the
# rewarded choice on the second round only.
@pytest.mark.parametrize("name, rounds, seed", [("reinforce", 60, 2),
                                               pytest.param("ppo", 2, 3, marks=pytest.mark.slow)])
def test_each_agent_moves_the_policy_toward_a_rewarded_choice(name, rounds, seed):
    torch.manual_seed(0)
    controller = DecoderController("wacv")
    agent = LEARNING_AGENTS[name](controller, lr=0.01)
    # The rewarded decision has a layer of its own (block 0's first input: 1, not 0). An op decision would not do:
    # the six share one layer, so rewarding op 1 in one of them alone pulls that layer against itself.
    decision = 9
    start = probability_of(controller, decision, 1)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(rounds):
        action, log_prob, _ = controller.sample(generator)
        agent.update(1.0 if action[decision] == 1 else 0.0, action, log_prob.item())
    assert probability_of(controller, decision, 1) > start + 0.1


@pytest.mark.parametrize("name", ["reinforce", pytest.param("ppo", marks=pytest.mark.slow)])
def test_a_restored_agent_updates_exactly_as_the_original(name):
    torch.manual_seed(0)
    first = LEARNING_AGENTS[name](DecoderController("cvpr"), seed=5)
    generator = torch.Generator().manual_seed(4)
    for reward in (0.3, 0.5):  # the second update moves the controller (the first one cannot)
        action, log_prob, _ = first.controller.sample(generator)
        first.update(reward, action, log_prob.item())
    second = LEARNING_AGENTS[name](DecoderController("cvpr"), seed=99)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    action, log_prob, _ = first.controller.sample(generator)
    for agent in (first, second):
        agent.update(0.6, action, log_prob.item())
    for key, value in first.controller.state_dict().items():
        assert torch.equal(value, second.controller.state_dict()[key]), key


@pytest.mark.parametrize("space", ["cvpr", "wacv"])
def test_every_controller_parameter_takes_part_in_every_evaluation(space):
    """What lets PPO skip a backward pass whose gradient is zero: it would have set every parameter's gradient."""
    torch.manual_seed(0)
    controller = DecoderController(space, hidden=16)
    action, _, _ = controller.sample(torch.Generator().manual_seed(1))
    controller.evaluate(action)[0].backward()
    assert all(parameter.grad is not None for parameter in controller.parameters())


def test_ppo_without_the_zero_gradient_backward_passes_learns_exactly_as_with_them(monkeypatch):
    monkeypatch.setattr(agents, "PPO_BUFFER", 10)  # 3 real slots and 7 empty ones after 3 updates
    torch.manual_seed(0)
    fast, plain = (PPO(DecoderController("wacv", hidden=16), lr=0.01, seed=3) for _ in range(2))
    plain.controller.load_state_dict(fast.controller.state_dict())
    plain._step = lambda loss, zero_gradient=False: Agent._step(plain, loss)  # always the backward pass
    skipped = []
    fast._step = lambda loss, zero_gradient=False: (skipped.append(zero_gradient), Agent._step(fast, loss,
                                                                                                 zero_gradient))
    before = copy.deepcopy(fast.controller.state_dict())
    generator = torch.Generator().manual_seed(4)
    for reward in (0.3, 0.6, 0.1):
        action, log_prob, _ = fast.controller.sample(generator)
        for agent in (fast, plain):
            agent.update(reward, action, log_prob.item())
    assert 0 < sum(skipped) < len(skipped) == 30
    for key, value in fast.controller.state_dict().items():
        assert torch.equal(value, plain.controller.state_dict()[key]), key
    assert not all(torch.equal(value, fast.controller.state_dict()[key]) for key, value in before.items())


def test_the_search_script_offers_exactly_the_registered_agents():
    from config_utils.nas_segm_args import nas_segm_parser

    agent_flag = next(action for action in nas_segm_parser()._actions if action.dest == "agent")
    assert set(agent_flag.choices) == set(AGENTS)


@pytest.mark.parametrize("space", ["cvpr", "wacv"])
def test_the_random_agent_draws_every_decision_uniformly(space):
    policy = make_agent("random", space).controller
    generator = torch.Generator().manual_seed(3)
    draws = 3000
    actions = [policy.sample(generator)[0] for _ in range(draws)]
    sizes = decision_sizes(space)
    for decision, size in enumerate(sizes):
        counts = [sum(action[decision] == choice for action in actions) for choice in range(size)]
        assert sum(counts) == draws and (size == 1 or chisquare(counts).pvalue > 1e-3), (decision, counts)
    for action in actions[:50]:  # every draw is a decoder of the space
        action_to_config(space, action)
    log_prob, entropy = policy.evaluate(actions[0])
    assert log_prob.item() == pytest.approx(-sum(math.log(size) for size in sizes)) == -entropy.item()


def test_the_random_agent_repeats_its_draws_from_a_seed_and_learns_nothing():
    first, second = UniformPolicy("wacv"), UniformPolicy("wacv")
    draws = [first.sample(torch.Generator().manual_seed(seed))[0] for seed in (1, 1, 2)]
    assert draws[0] == draws[1] != draws[2] == second.sample(torch.Generator().manual_seed(2))[0]
    agent = RandomSearch("wacv")
    for reward in (0.2, 0.9):
        agent.update(reward, draws[0], 0.0)
    assert agent.baseline == pytest.approx(0.95 * 0.2 + 0.05 * 0.9)
    assert agent.controller.sample(torch.Generator().manual_seed(1))[0] == draws[0]
    restored = RandomSearch("wacv")
    restored.load_state_dict(agent.state_dict())
    assert restored.baseline == agent.baseline
    with pytest.raises(ValueError, match="not a wacv action"):
        first.evaluate([0] * len(first.sizes[:-1]))
