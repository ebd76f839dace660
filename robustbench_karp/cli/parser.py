"""The `karp-robust` argument parser: every subcommand's flags and the types that check them.

Types fail with argparse's one-line message (exit 2). Nothing here imports torch: `--help` and
`--version` must answer at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def eps_list(text: str) -> list[float]:
    """'8/255' or a sweep '0,0.1,0.2' -> [eps, ...], every value finite and >= 0."""
    from robustbench_karp.attacks.base import parse_number  # here, not at the top: --help must not import torch

    values = []
    for part in text.split(","):
        try:
            value = parse_number(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"malformed eps {part!r}: use a number or a fraction such as 8/255") from None
        if not (value >= 0 and value == value and value != float("inf")):
            raise argparse.ArgumentTypeError(f"eps must be >= 0, got {part!r}")
        values.append(value)
    return values


def single_eps(text: str) -> float:
    values = eps_list(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError("give one eps here")
    return values[0]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value

LOGICAL_BATCH = 500

BATCH_HELP = ("the logical batch (part of the config: batch b draws its randomness from the seed and b); on out of GPU "
              "memory each batch reruns in physical pieces of half the rows, which changes no number. auto (the "
              f"default) is {LOGICAL_BATCH}")


def logical_batch(text: str) -> int:
    """--batch-size: a positive integer, or 'auto' (the default logical batch; memory is handled by halving)."""
    return LOGICAL_BATCH if text == "auto" else positive_int(text)


def number(text: str) -> float:
    from robustbench_karp.attacks.base import parse_number

    try:
        return parse_number(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


class AttackAction(argparse.Action):
    """--attack NAME appends [NAME, {}]; --attack-arg K=V adds to the attack named just before it."""

    def __call__(self, parser, namespace, values, option_string=None):
        attacks = getattr(namespace, "attacks", None) or []
        if option_string == "--attack":
            attacks.append([values, {}])
        else:
            if not attacks:
                attacks.append([None, {}])  # options for the default attack
            key, value = values
            attacks[-1][1][key] = value
        namespace.attacks = attacks


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet18",
                   help="registered model (karp-robust list), robustbench:<ModelID>, path/to/file.py:factory "
                        "or torchvision:<name>")
    p.add_argument("--dataset", default="digits", help="digits (embedded, default), mnist, fashion-mnist, cifar10, ...")
    p.add_argument("--defense", default="standard", help="registered defense the checkpoint was trained with")
    p.add_argument("--norm", default="linf", choices=["linf", "l2"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--data-dir", type=Path, default=None, help="data directory (default $KARP_DATA_DIR or $KARP_HOME/data)")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                   help="download missing torchvision datasets")


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments are one line on stderr and exit 2, like every other bad input (--help still shows usage)."""

    def error(self, message: str):
        usage = " ".join([*self.prog.split(), "--help"])  # prog is "karp-robust evaluate" for a subcommand
        self.exit(2, f"karp-robust: error: {message} ({usage} shows the usage)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="karp-robust", description="Adversarial-robustness benchmarking for PyTorch.")
    parser.add_argument("--version", action=VersionAction, help="print karp-robust's and torch's versions and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    add_evaluate(sub)
    add_train(sub)
    add_publishing(sub)
    sub.add_parser("list", help="registered models, datasets, attacks and defenses")
    add_records(sub)
    add_data(sub)
    return parser


class VersionAction(argparse.Action):
    """--version: karp-robust's and torch's versions from the installed metadata (torch is not imported)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version

        def installed(name: str) -> str:
            try:
                return version(name)
            except PackageNotFoundError:
                return "not installed"

        print(f"karp-robust {installed('karp-robust')} (torch {installed('torch')})")
        parser.exit()


def add_evaluate(sub) -> None:
    ev = sub.add_parser("evaluate", help="clean and robust accuracy of a model; one record per run")
    add_common(ev)
    ev.add_argument("--checkpoint", default=None, help="your own weights (loaded strictly, weights_only)")
    ev.add_argument("--train-eps", type=single_eps, default=None, metavar="EPS",
                    help="use (or train) the checkpoint trained at this eps (default: the dataset's eps)")
    ev.add_argument("--normalize", default=None, metavar="none|MEAN,STD",
                    help="what a model file or torchvision model expects: none ([0, 1] pixels) or C means then C "
                         "stds, e.g. 0.1307,0.3081 (torchvision default: ImageNet's)")
    ev.add_argument("--random-weights", action="store_true",
                    help="evaluate a torchvision model with its random initial weights (without it, --checkpoint is needed)")
    ev.add_argument("--weights-in-factory", action="store_true",
                    help="a model file's factory loads its trained weights itself (without it, --checkpoint is needed)")
    ev.add_argument("--name", default=None, metavar="NAME",
                    help="the name a model file's or torchvision model's records and leaderboard rows show")
    ev.add_argument("--robustbench-dir", type=Path, default=None, metavar="DIR",
                    help="RobustBench checkpoints as <DIR>/<dataset>/<Linf|L2>/<ModelID>.pt "
                         "(default $KARP_HOME/robustbench)")
    ev.add_argument("--defense-arg", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                    help="option of the defense, e.g. steps=100 for defense-gan")
    ev.add_argument("--attack", action=AttackAction, dest="attacks", metavar="NAME",
                    help="attack (repeatable; worst case over all); torchattacks:<Class> for any torchattacks attack")
    ev.add_argument("--attack-arg", action=AttackAction, dest="attacks", type=key_value, metavar="KEY=VALUE",
                    help="option of the --attack just before it, e.g. steps=100")
    ev.add_argument("--steps", type=positive_int, help="steps of every attack that has them")
    ev.add_argument("--step-size", type=number, help="step size (pixel units) of every attack that has one")
    ev.add_argument("--restarts", type=positive_int, help="restarts of every attack that has them")
    ev.add_argument("--eps", type=eps_list, default=None, help="radius in pixel units (8/255); a list sweeps eps")
    ev.add_argument("--n-examples", type=positive_int, default=None,
                    help="evaluate the first N test points (default: 1000, 5000 on imagenet, or the whole split if smaller)")
    ev.add_argument("--batch-size", type=logical_batch, default=LOGICAL_BATCH, metavar="N|auto", help=BATCH_HELP)
    ev.add_argument("--protocol", default=None, metavar="NAME",
                    help="a named, versioned attack set: standard (standard/3: certification, strong, the defense's "
                         "adaptive attacks; --attack adds to it) or autoattack (exactly standard/2: AutoAttack standard)")
    ev.add_argument("--certify", default=None, choices=["ibp", "crown-ibp"],
                    help="prove points robust first (a certified lower bound beside the attacks' upper bound); "
                         "certified points skip every attack")
    ev.add_argument("--json", action="store_true", help="print the record as one JSON object")
    ev.add_argument("--restart", action="store_true",
                    help="discard the finished batches an interrupted run of this config left, instead of resuming them")
    ev.add_argument("--train", action="store_true",
                    help="train a missing checkpoint even when that is estimated to take over 10 minutes")
    ev.add_argument("--save-adversarial", type=Path, default=None, metavar="FILE",
                    help="write every test point's worst-case x_adv (the first attack's success, else the last attempt) "
                         "with its test index, as a tensor file")
    ev.add_argument("--save-examples", type=Path, default=None, metavar="DIR",
                    help="write, per attack, a PNG grid (clean, adversarial, amplified perturbation, labels) and "
                         "the adversarial points as tensors, under DIR/<record id>/")


def add_train(sub) -> None:
    tr = sub.add_parser("train", help="train a model with a defense into the checkpoint store")
    add_common(tr)
    tr.add_argument("--defense-arg", action="append", type=key_value, default=[], metavar="KEY=VALUE")
    tr.add_argument("--eps", type=eps_list, default=None, help="training radius (default: the dataset's)")
    tr.add_argument("--epochs", type=positive_int)
    tr.add_argument("--batch-size", type=positive_int)
    tr.add_argument("--lr", type=number)
    tr.add_argument("--optimizer", choices=["sgd", "adam"])
    tr.add_argument("--schedule", choices=["constant", "piecewise", "onecycle", "cosine"])
    tr.add_argument("--momentum", type=number)
    tr.add_argument("--weight-decay", type=number)
    tr.add_argument("--eps-ramp-epochs", type=number)
    tr.add_argument("--ema-decay", type=number, help="keep an exponential moving average of the weights")
    tr.add_argument("--select", choices=["last", "best"], help="keep the last epoch or the best validation PGD one")
    tr.add_argument("--train-size", type=positive_int, default=None, help="train on the first N training points only")
    tr.add_argument("--amp", choices=["none", "bf16"], default=None, help="bf16 mixed precision for the training step")
    tr.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                    help="channels-last memory format")
    tr.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None,
                    help="the optimizer's fused step (faster; rounds differently, so it is part of the recipe)")
    tr.add_argument("--resume", action="store_true",
                    help="continue an interrupted run of this configuration (the default when one exists)")
    tr.add_argument("--restart", action="store_true", help="discard an interrupted run of this configuration")
    tr.add_argument("--force", action="store_true", help="retrain even if the checkpoint exists")
    tr.add_argument("--out", type=Path, default=None, help="also write a copy of the checkpoint here")
    tr.add_argument("--tensorboard", type=Path, default=None, metavar="DIR")


def add_publishing(sub) -> None:
    cmp = sub.add_parser("compare", help="fill the defenses x attacks matrix (trains and evaluates what is missing)")
    add_common(cmp)
    cmp.add_argument("--defenses", required=True, help="comma-separated defenses, e.g. standard,fgsm-at,pgd-at,trades")
    cmp.add_argument("--attacks", default="fgsm,pgd", help="comma-separated attacks, one column each ('' for none)")
    cmp.add_argument("--attack-arg", action="append", default=[], metavar="ATTACK.KEY=VALUE", help="e.g. pgd.steps=50")
    cmp.add_argument("--eps", type=single_eps, default=None)
    cmp.add_argument("--n-examples", type=positive_int, default=None)
    cmp.add_argument("--batch-size", type=logical_batch, default=LOGICAL_BATCH, metavar="N|auto", help=BATCH_HELP)
    cmp.add_argument("--protocol", default=None, metavar="NAME", help="also run this protocol (e.g. standard) per defense")
    cmp.add_argument("--train", action="store_true",
                     help="train missing checkpoints even when that is estimated to take over 10 minutes")
    cmp.add_argument("--restart", action="store_true",
                     help="discard partial results of these evaluations instead of resuming them")

    lb = sub.add_parser("leaderboard", help="render or publish the leaderboard, import or export RobustBench results")
    lb_sub = lb.add_subparsers(dest="action", required=True)
    for action, text in [("build", "render the store into the repository's leaderboard/"),
                         ("publish", "render the same site into --out DIR")]:
        p = lb_sub.add_parser(action, help=text)
        p.add_argument("--dataset", default=None)
        p.add_argument("--norm", default=None, choices=["linf", "l2"])
        p.add_argument("--eps", type=eps_list, default=None, help="only these eps (comma-separated)")
        p.add_argument("--model", default=None, help="only this model's entries")
        p.add_argument("--defense", default=None, help="only this defense's entries")
        p.add_argument("--out", type=Path, required=action == "publish", default=None)
        p.add_argument("--merge", action="store_true",
                       help="(the default) keep the entries already published there, re-derived from their records, "
                            "beside this store's: a site built from several stores")
        p.add_argument("--prune", action="store_true",
                       help="drop the published entries of the boards built that this store has no records for")
        p.add_argument("--examples", type=Path, default=None, metavar="DIR",
                       help="the `evaluate --save-examples` folder: each entry with a grid there links to it")
    ver = lb_sub.add_parser("verify", help="re-derive a published site from its records; exit 1 on any disagreement")
    ver.add_argument("site", type=Path, nargs="?", default=None, metavar="DIR",
                     help="the published site (default: the repository's leaderboard/)")
    ext = lb_sub.add_parser("add-external", help="import RobustBench model_info JSON files, or a figure from a paper "
                                                 "(--paper), as external entries")
    ext.add_argument("files", type=Path, nargs="*", metavar="FILE",
                     help="model_info/<dataset>/<Linf|L2>/<model id>.json (a re-import replaces the entry's row)")
    ext.add_argument("--dataset", default=None, help="the board's dataset, for a file outside that layout (any "
                                                     "dataset karp-robust knows for --paper)")
    ext.add_argument("--norm", default=None, choices=["linf", "l2"], help="the board's norm, for a file outside it")
    paper = ext.add_argument_group("a figure from a paper (any dataset karp-robust knows; accuracies in percent)")
    paper.add_argument("--paper", default=None, metavar="NAME", help="the model as the paper names it")
    paper.add_argument("--link", default=None, metavar="URL", help="the paper")
    paper.add_argument("--clean", default=None, metavar="PCT", help="clean accuracy, in percent: 99.26")
    paper.add_argument("--robust", default=None, metavar="PCT", help="robust accuracy, in percent: 96.34")
    paper.add_argument("--attack", default=None, help="what measured it: 'AutoAttack (standard)' ranks beside "
                                                      "protocol runs; any other attack is an upper bound")
    paper.add_argument("--eps", default=None, help="as a number or a fraction: 0.3, 8/255")
    paper.add_argument("--n-examples", type=int, default=None, metavar="N",
                       help="test points it was measured on (default: the whole test set)")
    paper.add_argument("--architecture", default=None)
    paper.add_argument("--venue", default=None)
    paper.add_argument("--source", default=None, metavar="URL",
                       help="where the figure was read, if not in the paper (a leaderboard's page)")
    exp = lb_sub.add_parser("export", help="write an entry as a RobustBench model_info JSON, to submit it")
    exp.add_argument("id", help="entry id (from the store, or from leaderboard/entries/*.json)")
    exp.add_argument("--format", default="robustbench", choices=["robustbench"])
    exp.add_argument("--out", type=Path, default=None, help="write the JSON here (default: print it)")
    exp.add_argument("--site", type=Path, default=None, help="published leaderboard directory to look in "
                                                              "(default: the repository's leaderboard/)")

    rep = sub.add_parser("reproduce", help="re-run a record from its configuration and compare every number")
    rep.add_argument("id", help="record id or entry id (from the store, or from leaderboard/entries/*.json)")
    rep.add_argument("--site", type=Path, default=None, help="published leaderboard directory to look in "
                                                              "(default: the repository's leaderboard/)")
    rep.add_argument("--append", action="store_true", help="append the re-run to the store when it matched")
    rep.add_argument("--train-missing", action="store_true",
                     help="rebuild a missing checkpoint by the record's recorded recipe")
    rep.add_argument("--model-file", type=Path, default=None, metavar="PATH",
                     help="a model file record's module, when this store keeps no copy of it (its sha256 must match)")
    rep.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    rep.add_argument("--data-dir", type=Path, default=None)
    rep.add_argument("--download", action=argparse.BooleanOptionalAction, default=True)


def add_records(sub) -> None:
    rec = sub.add_parser("records", help="list, show or export the stored evaluation records")
    rec_sub = rec.add_subparsers(dest="action", required=True)
    ls = rec_sub.add_parser("list", help="one line per record, oldest first")
    ex = rec_sub.add_parser("export", help="every record (or the filtered ones) as CSV or JSON")
    for p in (ls, ex):
        p.add_argument("--model", default=None)
        p.add_argument("--dataset", default=None)
        p.add_argument("--defense", default=None)
        p.add_argument("--attack", default=None, help="records that ran this attack")
    delete = rec_sub.add_parser("delete", help="remove records from the store (published files stay until the next "
                                               "leaderboard build, which drops their rows)")
    delete.add_argument("ids", nargs="+", metavar="ID", help="record ids or unique prefixes")
    delete.add_argument("--yes", action="store_true", help="do not ask first")
    show = rec_sub.add_parser("show", help="one record: configuration, numbers per attack, provenance, warnings")
    show.add_argument("id", help="record id or a unique prefix of it")
    show.add_argument("--json", action="store_true", help="print the stored record as one JSON object")
    ex.add_argument("--format", required=True, choices=["csv", "json"],
                    help="csv: one row per record without masks and indices; json: the full records")
    ex.add_argument("--out", type=Path, default=None, metavar="FILE", help="write here (atomically) instead of stdout")


def add_data(sub) -> None:
    data = sub.add_parser("data", help="get a dataset onto disk")
    data_sub = data.add_subparsers(dest="action", required=True)
    dl = data_sub.add_parser("download", help="download a torchvision dataset (offline: says which files to put where)")
    dl.add_argument("dataset", help="mnist, fashion-mnist, cifar10, cifar100 or svhn")
    dl.add_argument("--data-dir", type=Path, default=None, help="data directory (default $KARP_DATA_DIR or $KARP_HOME/data)")
