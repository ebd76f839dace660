"""What an evaluation cost: forward and backward passes through the model, counted by the engine.

    with count_passes(model) as passes:
        x_adv = attack(model, x, y, threat, gen)
    passes.forward, passes.backward            # images forwarded, images whose logits were back-propagated

The counts come from hooks on the network, never from a formula per attack: whatever an attack
does (restarts, early stop, EOT samples, torchattacks' own loops), what runs through the network is
counted. A backward pass is counted per image each time a gradient flows back through the
network's logits (torch.autograd.grad or .backward()), so PGD-k with early stop off is exactly k
backward passes per attacked point.

Hooks rather than a wrapping module: attacks look at the model's own attributes (`preprocess` and
`classifier` of a purifier, for BPDA and transfer attacks), which a wrapper would hide. For such a
model the classifier is the network counted: model(x) runs it once, and so does a direct call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where passes are counted: the leaderboard's cost summaries need none
    from torch import nn


@dataclass
class Passes:
    forward: int = 0  # images forwarded through the network
    backward: int = 0  # images whose logits a gradient flowed back through


def counted_network(model: nn.Module) -> nn.Module:
    """The network whose passes count: a purifier's classifier, else the model itself."""
    from torch import nn

    classifier = getattr(model, "classifier", None)
    return classifier if isinstance(classifier, nn.Module) else model


@contextlib.contextmanager
def count_passes(model: nn.Module, on_pass: Callable[[int], None] | None = None,
                 on_output: Callable[[Any], None] | None = None) -> Iterator[Passes]:
    """Count the passes through model's network while the block runs; the hook is removed in finally.

    on_pass(forward passes so far) after each forward pass: progress within an attack, at no cost.
    on_output(the network's output) after each forward pass: the progress display's live count of broken points.
    """
    import torch

    passes = Passes()

    def on_forward(module: nn.Module, inputs: tuple, output) -> None:
        n = inputs[0].shape[0] if inputs and torch.is_tensor(inputs[0]) and inputs[0].dim() > 0 else 0
        passes.forward += n
        if on_pass is not None:
            on_pass(passes.forward)
        if on_output is not None:
            on_output(output)
        if torch.is_tensor(output) and output.requires_grad:
            def on_backward(grad: torch.Tensor) -> None:
                passes.backward += n

            output.register_hook(on_backward)

    on_forward.observes_only = True  # it changes no value: certification (graph.py) allows it
    handle = counted_network(model).register_forward_hook(on_forward)
    try:
        yield passes
    finally:
        handle.remove()


def attack_cost(attacked: int, forward: int, backward: int, seconds: float) -> dict[str, Any]:
    """One attack's cost in a record: totals, and per attacked point."""
    per = max(attacked, 1)
    return {"attacked_points": attacked, "forward_passes": forward, "backward_passes": backward,
            "forward_per_point": forward / per, "backward_per_point": backward / per, "wall_seconds": seconds}
