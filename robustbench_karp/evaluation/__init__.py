"""Evaluation: clean accuracy, then attacks in cascade, per-example worst case; what it cost, what it means.

    engine.py       the cascade over batches (eval mode asserted, budget checked after every attack batch)
    sharded.py      logical batches: per-batch randomness, resuming, torchrun sharding
    evalconfig.py   EvalConfig: everything that decides a number; its hash is the record id
    protocols.py    named, versioned attack sets (standard/1), and which records cover them
    checks.py       sanity checks for gradient masking; each one that fires becomes a warning
    indicators.py   attack-failure indicators on every evaluation (indicator_rules.py: names, thresholds, pure rules)
    cost.py         forward and backward passes through the network, counted with hooks
    examples.py     adversarial examples you can see (evaluate --save-examples)

Layer: imports the plugins (attacks, defenses), threat, sources, data, models, store, devices and
the registry; never training, the harness, the boards or the CLI. protocols.py and cost.py import
torch only inside functions: the boards read them without torch.
"""
