"""GAN attacks and defenses on real MNIST: AdvGAN vs PGD-50, and Defense-GAN under plain and adaptive attacks.

    python benchmarks/gan_mnist.py --out gan_mnist.json              # full scale (the store's checkpoints)
    python benchmarks/gan_mnist.py --quick --out /tmp/gan_quick.json  # minutes on a CPU, to check that it runs

Setting: smallcnn, Linf eps 0.3, the first 1000 test points (robustbench_karp.data.subset_indices).
Every accuracy comes from `run_evaluation`, so every run is a record in the store (KARP_HOME):

1. For the `standard` and `fgsm-at` checkpoints (from the store; the harness trains them with the
   registered recipe when missing): accuracy under PGD-50 (step size 0.01) and under AdvGAN in both
   modes (semi-white-box, distilled), one record each; then attack throughput (images/s at attack
   time, generator already trained) of AdvGAN vs PGD-50 on the same points.
2. Defense-GAN (L steps, R restarts) over the standard classifier: clean accuracy; plain PGD through
   the full model (its gradient is zero: a sanity check); transfer PGD; BPDA+EOT PGD; the worst case.
   Each record evaluates one attack first (its own accuracy) followed by the others on the survivors,
   since the harness always adds the defense's adaptive attacks. Also the seconds per image of one
   forward of the defended model.

Cost: the Defense-GAN runs dominate. One forward of the defended model is L*R generator passes per
image, and BPDA multiplies that by steps * eot; at L=200, R=10 plan for a GPU. --quick uses tiny
checkpoints (1 epoch on 2000 images, trained by the project's loop into the store), tiny GANs (AdvGAN:
1 epoch on 2000 images; WGAN-GP: 2 epochs on 5000 images at lr 1e-3), L=20, R=2, 5 attack steps and 50 points.
Prints a Markdown table and writes a JSON summary to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from robustbench_karp import progress
from robustbench_karp.attacks import build_attack
from robustbench_karp.data import DATASETS, load_split, subset_indices
from robustbench_karp.harness import EvalRequest, prepare, run_evaluation
from robustbench_karp.store import atomic_write_text
from robustbench_karp.threat import ThreatModel
from robustbench_karp.threat.context import RunContext
from robustbench_karp.training.checkpoints import obtain_checkpoint
from robustbench_karp.training.config import make_train_config

REPO = Path(__file__).resolve().parents[1]
EPS = 0.3
THREAT = ThreatModel("linf", EPS)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=Path("gan_mnist.json"))
    p.add_argument("--n-examples", type=int, default=1000, help="first N test points")
    p.add_argument("--quick", action="store_true", help="tiny checkpoints, networks and attacks: checks that it runs")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--advgan-epochs", type=int, default=10)
    p.add_argument("--advgan-train-size", type=int, default=None)
    p.add_argument("--dg-steps", type=int, default=200, help="Defense-GAN L: descent steps of the projection")
    p.add_argument("--dg-restarts", type=int, default=10, help="Defense-GAN R: random restarts of the projection")
    p.add_argument("--dg-gan-epochs", type=int, default=10)
    p.add_argument("--dg-gan-train-size", type=int, default=None)
    p.add_argument("--dg-gan-lr", type=float, default=1e-4)
    p.add_argument("--dg-attack-steps", type=int, default=50, help="steps of PGD, transfer and BPDA on Defense-GAN")
    p.add_argument("--dg-eot", type=int, default=2, help="EOT samples of BPDA")
    p.add_argument("--dg-n-examples", type=int, default=None, help="test points for Defense-GAN (default: --n-examples)")
    args = p.parse_args(argv)
    if args.quick:
        args.n_examples, args.batch_size = min(args.n_examples, 50), min(args.batch_size, 50)
        args.advgan_epochs, args.advgan_train_size = 1, 2000
        args.dg_steps, args.dg_restarts, args.dg_gan_epochs, args.dg_gan_train_size, args.dg_gan_lr = 20, 2, 2, 5000, 1e-3
        args.dg_attack_steps = 5
    args.dg_n_examples = args.dg_n_examples or args.n_examples
    return args


def request(args, defense: str, attacks: list, checkpoint: str | None, n: int, options: dict | None = None) -> EvalRequest:
    return EvalRequest(model="smallcnn", dataset="mnist", defense=defense, defense_options=options or {}, attacks=attacks,
                       norm="linf", eps=EPS, n_examples=n, seed=args.seed, batch_size=args.batch_size,
                       device=args.device, checkpoint=checkpoint, data_dir=args.data_dir, download=False)


def quick_checkpoint(args, defense: str) -> str | None:
    """--quick: a one-epoch checkpoint on 2000 images, trained by the project's loop (None: the store's default)."""
    if not args.quick:
        return None
    config = make_train_config("smallcnn", "mnist", defense, recipe_overrides={"epochs": 1}, seed=args.seed, train_size=2000)
    return str(obtain_checkpoint(config, data_dir=args.data_dir, download=False))


def advgan_options(args, mode: str) -> dict:
    options = {"mode": mode, "epochs": args.advgan_epochs, "train_size": args.advgan_train_size}
    return {**options, "width": 8, "surrogate_epochs": 1} if args.quick else options


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(attack, model, x, y, batch_size: int, seed: int) -> float:
    """Attack-time throughput on x, after an untimed warm-up call on 8 images."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    attack(model, x[:8], y[:8], THREAT, gen)
    synchronize(x.device)
    start = time.perf_counter()
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        attack(model, xb, yb, THREAT, gen)
    synchronize(x.device)
    return len(x) / (time.perf_counter() - start)


def context_of(args, provenance: dict, device: torch.device) -> RunContext:
    return RunContext(dataset="mnist", model="smallcnn", data_dir=args.data_dir, download=False, device=device,
                      seed=args.seed, checkpoint_sha256=provenance["checkpoint_sha256"])


def test_points(args, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    test = load_split(DATASETS.get("mnist"), train=False, data_dir=args.data_dir, download=False)
    x, y = test.batch(subset_indices(len(test), n))
    return x.to(device), y.to(device)


def checkpoint_results(args, defense: str) -> dict:
    """PGD-50 and AdvGAN (both modes) on one checkpoint: accuracies (one record each) and throughput."""
    checkpoint = quick_checkpoint(args, defense)
    model, provenance, device = prepared = prepare(request(args, defense, [], checkpoint, args.n_examples))
    attacks = {"pgd-50": build_attack("pgd", {"steps": 50, "step_size": 0.01})}
    attacks |= {f"advgan-{m}": build_attack("advgan", advgan_options(args, m)) for m in ("semi-white-box", "distilled")}
    out = {"checkpoint": provenance["checkpoint"], "checkpoint_sha256": provenance["checkpoint_sha256"]}
    for label, attack in attacks.items():
        record = run_evaluation(request(args, defense, [attack], checkpoint, args.n_examples), prepared=prepared)
        out["clean_accuracy"] = record["clean_accuracy"]
        out[label] = {"accuracy": record["robust_accuracy"], "record": record["id"],
                      "provenance": record["attack_provenance"].get(attack.name)}
    x, y = test_points(args, args.n_examples, device)
    for label, attack in attacks.items():
        bound = attack.bind(context_of(args, provenance, device))  # AdvGAN: the generator is cached by now
        out[label]["images_per_second"] = images_per_second(bound, model, x, y, args.batch_size, args.seed)
    return out


def defense_gan_results(args) -> dict:
    """Defense-GAN over the standard classifier: clean, plain PGD, transfer, BPDA+EOT, worst case, cost per image."""
    checkpoint = quick_checkpoint(args, "standard")
    options = {"steps": args.dg_steps, "restarts": args.dg_restarts, "epochs": args.dg_gan_epochs,
               "train_size": args.dg_gan_train_size, "gan_lr": args.dg_gan_lr}
    request_of = lambda attacks: request(args, "defense-gan", attacks, checkpoint, args.dg_n_examples, options)
    model, _, device = prepared = prepare(request_of([]))  # the classifier with the projection in front
    steps = args.dg_attack_steps
    pgd = build_attack("pgd", {"steps": steps})
    transfer = build_attack("transfer-pgd", {"steps": steps})
    bpda = build_attack("bpda-pgd", {"steps": steps, "samples": args.dg_eot})
    out = {"steps": args.dg_steps, "restarts": args.dg_restarts, "attack_steps": steps, "eot": args.dg_eot}
    for first, rest in [(pgd, [transfer, bpda]), (transfer, [bpda]), (bpda, [transfer])]:
        record = run_evaluation(request_of([first, *rest]), prepared=prepared)
        out[first.name] = {"accuracy": record["per_attack"][first.name], "record": record["id"]}
        if first is pgd:
            out["clean_accuracy"], out["worst_case"] = record["clean_accuracy"], record["robust_accuracy"]
    x, _ = test_points(args, min(args.dg_n_examples, 100), device)
    synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        model(x)
    synchronize(device)
    out["seconds_per_image"] = (time.perf_counter() - start) / len(x)
    return out


def markdown(summary: dict) -> str:
    lines = ["| model | evaluation | accuracy | images/s |", "| --- | --- | --- | --- |"]
    for defense, res in summary["checkpoints"].items():
        lines.append(f"| smallcnn {defense} | clean | {res['clean_accuracy']:.4f} | |")
        for label in ("pgd-50", "advgan-semi-white-box", "advgan-distilled"):
            row = res[label]
            lines.append(f"| smallcnn {defense} | {label} | {row['accuracy']:.4f} | {row['images_per_second']:.1f} |")
    dg = summary["defense_gan"]
    name = f"Defense-GAN (L={dg['steps']}, R={dg['restarts']})"
    lines.append(f"| {name} | clean | {dg['clean_accuracy']:.4f} | {1 / dg['seconds_per_image']:.1f} (defended forward) |")
    for key, label in [("pgd", "plain PGD through the model"), ("transfer-pgd", "transfer PGD"),
                       ("bpda-pgd", f"BPDA+EOT PGD (EOT {dg['eot']})")]:
        lines.append(f"| {name} | {label}, {dg['attack_steps']} steps | {dg[key]['accuracy']:.4f} | |")
    lines.append(f"| {name} | worst case | {dg['worst_case']:.4f} | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    bar = lambda it, total=None, desc="": tqdm(it, total=total, desc=desc, leave=False, file=sys.stderr, disable=None)
    with progress.use(bar):
        summary = {"eps": EPS, "norm": "linf", "n_examples": args.n_examples, "quick": args.quick,
                   "checkpoints": {d: checkpoint_results(args, d) for d in ("standard", "fgsm-at")},
                   "defense_gan": defense_gan_results(args)}
    print(markdown(summary))
    atomic_write_text(args.out, json.dumps(summary, indent=1, sort_keys=True, default=str))
    print(f"\nsummary written to {args.out}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
