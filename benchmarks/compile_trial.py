"""Does torch.compile pay on this CPU for our PGD loop? The engine with the plain model vs torch.compile(model).

    KARP_HOME=/tmp/aa-bench-home python benchmarks/compile_trial.py --data-dir ../shared/data
    python benchmarks/compile_trial.py --data-dir ../shared/data --defense mart --rounds 2

MNIST fgsm-at smallcnn, the first 1000 test points in batches of 500, PGD-40, Linf eps 0.3, step
0.01, two CPU threads, through `run_attacks` both times (clean pass, then PGD with early stop). The
compiled model's first evaluation includes compilation and is reported on its own; then each round
times the plain and the compiled model alternately and the medians are compared. The robust and
clean flags of every compiled run are compared with the plain run's. Early stop shrinks the batch
as points fall, so the shape is fixed only between drops: the first new batch size recompiles with
a dynamic batch dimension (torch's automatic dynamic shapes), and the graph count is reported. If
inductor cannot compile here (no C++ compiler, ...), the one-line reason is printed instead.

Measured alone on the 2-core CPU of the dev box (AVX512, 2 threads), 2026-12-03, torch 2.14.1, gcc
present, `--defense mart --rounds 2` (MART's MNIST recipe, seed 0: clean 0.990, PGD-40 robust 0.947):

    model          steady seconds (median of 2)  first run  speed-up
    plain          23.5                          16.1 s     1.00
    torch.compile  32.4                          59.9 s     0.73   (3 graphs; flags identical to plain)

torch.compile does not pay here: the compiled model is 0.73x the eager one in steady state, after 27.5 s
of compilation. The eager rounds after compilation also ran slower than the eager first run (22.3 and
24.6 s against 16.1 s), so the steady comparison flatters neither; against the first run the compiled
model is at 0.50x. The engine therefore stays eager on CPU. On a GPU (`--device` is not offered: this
trial is CPU-only), CUDA graphs and `torch.compile` over the fixed-shape stretch between compactions were
not measured: no device was lent to the sessions that wrote this.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from robustbench_karp.api import load_model
from robustbench_karp.attacks.pgd import PGD
from robustbench_karp.data import DATASETS, load_split, subset_indices
from robustbench_karp.evaluation.engine import EvalResult, run_attacks
from robustbench_karp.threat import ThreatModel


def evaluate_pgd(model, test, indices, args) -> tuple[float, EvalResult]:
    """(seconds, result) of one PGD evaluation through the engine, seed 0."""
    gen = torch.Generator().manual_seed(0)
    batches = ((x, y) for _, x, y in test.batches(indices, args.batch_size))
    attack = PGD(steps=args.steps, step_size=args.step_size)
    start = time.perf_counter()
    result = run_attacks(model, batches, [attack], ThreatModel("linf", args.eps), gen, torch.device("cpu"))
    return time.perf_counter() - start, result


def same_flags(a: EvalResult, b: EvalResult) -> bool:
    return a.robust == b.robust and a.clean == b.clean


def trial(args) -> dict:
    test = load_split(DATASETS.get("mnist"), train=False, data_dir=args.data_dir, download=False)
    indices = subset_indices(len(test), args.n_examples)
    model = load_model("smallcnn", dataset="mnist", defense=args.defense, data_dir=args.data_dir, device="cpu")
    plain_s, reference = evaluate_pgd(model, test, indices, args)  # also warms the eager path
    out = {"plain_first_s": plain_s, "robust_acc": reference.robust_accuracy, "clean_acc": reference.clean_accuracy}
    compiled = torch.compile(model)
    try:
        out["compiled_first_s"], first = evaluate_pgd(compiled, test, indices, args)  # compiles on the way
    except Exception as e:  # inductor's failures come in many classes (BackendCompilerFailed, CalledProcessError, ...)
        out["compile_error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        return out
    identical = [same_flags(first, reference)]
    times = {"plain": [], "compiled": []}
    for _ in range(args.rounds):
        for name, m in (("plain", model), ("compiled", compiled)):
            seconds, result = evaluate_pgd(m, test, indices, args)
            times[name].append(seconds)
            if name == "compiled":
                identical.append(same_flags(result, reference))
    plain, steady = statistics.median(times["plain"]), statistics.median(times["compiled"])
    out.update(plain_s=plain, compiled_s=steady, speedup=plain / steady, flags_identical=all(identical),
               compile_overhead_s=out["compiled_first_s"] - steady,
               graphs=int(torch._dynamo.utils.counters["stats"]["unique_graphs"]), all_seconds=times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--defense", default="fgsm-at")
    parser.add_argument("--n-examples", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--step-size", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    r = trial(args)
    print(f"plain model, first run {r['plain_first_s']:.1f} s; robust acc {r['robust_acc']:.4f}, "
          f"clean {r['clean_acc']:.4f}")
    if "compile_error" in r:
        print(f"torch.compile failed here: {r['compile_error']}")
    else:
        print("| model | steady seconds (median) | first run (s) | speed-up | flags identical |")
        print("|---|---|---|---|---|")
        print(f"| plain | {r['plain_s']:.1f} | {r['plain_first_s']:.1f} | 1.00 | - |")
        print(f"| torch.compile | {r['compiled_s']:.1f} | {r['compiled_first_s']:.1f} | {r['speedup']:.2f} | "
              f"{'yes' if r['flags_identical'] else 'NO'} |")
        print(f"compile + warm-up overhead {r['compile_overhead_s']:.1f} s ({r['graphs']} graphs compiled); "
              f"break-even after {max(r['compile_overhead_s'], 0) / max(r['plain_s'] - r['compiled_s'], 1e-9):.1f} "
              "evaluations" if r["compiled_s"] < r["plain_s"] else "compiled is not faster in steady state")
    if args.out:
        args.out.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
