"""Our PGD evaluation against torchattacks.PGD, side by side on the same model and points.

    python benchmarks/pgd_vs_torchattacks.py --data-dir ../shared/data            # standard + fgsm-at smallcnn
    python benchmarks/pgd_vs_torchattacks.py --data-dir ../shared/data --memory   # peak RSS, 1,000 vs 10,000 points

MNIST smallcnn, the first 1000 test points, PGD-40, eps 0.3, step 0.01, two CPU threads. Each
round times our engine (clean pass, then PGD on the points still correct, each point dropped at its
first misclassified iterate) and torchattacks.PGD plus its accuracy count, alternately, and the
medians are compared. The checkpoints come from the store (trained with the defaults if missing).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchattacks

from robustbench_karp.api import load_model
from robustbench_karp.attacks.pgd import PGD
from robustbench_karp.data import DATASETS, load_split, subset_indices
from robustbench_karp.evaluation.engine import predict, run_attacks
from robustbench_karp.threat import ThreatModel


def ours(model, test, indices, args) -> float:
    gen = torch.Generator().manual_seed(0)
    batches = ((x, y) for _, x, y in test.batches(indices, args.batch_size))
    attack = PGD(steps=args.steps, step_size=args.step_size)
    return run_attacks(model, batches, [attack], ThreatModel("linf", args.eps), gen, torch.device("cpu")).robust_accuracy


def reference(model, test, indices, args) -> float:
    correct = 0
    with torch.random.fork_rng():
        torch.manual_seed(0)
        attack = torchattacks.PGD(model, eps=args.eps, alpha=args.step_size, steps=args.steps, random_start=True)
        for _, x, y in test.batches(indices, args.batch_size):
            correct += int((predict(model, attack(x, y)) == y).sum())
    return correct / len(indices)


def compare(defense: str, test, indices, args) -> dict:
    model = load_model("smallcnn", dataset="mnist", defense=defense, data_dir=args.data_dir, device="cpu")
    times = {"ours": [], "torchattacks": []}
    accuracy = {}
    for _ in range(args.rounds):
        for name, fn in (("ours", ours), ("torchattacks", reference)):
            start = time.perf_counter()
            accuracy[name] = fn(model, test, indices, args)
            times[name].append(time.perf_counter() - start)
    t_ours, t_ref = statistics.median(times["ours"]), statistics.median(times["torchattacks"])
    return {"defense": defense, "ours_s": t_ours, "torchattacks_s": t_ref, "time_ratio": t_ours / t_ref,
            "ours_acc": accuracy["ours"], "torchattacks_acc": accuracy["torchattacks"],
            "acc_diff_points": 100 * (accuracy["ours"] - accuracy["torchattacks"])}


def peak_rss_child(args, n: int) -> float:
    """Peak RSS (MiB) of a fresh process evaluating n points with our engine."""
    code = (f"import sys; sys.argv = {[sys.argv[0], '--data-dir', str(args.data_dir), '--child', str(n)]!r}; "
            f"import runpy; runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def child(args) -> None:
    test = load_split(DATASETS.get("mnist"), train=False, data_dir=args.data_dir, download=False)
    model = load_model("smallcnn", dataset="mnist", defense="fgsm-at", data_dir=args.data_dir, device="cpu")
    ours(model, test, subset_indices(len(test), args.child), args)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--n-examples", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--step-size", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--defenses", default="standard,fgsm-at")
    parser.add_argument("--memory", action="store_true", help="peak RSS at 1,000 vs 10,000 points instead")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        return child(args)
    if args.memory:
        small, large = peak_rss_child(args, 1000), peak_rss_child(args, 10000)
        result = {"peak_rss_mib_1000": small, "peak_rss_mib_10000": large, "growth": large / small - 1}
        print(f"peak RSS: {small:.0f} MiB at 1,000 points, {large:.0f} MiB at 10,000 (+{100 * result['growth']:.1f}%)")
    else:
        test = load_split(DATASETS.get("mnist"), train=False, data_dir=args.data_dir, download=False)
        indices = subset_indices(len(test), args.n_examples)
        result = [compare(d, test, indices, args) for d in args.defenses.split(",")]
        print("| defense | ours (s) | torchattacks (s) | time ratio | ours acc | torchattacks acc | diff (points) |")
        print("|---|---|---|---|---|---|---|")
        for r in result:
            print(f"| {r['defense']} | {r['ours_s']:.1f} | {r['torchattacks_s']:.1f} | {r['time_ratio']:.3f} | "
                  f"{r['ours_acc']:.4f} | {r['torchattacks_acc']:.4f} | {r['acc_diff_points']:+.2f} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
