"""`strong` against the original AutoAttack (pyautoattack) and our `autoattack`, on the same points of each model.

    python benchmarks/strong_vs_autoattack.py --dataset digits --n-examples 100          # seconds of training
    python benchmarks/strong_vs_autoattack.py --dataset mnist --data-dir ../shared/data --n-examples 1000 \\
        --models smallcnn:pgd-at,smallcnn:trades,quantized:smallcnn:pgd-at
    python benchmarks/strong_vs_autoattack.py --models smallcnn=ckpt/pgd-at.pt,quantized:smallcnn=ckpt/pgd-at.pt

A model is MODEL:DEFENSE (the registered recipe, from the store under $KARP_HOME, trained when missing: on
MNIST that is many minutes per adversarial epoch on a CPU), MODEL=CHECKPOINT (a checkpoint file of that
architecture), or quantized:<either> (the model behind an input quantization round(x * L) / L, L = --levels:
zero input gradients everywhere, a masked model that white-box attacks cannot break and `strong` must
escalate on). Every implementation attacks the first --n-examples test points, Linf at --eps (default: the
dataset's), on the CPU, one after the other:

- original: `pyautoattack.AutoAttack(model, norm='Linf', eps=eps, version='standard', seed=0)` (the original,
  https://github.com/fra31/auto-attack, packaged; pip install pyautoattack, in the [reference] extra),
  `run_standard_evaluation`, global RNG forked around it (it reseeds);
- autoattack: ours (attacks/autoattack.py) through the engine's cascade (`run_attacks`);
- strong: `strong` with its default options (attacks/strong.py), through the engine, escalations included.

One table: robust accuracy; the points the original broke that this one missed, and the points this one
broke that the original missed; forward and backward passes through the network (evaluation/cost.py's
count_passes, the clean pass included); wall time; strong's (and ours') ratios to the original. Each
adversarial batch goes through our budget check. Then, per model, the escalations strong ran and why.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from robustbench_karp.api import load_model
from robustbench_karp.attacks import build_attack
from robustbench_karp.data import DATASETS, load_split, subset_indices
from robustbench_karp.evaluation.cost import count_passes
from robustbench_karp.evaluation.engine import predict, run_attacks
from robustbench_karp.threat import ThreatModel, check_budget

DIGITS_MODELS = "smallcnn:standard,smallcnn:pgd-at,quantized:smallcnn:pgd-at"
MNIST_MODELS = "smallcnn:standard,smallcnn:pgd-at,quantized:smallcnn:pgd-at"
NAMES = ("original", "autoattack", "strong")


class QuantizedInput(nn.Module):
    """model(round(x * levels) / levels): the rounding's gradient is zero, so every input gradient is (masking)."""

    def __init__(self, model: nn.Module, levels: int):
        super().__init__()
        self.model, self.levels = model, levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * self.levels) / self.levels)


def load(spec: str, args) -> nn.Module:
    """A model from MODEL:DEFENSE, MODEL=CHECKPOINT or quantized:<either>, in eval mode on args.device."""
    if spec.startswith("quantized:"):
        return QuantizedInput(load(spec.removeprefix("quantized:"), args), args.levels).eval()
    if "=" in spec:
        name, checkpoint = spec.split("=", 1)
        return load_model(name, dataset=args.dataset, checkpoint=checkpoint, device=args.device)
    name, _, defense = spec.partition(":")
    return load_model(name, dataset=args.dataset, defense=defense or "standard", data_dir=args.data_dir,
                      device=args.device, download=args.dataset != "mnist")


def sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize()


def original(model, x, y, threat, args) -> tuple[torch.Tensor, dict]:
    """The original AutoAttack standard on x, y (on their device): (robust flags (N,), its passes and seconds)."""
    from pyautoattack import AutoAttack as Original

    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []), count_passes(model) as passes:  # it reseeds
        attack = Original(model, norm="Linf", eps=threat.eps, version="standard", seed=0, device=x.device)
        sync(x)
        start = time.perf_counter()
        x_adv, _ = attack.run_standard_evaluation(x, y, batch_size=args.batch_size)  # (x_adv, its labels)
        sync(x)
        seconds = time.perf_counter() - start
    check_budget(x_adv, x, threat)
    return (predict(model, x_adv) == y).cpu(), {"forward": passes.forward, "backward": passes.backward, "seconds": seconds}


def engine(attack_name: str):
    def run(model, x, y, threat, args) -> tuple[torch.Tensor, dict]:
        batches = zip(x.split(args.batch_size), y.split(args.batch_size))
        result = run_attacks(model, batches, [build_attack(attack_name)], threat,  # it checks every batch's budget
                             torch.Generator(device=x.device).manual_seed(0), x.device)
        escalated = {name: c["attacked_points"] for name, c in result.cost["per_attack"].items()
                     if c["attacked_points"] and name.startswith("strong/") and name not in BASE}
        return torch.tensor(result.robust), {"forward": result.cost["forward_passes"],
                                             "backward": result.cost["backward_passes"],
                                             "seconds": result.elapsed_seconds, "per_attack": result.per_attack,
                                             "escalated": escalated,
                                             "escalations": getattr(result, "escalations", None)}
    return run


BASE = ("strong/apgd-ce", "strong/apgd-t", "strong/square-near", "strong/square")
RUNNERS = {"original": original, "autoattack": engine("autoattack"), "strong": engine("strong")}


def compare(spec: str, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, args) -> list[dict]:
    model = load(spec, args)
    clean = float((predict(model, x) == y).float().mean())
    flags, used = {}, {}
    for name in args.implementations:
        flags[name], used[name] = RUNNERS[name](model, x, y, threat, args)
        print(f"{spec} {name}: robust {float(flags[name].float().mean()):.3f}, {used[name]['seconds']:.1f} s",
              file=sys.stderr, flush=True)
    ref = flags.get("original")
    rows = []
    for name in args.implementations:
        row = {"model": spec, "clean": clean, "implementation": name, "robust": float(flags[name].float().mean()),
               **used[name]}
        if ref is not None:  # broken = not robust: a point the original broke and this one did not, and back
            row["missed"] = int((~ref & flags[name]).sum())
            row["extra"] = int((ref & ~flags[name]).sum())
            for key in ("forward", "backward", "seconds"):
                row[f"{key}_ratio"] = used[name][key] / max(used["original"][key], 1e-9)
        rows.append(row)
    return rows


def table(rows: list[dict], n: int) -> str:
    head = ("| model (clean) | attack | robust acc | broken by original only | broken by this only | forward | "
            "backward | seconds | forward / original | backward / original | time / original |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ratios = [f"{r[k]:.2f}" if k in r else "-" for k in ("forward_ratio", "backward_ratio", "seconds_ratio")]
        lines.append(f"| {r['model']} ({r['clean']:.3f}) | {r['implementation']} | {r['robust']:.3f} | "
                     f"{r.get('missed', '-')} | {r.get('extra', '-')} | {r['forward']:,} | {r['backward']:,} | "
                     f"{r['seconds']:.1f} | {' | '.join(ratios)} |")
    lines.append(f"\n{n} points each. Broken by original only: points the original AutoAttack broke that this attack "
                 "left standing (the target: 0 for strong).")
    for r in rows:
        if r["implementation"] == "strong":
            fired = sorted({f"{e['component']} ({e['rule']} {e['value']:.3g} > {e['threshold']:g})"
                            for e in r.get("escalations") or []})
            attacked = ", ".join(f"{name} on {k} point(s)" for name, k in r["escalated"].items())
            lines.append(f"strong on {r['model']}: escalations {'; '.join(fired) or 'none'}"
                         + (f"; ran {attacked}" if attacked else ""))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help=f"comma-separated (default on digits: {DIGITS_MODELS})")
    parser.add_argument("--dataset", default="digits", choices=["digits", "mnist"])
    parser.add_argument("--n-examples", type=int, default=100)
    parser.add_argument("--eps", type=float, default=None, help="Linf radius (default: the dataset's, 0.1 on digits)")
    parser.add_argument("--data-dir", type=Path, default=None, help="where MNIST/raw is (mnist only)")
    parser.add_argument("--levels", type=int, default=2, help="quantization levels of a quantized: model")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on a busy small CPU)")
    parser.add_argument("--implementations", default=",".join(NAMES), help="a subset of original,autoattack,strong")
    parser.add_argument("--device", default="cpu", help="cpu (this benchmark's figures), or cuda (gpu_check.py)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    args.models = (args.models or (DIGITS_MODELS if args.dataset == "digits" else MNIST_MODELS)).split(",")
    args.implementations = args.implementations.split(",")
    unknown = sorted(set(args.implementations) - set(NAMES))
    if unknown:
        parser.error(f"unknown implementation {', '.join(unknown)}; valid: {', '.join(NAMES)}")
    if "original" in args.implementations and importlib.util.find_spec("pyautoattack") is None:
        print("note: pyautoattack (the original AutoAttack) is not installed: pip install -e '.[reference]'; "
              "its rows are skipped")
        args.implementations.remove("original")
    if args.dataset == "mnist" and args.data_dir is None:
        parser.error("--dataset mnist needs --data-dir (the folder holding MNIST/raw)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = DATASETS.get(args.dataset)
    threat = ThreatModel("linf", spec.default_eps["linf"] if args.eps is None else args.eps)
    test = load_split(spec, train=False, data_dir=args.data_dir, download=False)
    x, y = test.batch(subset_indices(len(test), args.n_examples))  # (N, C, H, W), (N,)
    x, y = x.to(args.device), y.to(args.device)
    rows = [row for model in args.models for row in compare(model, x, y, threat, args)]
    print(f"{args.dataset}, Linf eps {threat.eps:g}, first {len(x)} test points, {args.device}, {args.threads} threads")
    print(table(rows, len(x)))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
