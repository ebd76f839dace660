"""A user's own MNIST classifier, as a module file with factories (tests/test_sources.py loads it by path).

It expects MNIST-normalized input, as most hand-written MNIST models do: the harness puts
`--normalize 0.1307,0.3081` in front of it.
"""

from torch import nn


def build() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, stride=2), nn.ReLU(),   # (B, 16, 12, 12)
        nn.Conv2d(16, 32, 5, stride=2), nn.ReLU(),  # (B, 32, 4, 4)
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
    )


def build_three_channels() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(10))


def not_a_module():
    return {"weights": 1}


def build_normalized() -> nn.Module:
    """The same network with its normalization inside, as a Python-API user would hand it to evaluate()."""
    from robustbench_karp.models import Normalize

    return nn.Sequential(Normalize((0.1307,), (0.3081,)), build())
