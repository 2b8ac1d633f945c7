"""The LSTM controller of the decoder search: a policy over decoder genotypes of the CVPR or WACV space
(the original's ``MicroController`` and ``TemplateController``, ``src/rl/micro_controllers.py``).

A two-layer LSTM (hidden 100) first runs a few steps without deciding (one per encoder feature), then
one step per decision, each read by a linear layer. Decisions of one kind share their layer, as in the
original: every op decision reads one layer, and in the WACV space so does every aggregation, template,
repeat and stride decision (the last four blocks, which keep stride 1, read a one-way layer); the
positions and connections have a layer each, their choices growing with the features before them. As in
the original, the next input is the previous LSTM output, not an embedding of the token chosen (so the
original's unused embedding is left out), and the logits of every decision are a fixed function of the
parameters: re-evaluating a sampled action gives its log-probability and entropy exactly. CVPR cell
positions use the CVPR-era layers (layer k may read any of the 3k - 1 features before it: sizes 2, 5, 8),
which the released CVPR arch1 needs; the later refactor of the original narrowed them.
"""

from __future__ import annotations

import torch
from torch import nn

from modeling.nas_segm.micro_decoder import NUM_LAYERS
from modeling.nas_segm.ops import CVPR_OPS, WACV_OPS
from modeling.nas_segm.template_decoder import NUM_BLOCKS

HIDDEN, LSTM_LAYERS, INIT_RANGE = 100, 2, 0.1
CVPR_CELLS, CVPR_FEATURES = 3, 4
WACV_TEMPLATES, WACV_FEATURES, MAX_REPEATS, WACV_AGGREGATIONS = 3, 2, 4, 2


def decision_layers(space: str) -> list[tuple[str, int]]:
    """(layer name, number of choices) of each decision, in sampling order; decisions that name the same layer
    share it."""
    if space == "cvpr":
        connections = [(f"connection{2 * b + i}", CVPR_FEATURES + b) for b in range(CVPR_CELLS) for i in range(2)]
        layers = [decision for k in range(1, NUM_LAYERS)
                  for decision in ((f"position{2 * k - 2}", 3 * k - 1), (f"position{2 * k - 1}", 3 * k - 1),
                                   ("op", len(CVPR_OPS)), ("op", len(CVPR_OPS)))]
        return connections + [("op", len(CVPR_OPS))] + layers
    if space == "wacv":
        templates = [("op", len(WACV_OPS)), ("op", len(WACV_OPS)), ("aggregation", WACV_AGGREGATIONS)] * WACV_TEMPLATES
        blocks = [decision for j in range(NUM_BLOCKS)
                  for decision in ((f"location{2 * j}", WACV_FEATURES + j), (f"location{2 * j + 1}", WACV_FEATURES + j),
                                   ("template", WACV_TEMPLATES), ("repeats", MAX_REPEATS),
                                   ("stride", 2) if j < NUM_BLOCKS // 2 else ("fixed_stride", 1))]
        return templates + blocks
    raise ValueError(f"unknown decoder space {space!r}; expected 'cvpr' or 'wacv'")


def decision_sizes(space: str) -> list[int]:
    """The number of choices of each decision, in sampling order."""
    return [size for _, size in decision_layers(space)]


def action_to_config(space: str, action: list[int]) -> list:
    """The decoder genotype's config lists (``modeling.nas_segm.genotype``) of a sampled action."""
    if space == "cvpr":
        connections = [action[2 * b:2 * b + 2] for b in range(CVPR_CELLS)]
        rest = action[2 * CVPR_CELLS:]
        return [[rest[0], *(rest[1 + 4 * k:5 + 4 * k] for k in range(NUM_LAYERS - 1))], connections]
    templates = [action[3 * t:3 * t + 3] for t in range(WACV_TEMPLATES)]
    rest = action[3 * WACV_TEMPLATES:]
    return [templates, [rest[5 * j:5 * j + 5] for j in range(NUM_BLOCKS)]]


class DecoderController(nn.Module):
    """The policy: ``sample`` draws an action (one choice per decision) with its log-probability and entropy,
    ``evaluate`` scores a given action under the current parameters. Every parameter starts uniform in
    [-0.1, 0.1], as in the original."""

    def __init__(self, space: str, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.space = space
        layers = decision_layers(space)
        self.sizes = [size for _, size in layers]
        self.decisions = [name for name, _ in layers]  # the layer each decision reads
        self.warmup = CVPR_FEATURES if space == "cvpr" else WACV_FEATURES
        self.rnn = nn.LSTM(hidden, hidden, num_layers=LSTM_LAYERS)
        self.first_input = nn.Parameter(torch.zeros(1, 1, hidden))
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, size) for name, size in dict(layers).items()})
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -INIT_RANGE, INIT_RANGE)

    def logits(self) -> list[torch.Tensor]:
        """The logits of every decision, in order (they do not depend on the choices made)."""
        inputs, state, outputs = self.first_input, None, []
        for step in range(self.warmup + len(self.decisions)):
            output, state = self.rnn(inputs, state)
            if step >= self.warmup:
                outputs.append(self.heads[self.decisions[step - self.warmup]](output[0, 0]))
            inputs = output
        return outputs

    def evaluate(self, action: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probability, entropy) of ``action``, both summed over the decisions."""
        if len(action) != len(self.sizes):
            raise ValueError(f"a {self.space} action has {len(self.sizes)} choices, got {len(action)}")
        log_prob, entropy = torch.zeros(()), torch.zeros(())
        for logits, choice in zip(self.logits(), action):
            log_probs = torch.log_softmax(logits, dim=-1)
            log_prob = log_prob + log_probs[choice]
            entropy = entropy - (log_probs.exp() * log_probs).sum()
        return log_prob, entropy

    @torch.no_grad()
    def sample(self, generator: torch.Generator | None = None) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """An action drawn from the policy (with ``generator`` for a reproducible draw), its log-probability and
        its entropy."""
        action = [int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))
                  for logits in self.logits()]
        return (action, *self.evaluate(action))
