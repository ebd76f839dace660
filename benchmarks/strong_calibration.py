"""The evidence behind `strong`'s budgets (attacks/strong.py), on the first --n-examples test points of each model.

    python benchmarks/strong_calibration.py --dataset mnist --data-dir ../shared/data --n-examples 300 \\
        --models smallcnn:pgd-at
    python benchmarks/strong_calibration.py --dataset digits --n-examples 359 --models smallcnn:pgd-at --seeds 0,1

Models are given as in strong_vs_autoattack.py (MODEL:DEFENSE, MODEL=CHECKPOINT, quantized:<either>). For each:

1. targets: APGD-CE from an ODI start on the clean-correct points, then targeted APGD (DLR, MALT order) with 9
   targets on what stands; for every point it breaks, the MALT rank of the class it was pushed to. Then the same
   with 3 and 4 targets: points broken and the passes spent. If every break comes from the first k ranks, k
   targets lose nothing that 9 would find (strong's `targets`).
2. near: on the points still standing, each point's rank by the highest margin (best other logit - true) at the
   white-box x_adv (what strong/square-near reads), and by the clean margin; then Square with 1000 and with
   5000 queries on all of them. Printed: the ranks of the points only 5000 queries broke, and how many of them
   lie in the nearest quarter (strong's `near_share`).
3. --seeds a,b,...: the original AutoAttack (pyautoattack) with each seed on the same points, and how many points
   one seed broke that another missed: the noise floor under "points AutoAttack breaks and strong misses".
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from strong_vs_autoattack import load  # benchmarks/ is sys.path[0] when run as a script

from robustbench_karp.attacks.apgd import APGD
from robustbench_karp.attacks.apgd_rows import malt_order
from robustbench_karp.attacks.autoattack import Square
from robustbench_karp.attacks.base import margin
from robustbench_karp.data import DATASETS, load_split, subset_indices
from robustbench_karp.evaluation.cost import count_passes
from robustbench_karp.evaluation.engine import predict
from robustbench_karp.threat import ThreatModel


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ranks(values: torch.Tensor) -> torch.Tensor:
    """(n,) each entry's place when sorted highest first (0: the highest)."""
    out = torch.empty(len(values), dtype=torch.long)
    out[values.argsort(descending=True, stable=True)] = torch.arange(len(values))
    return out


@torch.no_grad()
def margins(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return margin(model(x), y)


def targets(model, x, y, threat) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Part 1: (points standing after APGD-CE, their labels, their highest white-box margin after APGD-T, 9 targets)."""
    x_ce = APGD(loss="ce", odi_steps=2)(model, x, y, threat, seeded(0))
    best = margins(model, x_ce, y)
    stand = best < 0
    x, y, best = x[stand], y[stand], best[stand]
    print(f"  clean-correct {len(stand)}, standing after APGD-CE {len(x)}")
    order = malt_order(model, x, y, model(x).detach(), 1.0 if threat.norm.value == "linf" else 2.0)
    found = {}
    for k in (9, 4, 3):
        t0 = time.perf_counter()
        with count_passes(model) as passes:
            x_t = APGD(loss="dlr-targeted", targets=k, target_order="malt")(model, x, y, threat, seeded(0))
        pred = predict(model, x_t)
        broken = pred != y
        hit = (order[broken] == pred[broken, None]).float().argmax(1)  # the MALT rank of the class each break reached
        histogram = torch.bincount(hit, minlength=9).tolist() if broken.any() else [0] * 9
        found[k] = broken
        print(f"  {k} targets: broke {int(broken.sum())} of {len(x)}, by MALT rank 0..8: {histogram}; "
              f"{passes.forward:,} forward, {passes.backward:,} backward, {time.perf_counter() - t0:.1f} s")
        if k == 4:  # strong's targets: the margin strong/square-near ranks by
            best = torch.maximum(best, margins(model, x_t, y))
    for k in (4, 3):
        print(f"  {k} targets vs 9: missed {int((found[9] & ~found[k]).sum())}, found {int((found[k] & ~found[9]).sum())} more")
    stand = ~found[9]
    return x[stand], y[stand], best[stand]


def near(model, x, y, best, threat) -> None:
    """Part 2: where the points only a long Square breaks sit, by white-box and by clean margin."""
    by_white, by_clean = ranks(best), ranks(margins(model, x, y))
    broke = {}
    for queries in (1000, 5000):
        t0 = time.perf_counter()
        broke[queries] = predict(model, Square(queries)(model, x, y, threat, seeded(queries))) != y
        print(f"  Square {queries} on all {len(x)} standing: broke {int(broke[queries].sum())} "
              f"({time.perf_counter() - t0:.1f} s)")
    late = broke[5000] & ~broke[1000]
    quarter = math.ceil(len(x) / 4)
    for name, rank in (("white-box margin", by_white), ("clean margin", by_clean)):
        where = sorted(rank[late].tolist())
        print(f"  the {int(late.sum())} only 5000 queries broke, ranked by {name}: {where}; "
              f"{sum(r < quarter for r in where)} in the nearest quarter ({quarter} points)")


def seeds(model, x, y, threat, which: list[int], batch_size: int) -> None:
    """Part 3: the original AutoAttack against itself."""
    from pyautoattack import AutoAttack as Original

    robust = {}
    for seed in which:
        with torch.random.fork_rng():
            attack = Original(model, norm="Linf", eps=threat.eps, version="standard", seed=seed, device=x.device)
            x_adv, _ = attack.run_standard_evaluation(x, y, batch_size=batch_size)
        robust[seed] = predict(model, x_adv) == y
        print(f"  original AutoAttack, seed {seed}: robust {float(robust[seed].float().mean()):.3f}")
    for a in which:
        for b in which:
            if a < b:
                print(f"  seed {a} broke and seed {b} missed {int((~robust[a] & robust[b]).sum())}; "
                      f"seed {b} broke and seed {a} missed {int((~robust[b] & robust[a]).sum())} (of {len(x)} points)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smallcnn:pgd-at")
    parser.add_argument("--dataset", default="digits", choices=["digits", "mnist"])
    parser.add_argument("--n-examples", type=int, default=359)
    parser.add_argument("--eps", type=float, default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seeds", default="", help="comma-separated seeds of the original AutoAttack (part 3)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.dataset == "mnist" and args.data_dir is None:
        parser.error("--dataset mnist needs --data-dir (the folder holding MNIST/raw)")
    torch.set_num_threads(args.threads)
    spec = DATASETS.get(args.dataset)
    threat = ThreatModel("linf", spec.default_eps["linf"] if args.eps is None else args.eps)
    test = load_split(spec, train=False, data_dir=args.data_dir, download=False)
    x, y = test.batch(subset_indices(len(test), args.n_examples))
    print(f"{args.dataset}, Linf eps {threat.eps:g}, first {len(x)} test points, {args.threads} thread(s)")
    for name in args.models.split(","):
        model = load(name, args)
        print(name)
        correct = predict(model, x) == y
        standing, labels, best = targets(model, x[correct], y[correct], threat)
        near(model, standing, labels, best, threat)
        if args.seeds:
            seeds(model, x, y, threat, [int(s) for s in args.seeds.split(",")], args.batch_size)


if __name__ == "__main__":
    main()
