"""Training: the one loop every defense trains through, and the store of what it trained.

    loop.py         fit(): device, autocast, optimizer and schedule, resume state, the overfitting guard
    config.py       TrainConfig: everything that determines the trained weights; the precision it runs in
    checkpoints.py  the trained-model store: a recipe's checkpoint, trained on demand, never substituted
    estimate.py     how long a training would take here, from a few timed steps
    optim.py        optimizers, learning-rate schedules, weight averaging
    logs.py         callbacks, JSONL/CSV logs, TensorBoard

A defense supplies only its loss (robustbench_karp.defenses). Layer: imports evaluation (the
validation PGD), the plugins and everything below them; never the harness, the boards or the CLI.
"""
