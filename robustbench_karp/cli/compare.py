"""`karp-robust compare`: fill the defenses x attacks matrix, training and evaluating only what is missing."""

from __future__ import annotations

import os
import sys

from tabulate import tabulate

from robustbench_karp.boards.format import fraction
from robustbench_karp.cli.leaderboard import entries_of
from robustbench_karp.cli.progress import EvalProgress, TqdmTraining
from robustbench_karp.store import ResultsStore


def parse_compare_options(items: list[str]) -> dict[str, dict[str, str]]:
    """['pgd.steps=50', ...] -> {'pgd': {'steps': '50'}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        attack, dot, key = target.partition(".")
        if not (sep and dot and attack and key):
            raise ValueError(f"--attack-arg for compare is ATTACK.KEY=VALUE (e.g. pgd.steps=50), got {item!r}")
        out.setdefault(attack, {})[key] = value
    return out


def cmd_compare(args) -> int:
    from robustbench_karp.attacks import build_attack
    from robustbench_karp.cli.evaluate import train_limit
    from robustbench_karp.defenses import DEFENSES
    from robustbench_karp.harness import EvalRequest, plan_evaluation, prepare, run_evaluation

    defenses = [d.strip() for d in args.defenses.split(",") if d.strip()]
    attack_names = [a.strip() for a in args.attacks.split(",") if a.strip()]
    if not defenses:
        raise ValueError("--defenses is empty: name at least one defense, e.g. --defenses standard,fgsm-at")
    if not attack_names and not args.protocol:
        raise ValueError("--attacks is empty: name at least one attack, e.g. --attacks fgsm,pgd (or give --protocol)")
    for d in defenses:
        DEFENSES.get(d)
    if args.eps is not None:  # before anything trains: 8 meaning 8/255 is refused
        from robustbench_karp.data import DATASETS
        from robustbench_karp.threat import check_eps

        spec = DATASETS.get(args.dataset)
        check_eps(args.norm, args.eps, (spec.in_channels, spec.input_size, spec.input_size))
    options = parse_compare_options(args.attack_arg)
    attacks = [build_attack(name, options.get(name, {})) for name in attack_names]
    if args.protocol:
        from robustbench_karp.evaluation.protocols import get_protocol

        get_protocol(args.protocol)
    cells = [[a] for a in attacks] + ([[]] if args.protocol else [])  # the protocol gets a column of its own
    store, rows, total, k = ResultsStore(), [], len(defenses) * len(cells), 0
    for defense in defenses:
        base = dict(model=args.model, dataset=args.dataset, defense=defense, norm=args.norm, eps=args.eps,
                    n_examples=args.n_examples, seed=args.seed, batch_size=args.batch_size, device=args.device,
                    data_dir=args.data_dir, download=args.download, restart=args.restart,
                    train_limit_seconds=None if args.train else train_limit())
        records = []
        for cell in cells:
            k += 1
            req = EvalRequest(**base, attacks=cell, protocol=None if cell else args.protocol)
            prepared = prepare(req, train_callbacks=[TqdmTraining()])  # a fresh model per cell: nothing carries over
            plan = plan_evaluation(req, prepared)
            record = store.get(plan.id)
            label = cell[0].name if cell else f"protocol {args.protocol}"
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"[{k}/{total}] {defense} x {label}: {'stored, reused' if record else 'running'}", file=sys.stderr)
            if record is None:
                with EvalProgress() as progress:
                    record = run_evaluation(req, prepared=prepared, plan=plan, on_start=progress.start,
                                            on_batch=progress.update, reporter=progress)
            records.append(record)
        rows.append((defense, records))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 gathered every cell and prints the matrix
        print_matrix(rows, [c[0].name if c else f"protocol {args.protocol}" for c in cells])
    return 0


def print_matrix(rows: list[tuple[str, list[dict]]], columns: list[str]) -> None:
    table = []
    for defense, records in rows:
        entry = entries_of(records)[0]
        cells = [fraction(r["robust_accuracy"]) for r in records]
        worst = f"{fraction(entry['robust_accuracy'])} [{fraction(entry['robust_ci'][0])}, {fraction(entry['robust_ci'][1])}]"
        table.append([defense, fraction(entry["clean_accuracy"]), *cells, worst, str(len(entry["flags"]))])
    print(tabulate(table, headers=["defense", "clean", *columns, "worst case [95% CI]", "flags"],
                   tablefmt="github", disable_numparse=True))
    for defense, records in rows:
        for flag in entries_of(records)[0]["flags"]:
            print(f"warning ({defense}): {flag}")
