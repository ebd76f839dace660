"""Our APGD-CE against the original's (pyautoattack) and torchattacks' port, side by side on the same points.

    python benchmarks/apgd_vs_reference.py --data-dir ../shared/data
    python benchmarks/apgd_vs_reference.py --data-dir ../shared/data --n-examples 1000 --eps 0.1,0.15 --out apgd.json \
        --checkpoint /tmp/apgd-smallcnn.pt   # trains once, then reads it

A smallcnn trained here on the first 12,000 MNIST training images (one epoch of Adam, seeded: about 97%
clean, a minute or more on 2 cores; `--checkpoint` keeps it), the first N test points (default 500), Linf,
APGD-CE with 100 iterations, one random start, one CPU thread (two threads on a loaded 2-core box spend
more time waiting on each other than computing), three ways:

- ours: `APGD(loss="ce")` (attacks/apgd.py): a point leaves the batch at its first misclassified iterate;
- original: `pyautoattack.autopgd_base.APGDAttack(model, n_iter=100, norm="Linf", eps, loss="ce", seed=0)`,
  `perturb(x, y)` (pip install pyautoattack, or the `[reference]` extra): every point runs all 100 iterations;
- torchattacks: `torchattacks.APGD(model, norm="Linf", eps, steps=100, loss="ce", seed=0)`.

For each eps it prints robust accuracy, the points each breaks that ours does not and the reverse,
forward and backward passes (counted by the engine's hook, in images), and wall time (the references reseed
the global RNG: it is forked around them). Every adversarial batch goes through our budget check.

Measured on the dev box's 2-core CPU while other jobs ran (load average 8.6: wall times are inflated about
3.5x, their ratios less so), 2026-12-07, torch 2.14.1, pyautoattack 0.2.0, torchattacks 3.5.1, one thread:

    python benchmarks/apgd_vs_reference.py --data-dir ../shared/data --n-examples 100 --eps 0.1,0.15 \
        --checkpoint /tmp/apgd-smallcnn.pt          (clean accuracy 0.990 on these 100 points)

      eps implementation  robust it-not-ours ours-not-it  forward backward  seconds
      0.1 ours            0.640           0           0     6758     6757     25.7
      0.1 original        0.640           0           0    10099     9999     42.6
      0.1 torchattacks    0.640           0           0    10099     9999     38.2
     0.15 ours            0.240           0           0     3172     3171     13.4
     0.15 original        0.230           1           0    10099     9999     37.7
     0.15 torchattacks    0.230           1           0    10099     9999     39.5

Ours breaks the same points at 0.67x (eps 0.1) and 0.31x (eps 0.15) the original's passes, in 0.60x and
0.36x its time: the more points break early, the more the early exit saves; on a point that stands it
spends what the original spends. The one point at eps 0.15 that both references break and ours does not
is a matter of random starts (each draws its own): from the same start (x itself) tests/test_apgd.py finds
the same points broken and the same best losses as the original's. 50 points on one thread, twice each,
timed the same way: ours 5.8 and 6.6 s, the original 18.6 and 20.0 s at eps 0.15.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch
import torchattacks
from torch.nn import functional as F

from robustbench_karp.attacks.apgd import APGD
from robustbench_karp.data import DATASETS, load_split
from robustbench_karp.evaluation.cost import count_passes
from robustbench_karp.evaluation.engine import predict
from robustbench_karp.sources import new_model
from robustbench_karp.threat import ThreatModel, check_budget


def train_model(data_dir: Path, checkpoint: Path | None) -> torch.nn.Module:
    """smallcnn, one seeded epoch of Adam on 12,000 MNIST training images; read from (or saved to) checkpoint."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = new_model("smallcnn", "mnist")
    if checkpoint is not None and checkpoint.exists():
        model.load_state_dict(torch.load(checkpoint, weights_only=True))
        return model.eval()
    train = load_split(DATASETS.get("mnist"), train=True, data_dir=data_dir, download=False)
    x, y = train.batch(torch.arange(12000))
    opt, gen = torch.optim.Adam(model.parameters(), lr=1e-3), torch.Generator().manual_seed(0)
    model.train()
    for idx in torch.randperm(len(x), generator=gen).split(100):
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    if checkpoint is not None:
        tmp = checkpoint.with_suffix(checkpoint.suffix + ".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(checkpoint)  # atomic
    return model.eval()


def ours(model, x, y, eps):
    return APGD(loss="ce", steps=100)(model, x, y, ThreatModel("linf", eps), torch.Generator().manual_seed(0))


def original(model, x, y, eps):
    from pyautoattack.autopgd_base import APGDAttack

    with torch.random.fork_rng():  # it reseeds the global RNG
        return APGDAttack(model, n_iter=100, norm="Linf", eps=eps, loss="ce", seed=0, device=x.device).perturb(x, y)


def with_torchattacks(model, x, y, eps):
    with torch.random.fork_rng():
        return torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, loss="ce", seed=0)(x, y)


IMPLEMENTATIONS = {"ours": ours, "original": original, "torchattacks": with_torchattacks}


def run(name: str, model, x, y, eps: float, batch_size: int) -> dict:
    """Robust flags and cost of one implementation on the points x (all of them, in batches)."""
    flags, seconds = [], 0.0
    with count_passes(model) as passes:
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            start = time.perf_counter()
            x_adv = IMPLEMENTATIONS[name](model, xb, yb, eps)
            seconds += time.perf_counter() - start
            check_budget(x_adv, xb, ThreatModel("linf", eps))
            flags.append(predict(model, x_adv) == yb)  # (b,): outside the timed part, counted by all alike
    forward, backward = passes.forward - len(x), passes.backward  # less the prediction pass above
    return {"robust": torch.cat(flags), "forward": forward, "backward": backward, "seconds": seconds}


def table(eps: float, results: dict[str, dict]) -> list[dict]:
    base = results["ours"]["robust"]
    rows = []
    for name, r in results.items():
        rows.append({"eps": eps, "implementation": name, "robust_acc": r["robust"].float().mean().item(),
                     "broken_by_it_not_ours": int((~r["robust"] & base).sum()),
                     "broken_by_ours_not_it": int((r["robust"] & ~base).sum()),
                     "forward": r["forward"], "backward": r["backward"], "seconds": r["seconds"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--n-examples", type=int, default=500)
    parser.add_argument("--eps", default="0.1,0.15", help="comma-separated Linf radii")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--checkpoint", type=Path, default=None, help="the trained model: read if there, else saved")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [n for n in IMPLEMENTATIONS if n != "original" or importlib.util.find_spec("pyautoattack") is not None]
    if "original" not in names:
        print("note: pyautoattack is not installed (pip install pyautoattack): the original's rows are skipped")
    start = time.perf_counter()
    model = train_model(args.data_dir, args.checkpoint)
    test = load_split(DATASETS.get("mnist"), train=False, data_dir=args.data_dir, download=False)
    x, y = test.batch(torch.arange(args.n_examples))
    clean = (predict(model, x) == y).float().mean().item()
    print(f"smallcnn ready in {time.perf_counter() - start:.0f} s; clean accuracy {clean:.3f} on {len(x)} test points")
    rows = []
    for eps in (float(e) for e in args.eps.split(",")):
        rows += table(eps, {name: run(name, model, x, y, eps, args.batch_size) for name in names})
    header = f"{'eps':>5} {'implementation':<13} {'robust':>7} {'it-not-ours':>11} {'ours-not-it':>11} " \
             f"{'forward':>8} {'backward':>8} {'seconds':>8}"
    print(header)
    for r in rows:
        print(f"{r['eps']:>5g} {r['implementation']:<13} {r['robust_acc']:>7.3f} {r['broken_by_it_not_ours']:>11} "
              f"{r['broken_by_ours_not_it']:>11} {r['forward']:>8} {r['backward']:>8} {r['seconds']:>8.1f}")
    if args.out:
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(json.dumps({"clean_acc": clean, "n_examples": len(x), "rows": rows}, indent=1))
        tmp.replace(args.out)  # atomic


if __name__ == "__main__":
    main()
