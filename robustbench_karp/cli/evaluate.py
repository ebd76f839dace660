"""`karp-robust evaluate` and `list`: evaluations (training a missing checkpoint on demand) and what the registries hold."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from tabulate import tabulate
from tqdm import tqdm

from robustbench_karp.boards.format import fraction
from robustbench_karp.cli.progress import EvalProgress, TqdmTraining


def parse_attacks(args) -> list:
    from robustbench_karp.attacks import build_attack
    from robustbench_karp.attacks.torchattacks_adapter import TorchAttack, option_name

    specs = [list(a) for a in (args.attacks or [])]
    if len(specs) > 1 and specs[0][0] is None:
        raise ValueError("--attack-arg must follow the --attack it belongs to")
    if not specs or specs[0][0] is None:
        default = specs.pop(0)[1] if specs else {}
        specs.insert(0, ["pgd", default])
    shorthands = {"steps": args.steps, "step_size": args.step_size, "restarts": args.restarts}
    for key, value in shorthands.items():
        if value is None:
            continue
        takers = [s for s in specs if _has_option(s[0], key)]
        if not takers:
            raise ValueError(f"--{key.replace('_', '-')}: none of the attacks {', '.join(s[0] for s in specs)} has it")
        for spec in takers:  # a torchattacks class takes it under its own name (alpha, n_restarts)
            own = option_name(spec[0].split(":", 1)[1], key) if spec[0].startswith("torchattacks:") else key
            spec[1].setdefault(own, str(value))
    attacks = [build_attack(name, options) for name, options in specs]
    for attack in attacks:  # a torchattacks class of another norm fails now, not after a checkpoint is trained
        if isinstance(attack, TorchAttack):
            attack.check_norm(args.norm)
    return attacks


def _has_option(name: str, key: str) -> bool:
    import dataclasses

    from robustbench_karp.attacks import ATTACKS
    from robustbench_karp.attacks.torchattacks_adapter import option_name

    if name.startswith("torchattacks:"):
        return option_name(name.split(":", 1)[1], key) is not None
    return key in {f.name for f in dataclasses.fields(ATTACKS.get(name))}


def train_limit() -> float:
    from robustbench_karp.training.estimate import limit_seconds

    return limit_seconds()


def cmd_evaluate(args) -> int:
    from robustbench_karp.data import DATASETS
    from robustbench_karp.defenses import DEFENSES
    from robustbench_karp.evaluation.protocols import check_additions, get_protocol
    from robustbench_karp.harness import EvalRequest, prepare, run_evaluation
    from robustbench_karp.sources import parse_model
    from robustbench_karp.threat import check_eps
    from robustbench_karp.training.estimate import TrainingClock

    spec = DATASETS.get(args.dataset)
    parse_model(args.model), DEFENSES.get(args.defense)  # fail fast on names
    for eps in args.eps or []:  # eps in the wrong units (8 for 8/255) fails now, before any model is trained
        check_eps(args.norm, eps, (spec.in_channels, spec.input_size, spec.input_size))
    if args.protocol:
        get_protocol(args.protocol)
    named = bool(args.attacks) and args.attacks[0][0] is not None  # --attack given (not only --attack-arg)
    check_additions(args.protocol, named)  # --protocol autoattack is exactly AutoAttack standard: nothing added
    if args.protocol and not named and (args.attacks or any(v is not None for v in (args.steps, args.step_size,
                                                                                   args.restarts))):
        raise ValueError("--attack-arg, --steps, --step-size and --restarts apply to an --attack: a protocol's attacks "
                         "run with their declared options (add --attack NAME to run one more beside them)")
    attacks = [] if args.protocol and not named else parse_attacks(args)
    base = EvalRequest(model=args.model, dataset=args.dataset, defense=args.defense,
                       defense_options=dict(args.defense_arg), attacks=attacks, norm=args.norm,
                       n_examples=args.n_examples, seed=args.seed, batch_size=args.batch_size, device=args.device,
                       checkpoint=args.checkpoint, data_dir=args.data_dir, download=args.download,
                       protocol=args.protocol, normalize=args.normalize, robustbench_dir=args.robustbench_dir,
                       restart=args.restart or bool(args.save_adversarial),  # every batch's x_adv: none resumed
                       random_weights=args.random_weights, certify=args.certify, train_eps=args.train_eps,
                       weights_in_factory=args.weights_in_factory, model_name=args.name,
                       train_limit_seconds=math.inf if args.train else train_limit())  # estimated either way
    hint = train_eps_hint(args, spec.default_eps[args.norm])
    if hint:
        print(hint, file=sys.stderr)
    records = []
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 prints and writes the record
    for eps in args.eps or [None]:
        req = EvalRequest(**{**base.__dict__, "eps": eps})
        clock = TrainingClock(say=lambda line: tqdm.write(line, file=sys.stderr), tty=sys.stderr.isatty())
        prepared = prepare(req, train_callbacks=[TqdmTraining(), clock])  # a fresh model per config: nothing carries over
        with EvalProgress() as progress:
            saver, collector, reporter = _reporters(args, progress if main_rank else None)
            record = run_evaluation(req, prepared=prepared, on_start=progress.start if main_rank else None,
                                    on_batch=progress.update if main_rank else None, sweep=records,
                                    reporter=reporter)
        if record is None:  # another rank's share is done; rank 0 gathered it
            continue
        records.append(record)
        if saver is not None:
            for png in saver.write(args.save_examples, record, record["config"]["eps"], record["config"]["norm"]):
                print(f"examples: {png}", file=sys.stderr)
        if collector is not None:
            path = save_adversarial(args.save_adversarial, record, collector, req, several=len(args.eps or []) > 1)
            print(f"adversarial examples of all {record['config']['n_examples']} points: {path}", file=sys.stderr)
        if not args.json:
            print_record(record)
    if args.json:
        for record in records:
            print(json.dumps(record, sort_keys=True))
    return 0


def train_eps_hint(args, trains_at: float) -> str | None:
    """'hint: ...' when rows of this model at an evaluated eps (published, or in the store) used a checkpoint
    trained at another eps than trains_at, the one this run uses without --train-eps."""
    from robustbench_karp.cli.leaderboard import default_site
    from robustbench_karp.store import read_records

    if args.train_eps is not None or args.checkpoint or not args.eps:
        return None
    site = default_site()
    records = list(read_records())
    for path in sorted((site / "entries").glob("*.json")) if site and (site / "entries").is_dir() else []:
        records += json.loads(path.read_text()).get("records") or []
    used: dict[float, set[float]] = {}
    for r in records:
        config, trained = r.get("config") or {}, r.get("train_config") or {}
        defense = config.get("defense")
        if (config.get("model"), config.get("dataset"), config.get("norm")) == (args.model, args.dataset, args.norm) \
                and (defense.get("name") if isinstance(defense, dict) else defense) == args.defense \
                and trained.get("eps") is not None and abs(trained["eps"] - trains_at) > 1e-9:
            used.setdefault(config.get("eps"), set()).add(trained["eps"])
    shown = [(eps, sorted(used[e])) for eps in args.eps for e in used if e is not None and abs(e - eps) <= 1e-9]
    if not shown:
        return None
    rows = "; ".join(f"at eps {eps:.6g}, --train-eps {', '.join(f'{t:.6g}' for t in train)}" for eps, train in shown)
    return (f"hint: rows of {args.model}/{args.dataset}/{args.defense} used checkpoints trained at another eps ({rows}); "
            f"without --train-eps this run uses the one trained at eps {trains_at:.6g}")


def _reporters(args, progress):
    """(example saver, adversarial collector, the engine's reporter): the collectors wrap the progress display."""
    from robustbench_karp.evaluation.examples import AdversarialCollector, ExampleSaver

    saver = ExampleSaver(progress) if args.save_examples else None
    if args.save_adversarial and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--save-adversarial collects every batch in one process: run it without torchrun")
    collector = AdversarialCollector(saver or progress) if args.save_adversarial else None
    return saver, collector, collector or saver or progress


def save_adversarial(out: Path, record: dict, collector, req, several: bool) -> Path:
    """Every point's worst-case x_adv (examples.AdversarialCollector) as a tensor file, with its test indices."""
    import torch

    from robustbench_karp.boards.format import eps_label, slug
    from robustbench_karp.data import DATASETS, load_split
    from robustbench_karp.store import atomic_write_bytes

    config = record["config"]
    if several:  # an eps sweep: one file per eps
        out = out.with_name(f"{out.stem}-eps-{slug(eps_label(config['eps']))}{out.suffix}")
    test = load_split(DATASETS.get(config["dataset"]), train=False, data_dir=req.data_dir, download=req.download)
    indices = torch.tensor(record["indices"])
    x, y = test.batch(indices)
    x_adv, broken = collector.tensors(x, config["batch_size"])
    payload = {"x_adv": x_adv, "indices": indices, "y": y, "broken": broken, "record": record["id"],
               "norm": config["norm"], "eps": config["eps"]}
    atomic_write_bytes(out, lambda f: torch.save(payload, f))
    return out


def print_record(record: dict) -> None:
    spent = (record.get("cost") or {}).get("per_attack") or {}
    rows = [["clean", fraction(record["clean_accuracy"]), ""]]
    if record.get("certified_accuracy") is not None:  # proven robust: the attacks skipped these points
        certification = record["certification"]
        rows.append([f"certified ({certification['method']})", fraction(record["certified_accuracy"]),
                     f"{certification['seconds']:.1f}"])
    rows += [[f"after {name}", fraction(acc), f"{spent[name]['wall_seconds']:.1f}" if name in spent else ""]
             for name, acc in ((n, record["per_attack"][n]) for n in record.get("attack_order") or record["per_attack"])]
    rows.append(["robust (worst case)", fraction(record["robust_accuracy"]), ""])
    config = record["config"]
    defense = config["defense"]["name"]
    if config.get("source") and defense == "standard":
        defense = "its own weights"  # a zoo, file, torchvision or Python model: not trained here
    title = (f"{config['model']} / {config['dataset']} / {defense}   {config['norm']} eps={config['eps']:.6g}"
             f"   n={config['n_examples']}   seed={config['seed']}"
             + (f"   protocol {', '.join(record['protocols'])}" if record.get("protocols") else ""))
    print(title)
    print(tabulate(rows, headers=["", "accuracy", "seconds"], tablefmt="github", disable_numparse=True,
                   colalign=("left", "right", "right")))
    for warning in record.get("warnings", []):
        print(f"warning: {warning}")
    if record.get("indicators"):  # attack-failure indicators, one line (records from before them have none)
        from robustbench_karp.evaluation.indicator_rules import summary_line

        print(summary_line(record["indicators"]))
    if record.get("escalations"):  # what the strong cascade ran more of, and why (records from before it have none)
        from robustbench_karp.evaluation.recording import escalation_line

        print(escalation_line(record["escalations"]))
    print(f"record {record['id']}  ({record['elapsed_seconds']:.1f} s on {record['device']})")


def torchattacks_lines(norms: dict[str, list | None]) -> list[str]:
    """`list`'s torchattacks classes, grouped by the threat model they can run under (the adapter's NORMS)."""
    groups: dict[str, list[str]] = {}
    for name, entry in sorted(norms.items()):
        norm, bounded = entry if entry else ("not in the adapter's table", False)
        if norm in ("Linf", "L2"):
            key = f"--norm {norm.lower()}"
            name += "" if bounded else "*"
        elif norm.startswith("its `norm`"):
            key = "--norm linf or l2"
        elif norm == "any":
            key = "any norm"
        else:
            key = "refused"
            name += f" ({norm})"
        groups.setdefault(key, []).append(name)
    lines = ["torchattacks:<Class>, by the threat model each can run under:"]
    for key in ("--norm linf", "--norm l2", "--norm linf or l2", "any norm"):
        if key in groups:
            lines.append(f"  {key}: " + ", ".join(groups[key]))
    if any(n.endswith("*") for n in groups.get("--norm l2", []) + groups.get("--norm linf", [])):
        lines.append("  (* minimum-norm attacks: their output is projected onto the run's eps-ball)")
    if "refused" in groups:
        lines.append("  refused, no threat model here for their norm: " + ", ".join(groups["refused"]))
    return lines


def cmd_list(args) -> int:
    from robustbench_karp.catalog import facts

    known = facts()  # from KARP_HOME's cache once computed: no torch import
    print("models:   " + ", ".join(known["models"]))
    print("          also robustbench:<ModelID>, path/to/file.py:factory, torchvision:<name>")
    rows = [[name, eps["linf"], eps["l2"]] for name, eps in sorted(known["datasets"].items())]
    print("datasets: " + ", ".join(sorted(known["datasets"])))
    print(tabulate(rows, headers=["dataset", "linf eps", "l2 eps"], tablefmt="github", floatfmt=".6g"))
    print("attacks:  " + ", ".join(known["attacks"]))
    for line in torchattacks_lines(known["torchattacks_norms"]):
        print("          " + line)
    print("defenses: " + ", ".join(sorted(known["defenses"])))
    return 0
