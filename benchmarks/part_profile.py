"""Where the time of a forward and backward goes, by named part of a network, backward included.

``PartProfile`` opens a ``torch.profiler`` scope around each part's forward (module hooks, or wrapped functions),
then charges every operator's own CPU time to the innermost scope it ran in. Backward operators run outside those
scopes; each autograd node carries the sequence number of the forward operator that created it, so its time is
charged to that operator's part. What no scope covers is reported as ``other``.

    with PartProfile({"backbone": [model.backbone], ...}, functions={"NMS": [(torchvision.ops.boxes, "nms")]}) as p:
        loss = model(x).sum(); loss.backward()
    print(p.table())
"""

from __future__ import annotations

import types
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

PREFIX = "part:"
BACKWARD = "autograd::engine::evaluate_function: "
OTHER = "other"


class PartProfile:
    """A profiler whose report is seconds per part, forward and backward apart (see the module's docstring).

    ``parts`` names lists of modules; ``functions`` names (module, attribute) pairs whose function is wrapped in a
    scope while profiling (and put back after). Parts may nest (a function called inside a module): the innermost
    scope gets the time."""

    def __init__(self, parts: Mapping[str, Iterable[nn.Module]],
                 functions: Mapping[str, Iterable[tuple[types.ModuleType, str]]] | None = None) -> None:
        self.parts = {name: list(modules) for name, modules in parts.items()}
        self.functions = {name: list(places) for name, places in (functions or {}).items()}
        self.order = [*self.parts, *self.functions, OTHER]
        self.seconds: dict[str, dict[str, float]] = {}
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> PartProfile:
        for name, modules in self.parts.items():
            for module in modules:
                self._scope_module(module, name)
        for name, places in self.functions.items():
            for owner, attribute in places:
                self._scope_function(owner, attribute, name)
        self._profiler = profile(activities=[ProfilerActivity.CPU])
        self._profiler.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._profiler.__exit__(*exc)
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        if exc[0] is None:
            self.seconds = charge(self._profiler.events())

    def _scope_module(self, module: nn.Module, name: str) -> None:
        open_scopes: list[record_function] = []

        def enter(*_: Any) -> None:
            scope = record_function(PREFIX + name)
            scope.__enter__()
            open_scopes.append(scope)

        def leave(*_: Any) -> None:
            open_scopes.pop().__exit__(None, None, None)

        handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
        self._undo.append(lambda: [handle.remove() for handle in handles])

    def _scope_function(self, owner: types.ModuleType, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)

        def scoped(*args: Any, **kwargs: Any) -> Any:
            with record_function(PREFIX + name):
                return original(*args, **kwargs)

        setattr(owner, attribute, scoped)
        self._undo.append(lambda: setattr(owner, attribute, original))

    def table(self, title: str) -> str:
        """One row per part: forward, backward and total milliseconds, and the share of the total."""
        total = sum(sum(times.values()) for times in self.seconds.values()) or 1.0
        rows = [f"{title:<34} {'forward ms':>11} {'backward ms':>12} {'total ms':>9} {'share':>6}"]
        for name in self.order:
            times = self.seconds.get(name, {})
            forward, backward = times.get("forward", 0.0), times.get("backward", 0.0)
            if forward + backward:
                rows.append(f"{name:<34} {1e3 * forward:>11.1f} {1e3 * backward:>12.1f} "
                            f"{1e3 * (forward + backward):>9.1f} {100 * (forward + backward) / total:>5.1f}%")
        rows.append(f"{'all':<34} {'':>11} {'':>12} {1e3 * total:>9.1f}")
        return "\n".join(rows)


def charge(events: Sequence[Any]) -> dict[str, dict[str, float]]:
    """Seconds per part and direction from the profiler's events: each event's own time goes to its innermost
    ``part:`` scope (forward), or, inside an autograd node, to the part of the forward operator of the node's
    sequence number (backward)."""

    def scope_of(event: Any) -> tuple[str | None, Any]:
        """(innermost part name or None, the enclosing autograd node or None)."""
        parent = event
        while parent is not None:
            if parent.name.startswith(PREFIX):
                return parent.name[len(PREFIX):], None
            if parent.name.startswith(BACKWARD):
                return None, parent
            parent = parent.cpu_parent
        return None, None

    # Operators that create no autograd node (their inputs need no gradient) still record the next sequence number,
    # which the node-creating operator then takes: of the forward operators sharing a number, the last one made it.
    forward_part: dict[int, str] = {}
    for event in sorted(events, key=lambda event: event.time_range.start):
        if event.sequence_nr >= 0 and not event.name.startswith(BACKWARD):
            part, node = scope_of(event)
            if node is None:
                forward_part[event.sequence_nr] = part or OTHER
    seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in events:  # a scope's own time (Python between its operators) is charged to the scope itself
        part, node = scope_of(event)
        own = event.self_cpu_time_total / 1e6
        if node is not None:
            seconds[forward_part.get(node.sequence_nr, OTHER)]["backward"] += own
        else:
            seconds[part or OTHER]["forward"] += own
    return {name: dict(times) for name, times in seconds.items()}
