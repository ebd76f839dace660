"""Does certification pay? The same AutoAttack evaluation of a certified-trained model, with and without it.

    python benchmarks/certified_skip.py --data-dir ../shared/data --n-examples 1000 --eps 0.3 --out bench-out

Both runs attack with AutoAttack standard in one process, one after the other, on the same points and
seed: the plain run attacks every clean-correct point; the certified run proves points robust with
CROWN-IBP first and attacks only the others. Reported: wall time, forward and backward passes,
robust and certified accuracy, and whether the robust masks agree (on every certified point they must:
a certified point the plain run broke would be a bug); and, on the same points, how many IBP alone
certifies beside CROWN-IBP (tightness). The model is the store's checkpoint of the registered recipe
(`--model certcnn --defense ibp`) trained at --eps, trained on demand.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from robustbench_karp.attacks import build_attack
from robustbench_karp.certification import certify
from robustbench_karp.data import DATASETS, load_split
from robustbench_karp.harness import EvalRequest, prepare, run_evaluation
from robustbench_karp.store import ResultsStore


def run(req: EvalRequest) -> tuple[dict, float]:
    prepared = prepare(req)
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        record = run_evaluation(req, store=ResultsStore(Path(scratch) / "results.sqlite"), prepared=prepared)
    return record, time.perf_counter() - start


def certified_counts(req: EvalRequest, indices: list[int]) -> dict[str, int]:
    """How many of the record's points each method certifies (the same model and points; batches of 250)."""
    model = prepare(req)[0]
    x, y = load_split(DATASETS.get(req.dataset), train=False, data_dir=req.data_dir, download=False).batch(
        torch.tensor(indices))
    counts = {}
    for method in ("ibp", "crown-ibp"):
        counts[method] = sum(int(certify(model, x[i:i + 250], y[i:i + 250], norm="linf", eps=req.eps,
                                         method=method).certified.sum()) for i in range(0, len(y), 250))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", default="certcnn")
    parser.add_argument("--defense", default="ibp")
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--n-examples", type=int, default=1000)
    parser.add_argument("--method", default="crown-ibp", choices=["ibp", "crown-ibp"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    base = dict(model=args.model, dataset="mnist", defense=args.defense, eps=args.eps, train_eps=args.eps,
                n_examples=args.n_examples,
                data_dir=args.data_dir, download=False, device="cpu",
                attacks=[build_attack("autoattack", {"steps": 100, "square_queries": 5000})])
    plain, t_plain = run(EvalRequest(**base))
    certified, t_cert = run(EvalRequest(**base, certify=args.method))
    mask = certified["certified_mask"]
    agree_certified = all(p == "1" for p, c in zip(plain["robust_mask"], mask) if c == "1")
    agree = sum(p == c for p, c in zip(plain["robust_mask"], certified["robust_mask"])) / len(mask)
    result = {
        "threads": torch.get_num_threads(), "n": args.n_examples, "eps": args.eps, "method": args.method,
        "plain": {"seconds": t_plain, "forward_passes": plain["cost"]["forward_passes"],
                  "backward_passes": plain["cost"]["backward_passes"], "robust": plain["robust_accuracy"]},
        "certified": {"seconds": t_cert, "forward_passes": certified["cost"]["forward_passes"],
                      "backward_passes": certified["cost"]["backward_passes"], "robust": certified["robust_accuracy"],
                      "certified": certified["certified_accuracy"],
                      "certification_seconds": certified["certification"]["seconds"],
                      "saved_forward_passes_estimate": certified["certification"]["saved_forward_passes"]},
        "speedup": t_plain / t_cert, "pass_ratio": plain["cost"]["forward_passes"] / certified["cost"]["forward_passes"],
        "robust_masks_agree_on_certified_points": agree_certified, "robust_masks_agree_everywhere": agree,
        "certified_points": certified_counts(EvalRequest(**base), certified["indices"]),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "certified_skip.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
