"""What a RobustBench zoo model costs us: checkpoint loading, and PGD-10 against torchattacks on the same network.

    python benchmarks/zoo_costs.py                    # WRN-28-10 (RobustBench's Standard), 100 points, batches of 50
    python benchmarks/zoo_costs.py --skip-pgd         # the load time only (seconds, not minutes)

Load: a WRN-28-10 checkpoint written in RobustBench's download layout ({"state_dict": {"module.<key>": t}},
146 MB), timed through torch.load(weights_only=True) + convert_state_dict + load_state_dict(strict=True);
the median of --load-rounds. PGD: eps 8/255, step 2/255, 10 steps, random start, on random 32x32 inputs
labelled with the network's own predictions (so every point starts correct); our PGD with early_stop=False
(the same work as torchattacks.PGD) and with its default early_stop=True, then torchattacks.PGD.
Random weights: the timing does not depend on them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchattacks

from robustbench_karp.attacks.pgd import PGD
from robustbench_karp.models.base import Classifier, Normalize
from robustbench_karp.threat import ThreatModel
from robustbench_karp.zoo import build_backbone, checkpoint_location, convert_state_dict, lookup


@torch.no_grad()
def predict(model, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def time_load(entry, root: Path, rounds: int) -> tuple[float, float]:
    """(median seconds, file MB) of loading RobustBench's layout into a fresh backbone."""
    path = checkpoint_location(root, entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"module." + k: v for k, v in build_backbone(entry).state_dict().items()}}, path)
    backbone = build_backbone(entry)  # built once: the cost measured is the checkpoint's, not the constructor's
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        payload = torch.load(path, map_location="cpu", weights_only=True)
        backbone.load_state_dict(convert_state_dict(entry, payload), strict=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times), path.stat().st_size / 1e6


def run_ours(model, x, y, args, early_stop: bool) -> tuple[float, float]:
    attack = PGD(steps=args.steps, step_size=2 / 255, early_stop=early_stop)
    threat, gen = ThreatModel("linf", 8 / 255), torch.Generator().manual_seed(0)
    start = time.perf_counter()
    robust = torch.cat([predict(model, attack(model, xb, yb, threat, gen)) == yb
                        for xb, yb in zip(x.split(args.batch_size), y.split(args.batch_size))])
    return time.perf_counter() - start, robust.float().mean().item()


def run_torchattacks(model, x, y, args) -> tuple[float, float]:
    attack = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=args.steps, random_start=True)
    start = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        robust = torch.cat([predict(model, attack(xb, yb)) == yb
                            for xb, yb in zip(x.split(args.batch_size), y.split(args.batch_size))])
    return time.perf_counter() - start, robust.float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--load-rounds", type=int, default=3)
    parser.add_argument("--skip-pgd", action=argparse.BooleanOptionalAction, default=False)
    args = parser.parse_args()
    torch.manual_seed(0)
    entry = lookup("Standard", "cifar10", "linf")  # WRN-28-10, raw pixels
    with tempfile.TemporaryDirectory() as root:
        load_s, size_mb = time_load(entry, Path(root), args.load_rounds)
    print(f"load {entry.model_id} (WRN-28-10, {size_mb:.0f} MB, RobustBench layout): {load_s:.2f} s "
          f"(median of {args.load_rounds}; torch.load weights_only + convert + strict load)")
    if args.skip_pgd:
        return
    model = Classifier(Normalize((0.0,) * 3, (1.0,) * 3), build_backbone(entry)).eval()
    x = torch.rand(args.n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = predict(model, x)
    run_ours(model, x[:args.batch_size], y[:args.batch_size], argparse.Namespace(**{**vars(args), "steps": 1}),
             early_stop=False)  # warm-up: the first backward pass pays for kernel selection and allocation
    print(f"PGD-{args.steps} eps 8/255 step 2/255, {args.n} points, batches of {args.batch_size}, "
          f"{torch.get_num_threads()} threads:")
    for name, run in (("ours, early_stop=False", lambda: run_ours(model, x, y, args, early_stop=False)),
                      ("ours, early_stop=True ", lambda: run_ours(model, x, y, args, early_stop=True)),
                      ("torchattacks.PGD      ", lambda: run_torchattacks(model, x, y, args))):
        seconds, robust = run()
        print(f"  {name}: {seconds:7.1f} s  robust accuracy {robust:.2f}")


if __name__ == "__main__":
    main()
