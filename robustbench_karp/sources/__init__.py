"""Where a model comes from, behind the one `--model` flag: registered networks, RobustBench's zoo,
a user's module file, torchvision.

    external.py     parse --model; build and load a zoo, file or torchvision model with its own weights
    registered.py   a registered architecture for a dataset, and a checkpoint loaded strictly into it

Layer: imports data, models, zoo, store and the registry; never evaluation, training or the CLI.
"""

from robustbench_karp.sources.external import (
    KINDS,
    Loaded,
    ModelSource,
    build_from_file,
    build_torchvision,
    check_forward,
    describe,
    import_factory,
    load_external,
    load_strict,
    make_normalize,
    mismatch,
    model_state,
    parse_model,
    parse_normalize,
)
from robustbench_karp.sources.registered import load_weights, new_model

__all__ = ["KINDS", "Loaded", "ModelSource", "build_from_file", "build_torchvision", "check_forward", "describe",
           "import_factory", "load_external", "load_strict", "load_weights", "make_normalize", "mismatch", "model_state",
           "new_model", "parse_model", "parse_normalize"]
