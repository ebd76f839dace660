"""What attacks and defenses are built from: the threat model, the one ascent loop, and what a run tells them.

    threat = ThreatModel("linf", 8 / 255)                 # ball.py: projection, ascent direction, random start
    x_adv, done = ascend(x, objective, threat, steps=10, step_size=2 / 255, random_start=True, gen=gen)
    check_budget(x_adv, x, threat)                        # raises BudgetViolation, never clamps

    ball.py      Linf / L2 balls in [0, 1] pixel space, the budget check
    ascent.py    projected steepest ascent, shared by every attack and adversarial-training defense
    rows.py      physical row pieces: a logical batch through the network in smaller pieces, same numbers
    trace.py     what the ascent loop shows while the engine traces it: losses, gradients, outcomes (indicators)
    context.py   RunContext: what an attack or defense may know about the run beyond (model, x, y)

Layer: imports torch only. Attacks and defenses (the plugins) build
on this part; evaluation and training build on them.
"""

from robustbench_karp.threat.ascent import Objective, ascend
from robustbench_karp.threat.ball import (
    BudgetViolation,
    Norm,
    ThreatModel,
    budget_tolerance,
    check_budget,
    check_eps,
    random_normal,
    random_uniform,
)
from robustbench_karp.threat.context import RunContext

__all__ = ["BudgetViolation", "Norm", "Objective", "RunContext", "ThreatModel", "ascend", "budget_tolerance",
           "check_budget", "check_eps", "random_normal", "random_uniform"]
