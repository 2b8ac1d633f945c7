"""PPO and REINFORCE on the controller: each moves the policy toward a rewarded action; PPO's first update
changes nothing; a restored agent updates exactly as the one it was saved from."""

import copy

import pytest
import torch

from search.agents import AGENTS, PPO
from search.controller import DecoderController


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


@pytest.mark.parametrize("name, rounds", [("reinforce", 60), ("ppo", 8)])
def test_each_agent_moves_the_policy_toward_a_rewarded_choice(name, rounds):
    torch.manual_seed(0)
    controller = DecoderController("wacv")
    agent = AGENTS[name](controller, lr=0.01)
    start = probability_of(controller, 0, 1)
    generator = torch.Generator().manual_seed(2)
    for _ in range(rounds):
        action, log_prob, _ = controller.sample(generator)
        agent.update(1.0 if action[0] == 1 else 0.0, action, log_prob.item())  # reward: op 1 in template 0
    assert probability_of(controller, 0, 1) > start + 0.1


@pytest.mark.parametrize("name", ["reinforce", "ppo"])
def test_a_restored_agent_updates_exactly_as_the_original(name):
    torch.manual_seed(0)
    first = AGENTS[name](DecoderController("cvpr"), seed=5)
    generator = torch.Generator().manual_seed(4)
    for reward in (0.3, 0.5, 0.4):
        action, log_prob, _ = first.controller.sample(generator)
        first.update(reward, action, log_prob.item())
    second = AGENTS[name](DecoderController("cvpr"), seed=99)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    action, log_prob, _ = first.controller.sample(generator)
    for agent in (first, second):
        agent.update(0.6, action, log_prob.item())
    for key, value in first.controller.state_dict().items():
        assert torch.equal(value, second.controller.state_dict()[key]), key


def test_the_search_script_offers_exactly_the_registered_agents():
    from config_utils.nas_segm_args import nas_segm_parser

    agent_flag = next(action for action in nas_segm_parser()._actions if action.dest == "agent")
    assert set(agent_flag.choices) == set(AGENTS)
