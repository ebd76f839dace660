"""karp-robust: adversarial-robustness benchmarking for PyTorch.

    from robustbench_karp import evaluate, load_model
    model = load_model("resnet18", dataset="digits", defense="standard")   # trained once, then cached
    result = evaluate(model, x, y, attacks=["pgd"], norm="linf", eps=0.1, seed=0)
    result.clean_accuracy, result.robust_accuracy, result.per_attack
"""

from robustbench_karp.engine import EvalResult, evaluate
from robustbench_karp.harness import load_model

__all__ = ["EvalResult", "evaluate", "load_model"]
