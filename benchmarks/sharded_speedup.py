"""Sharded evaluation on CPU: K torchrun processes x 1 thread against 1 process x 1 thread, side by side.

    python benchmarks/sharded_speedup.py                      # trains a quick fgsm-at smallcnn on MNIST first
    python benchmarks/sharded_speedup.py --nproc 2 --n-examples 1000 --steps 40 --data-dir ../shared/data

Runs the same `karp-robust evaluate` (PGD-k, early stop on) once in one process and once under
torchrun with K gloo processes, each with OMP_NUM_THREADS=1, in a scratch KARP_HOME; checks the two
records are identical (id, masks, numbers) and prints both wall times (process start included) and
the speed-up. Run it alone: other jobs on the cores make the ratio meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def karp(args: list[str], env: dict, torchrun: int = 0) -> tuple[float, str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
    cmd = (launcher if torchrun else [sys.executable]) + ["-m", "robustbench_karp", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0, proc.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--n-examples", type=int, default=1000)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--eps", default="0.1", help="an eps the quick one-epoch model is robust at: every point runs all steps")
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--checkpoint", type=Path, default=None, help="a smallcnn MNIST checkpoint (default: train one)")
    a = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="karp-sharded-"))
    env = {**os.environ, "KARP_HOME": str(home), "PYTHONPATH": str(REPO)}
    checkpoint = a.checkpoint
    if checkpoint is None:  # a quickly trained robust model: fgsm-at, one epoch on 12,000 images
        seconds, _ = karp(["train", "--model", "smallcnn", "--dataset", "mnist", "--defense", "fgsm-at", "--epochs", "1",
                           "--train-size", "12000", "--data-dir", str(a.data_dir), "--out", str(home / "fgsm-at.pt")],
                          {**env, "OMP_NUM_THREADS": "2"})
        checkpoint = home / "fgsm-at.pt"
        print(f"trained fgsm-at smallcnn (1 epoch, 12000 images) in {seconds:.1f} s")
    args = ["evaluate", "--model", "smallcnn", "--dataset", "mnist", "--data-dir", str(a.data_dir), "--checkpoint",
            str(checkpoint), "--attack", "pgd", "--attack-arg", f"steps={a.steps}", "--n-examples", str(a.n_examples),
            "--batch-size", str(a.batch_size), "--eps", a.eps, "--device", "cpu", "--json"]
    one_thread = {**env, "OMP_NUM_THREADS": "1"}
    t1, out1 = karp(args, {**one_thread, "KARP_HOME": str(home / "one")})
    tk, outk = karp(args, {**one_thread, "KARP_HOME": str(home / "many")}, torchrun=a.nproc)
    r1, rk = json.loads(out1), json.loads(outk)
    same = all(r1[k] == rk[k] for k in ("id", "clean_mask", "robust_mask", "per_attack"))
    print(f"PGD-{a.steps} at eps {a.eps}, {a.n_examples} MNIST points, batches of {a.batch_size}, smallcnn {checkpoint.name}: "
          f"clean {r1['clean_accuracy']:.3f}, robust {r1['robust_accuracy']:.3f}")
    print(f"1 process x 1 thread:  {t1:6.1f} s  (evaluation {r1['elapsed_seconds']:.1f} s)")
    print(f"{a.nproc} processes x 1 thread: {tk:6.1f} s  (evaluation {rk['elapsed_seconds']:.1f} s)")
    print(f"speed-up {t1 / tk:.2f}x wall, {r1['elapsed_seconds'] / rk['elapsed_seconds']:.2f}x evaluation; "
          f"records identical: {same} ({r1['id']})")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
