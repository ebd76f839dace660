"""`karp-robust evaluate`, `train` and `list`: evaluations, trainings and what the registries hold."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from tabulate import tabulate

from robustbench_karp.boards.format import fraction
from robustbench_karp.cli.progress import EvalProgress, TqdmTraining
from robustbench_karp.store import atomic_write_bytes


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
    from robustbench_karp.evaluation.protocols import get_protocol
    from robustbench_karp.harness import EvalRequest, prepare, run_evaluation
    from robustbench_karp.sources import parse_model
    from robustbench_karp.threat import check_eps

    spec = DATASETS.get(args.dataset)
    parse_model(args.model), DEFENSES.get(args.defense)  # fail fast on names
    for eps in args.eps or []:  # eps in the wrong units (8 for 8/255) fails now, before any model is trained
        check_eps(args.norm, eps, (spec.in_channels, spec.input_size, spec.input_size))
    if args.protocol:
        get_protocol(args.protocol)
    named = bool(args.attacks) and args.attacks[0][0] is not None  # --attack given (not only --attack-arg)
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
                       train_limit_seconds=None if args.train else train_limit())
    records = []
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 prints and writes the record
    for eps in args.eps or [None]:
        req = EvalRequest(**{**base.__dict__, "eps": eps})
        prepared = prepare(req, train_callbacks=[TqdmTraining()])  # a fresh model per config: no state carries over
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
    print(f"record {record['id']}  ({record['elapsed_seconds']:.1f} s on {record['device']})")


def train_config_from_args(args):
    """The TrainConfig a `karp-robust train` command line asks for: the registered recipe plus its flags."""
    from robustbench_karp.data import DATASETS
    from robustbench_karp.models import MODELS
    from robustbench_karp.training.config import make_train_config

    DATASETS.get(args.dataset), MODELS.get(args.model)
    overrides = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "optimizer", "schedule", "momentum",
                                               "weight_decay", "eps_ramp_epochs", "ema_decay", "select", "amp",
                                               "channels_last", "fused")
                 if getattr(args, k) is not None}
    if args.eps is not None and len(args.eps) != 1:
        raise ValueError("train takes a single --eps")
    return make_train_config(args.model, args.dataset, args.defense, defense_options=dict(args.defense_arg),
                             recipe_overrides=overrides, norm=args.norm, eps=args.eps[0] if args.eps else None,
                             seed=args.seed, train_size=args.train_size)


def cmd_train(args) -> int:
    import os

    from robustbench_karp.devices import resolve_device
    from robustbench_karp.training.checkpoints import checkpoint_path
    from robustbench_karp.training.logs import TensorBoardCallback
    from robustbench_karp.training.loop import ResumeError, fit, interrupted_epoch

    config = train_config_from_args(args)
    device = resolve_device(args.device)
    out = checkpoint_path(config, device)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if out.is_file() and not (args.force or args.resume):
        if main_rank:
            print(f"already trained: {out} (use --force to retrain)")
        _copy(out, args.out)
        return 0
    if args.resume and args.restart:
        raise ValueError("--resume and --restart contradict each other: pick one")
    saved = interrupted_epoch(out)
    if args.resume and saved is None:
        raise ResumeError(f"--resume: no interrupted run to resume ({out.with_suffix('.last.pt')} does not exist)")
    if saved is not None and args.restart:
        if main_rank:
            out.with_suffix(".last.pt").unlink(missing_ok=True)
            print(f"--restart: discarded the interrupted run of {out.stem} ({saved} epochs saved)", file=sys.stderr)
        saved = None
    elif saved is not None and main_rank:
        print(f"resuming the interrupted run of {out.stem} after epoch {saved} (--restart starts over)",
              file=sys.stderr)
    callbacks = [TqdmTraining()] if main_rank else []
    if args.tensorboard and main_rank:  # one subdirectory per run, so runs' curves never overlap
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        callbacks.append(TensorBoardCallback(args.tensorboard / f"{out.stem}-{stamp}"))
    if main_rank:
        print(f"training {out.stem}: {json.dumps(asdict(config)['recipe'])}", file=sys.stderr)
    payload = fit(config, out, data_dir=args.data_dir, device=device, download=args.download,
                  resume=saved is not None, callbacks=callbacks)
    if main_rank:
        if payload["stopped_early"]:
            print(f"catastrophic overfitting: stopped after epoch {payload['epochs_completed']}, kept the weights of "
                  f"epoch {payload['selected_epoch']}")
        kept = payload["history"][payload["selected_epoch"] - 1] if payload["history"] else {}
        print(f"checkpoint {out}  (epoch {payload['selected_epoch']}: val clean "
              f"{kept.get('val_clean_accuracy', float('nan')):.4f}, val PGD-10 {kept.get('val_pgd_accuracy', float('nan')):.4f})")
        _copy(out, args.out)
    return 0


def _copy(src, dst) -> None:
    if dst is None:
        return
    with open(src, "rb") as f:
        atomic_write_bytes(dst, lambda out: shutil.copyfileobj(f, out))
    print(f"copied to {dst}")


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
