"""The `karp-robust` command line. Only this part prints and draws progress bars.

    karp-robust evaluate --model resnet18 --attack pgd
    karp-robust train --model smallcnn --dataset mnist --defense fgsm-at --eps 0.3 --epochs 10 --seed 0
    karp-robust list

    parser.py       every subcommand's flags
    evaluate.py     evaluate, list
    train.py        train
    compare.py      compare: the defenses x attacks matrix
    leaderboard.py  leaderboard build | publish | add-external | export
    reproduce.py    reproduce
    records.py      records list | show | export
    data.py         data download
    progress.py     the progress bars

Bad input exits with code 2 and one line on stderr (set KARP_DEBUG=1 for the traceback).
Layer: the top. It may import everything; nothing imports it. A command's module is imported only
when that command runs, so `--help`, `list` and `records` never import torch.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from robustbench_karp.registry import UnknownName
from robustbench_karp.store import CheckpointError

log = logging.getLogger("robustbench_karp")
EXIT_USAGE, EXIT_FAILED, EXIT_BUDGET = 2, 1, 3
# command -> "module.function" inside this package; imported only for its own command
COMMANDS = {"evaluate": "evaluate.cmd_evaluate", "train": "train.cmd_train", "list": "evaluate.cmd_list",
            "compare": "compare.cmd_compare", "leaderboard": "leaderboard.cmd_leaderboard",
            "reproduce": "reproduce.cmd_reproduce", "records": "records.cmd_records", "data": "data.cmd_data"}


def _loaded(module: str, name: str) -> type:
    """An exception class from a module, if that module was imported (else no exception can be one)."""
    return getattr(sys.modules.get(module), name, _NeverRaised)


class _NeverRaised(Exception):
    pass


def describe_error(e: Exception) -> tuple[int, str]:
    """(exit code, one-line message) for an exception that reached the CLI."""
    if isinstance(e, _loaded("robustbench_karp.threat", "BudgetViolation")):
        return EXIT_BUDGET, f"an attack left the threat model: {e}"
    if isinstance(e, _loaded("robustbench_karp.training.loop", "TrainingDiverged")):
        return EXIT_FAILED, str(e)
    usage = (UnknownName, ValueError, CheckpointError, FileNotFoundError,
             _loaded("robustbench_karp.data", "DataUnavailable"), _loaded("robustbench_karp.training.loop", "ResumeError"))
    if isinstance(e, usage):
        return EXIT_USAGE, str(e).replace("\n", " ")
    return EXIT_FAILED, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def run(args) -> int:
    module, name = COMMANDS[args.command].split(".")
    return getattr(importlib.import_module(f"robustbench_karp.cli.{module}"), name)(args)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from robustbench_karp.cli.parser import build_parser

    args = build_parser().parse_args(argv)
    from robustbench_karp import progress
    from robustbench_karp.cli.progress import tqdm_progress

    ok = False
    try:
        with progress.use(tqdm_progress):  # library loops (GAN training, ...) get progress bars
            code = run(args)
        ok = code == 0
        if ok:
            from robustbench_karp import catalog

            catalog.warm()  # the registries are loaded now: the next `list` starts without torch
        return code
    except KeyboardInterrupt as e:
        if str(e):  # training says which epoch is saved
            print(f"karp-robust: {e}", file=sys.stderr)
        else:
            kept = ("; finished batches are kept: run the same command again to resume"
                    if args.command in ("evaluate", "compare") and not getattr(args, "save_adversarial", None) else "")
            print(f"karp-robust: interrupted; no record was written{kept}", file=sys.stderr)
        return 130
    except Exception as e:  # one line for the user; the traceback with KARP_DEBUG=1
        if os.environ.get("KARP_DEBUG"):
            raise
        code, message = describe_error(e)
        print(f"karp-robust: error: {message}", file=sys.stderr)
        return code
    finally:
        if "torch.distributed" in sys.modules:  # a command that never imported torch joined no process group
            from robustbench_karp.devices import leave_process_group

            leave_process_group(ok)
