"""Certification: proven lower bounds on robust accuracy, beside the attacks' upper bound.

    cert = certify(model, x, y, norm="linf", eps=0.3, method="crown-ibp")   # (B,) certified, (B,) margin bound
    bound = margins(model, x, y, threat, "ibp")                           # differentiable: certified training

    graph.py      the model's graph from torch.fx; an op outside the supported set is a one-line error
    interval.py   interval bound propagation (IBP) through every step
    linear.py     CROWN's backward linear bounds, over IBP's boxes (CROWN-IBP)
    consistency.py the trace-versus-eager check: the graph bound must be the model that runs
    margins.py    the margin specification, float64 certificates with a safety margin, and certify()

Layer: imports threat, models and torch; attacks and defenses (certified training) build on it.
"""

from robustbench_karp.certification.graph import OPS, UnsupportedOp, trace
from robustbench_karp.certification.margins import (
    METHODS,
    PRECISION,
    Certificate,
    certify,
    check_method,
    exact_float32,
    margins,
    preflight,
)

__all__ = ["METHODS", "OPS", "PRECISION", "Certificate", "UnsupportedOp", "certify", "check_method", "exact_float32", "margins",
           "preflight", "trace"]
