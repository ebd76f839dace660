"""The README's main job, as a new user meets it: the first run (training included) and the second.

    python benchmarks/first_run.py          # a fresh KARP_HOME; prints both wall times, the output and the conditions

The first run trains ResNet-18 on the embedded digits, then attacks it with PGD; the second reuses
the checkpoint. Issue 15's target: the first run under 60 s on 2 cores, clean accuracy >= 0.97.
Run it alone: other jobs on the cores make the times meaningless.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    home = tempfile.mkdtemp(prefix="karp-first-run-")
    env = {**os.environ, "KARP_HOME": home, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "robustbench_karp", "evaluate", "--model", "resnet18", "--attack", "pgd"]
    times, out = [], ""
    for _ in range(2):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            sys.exit(proc.stderr[-2000:])
        out = proc.stdout
    import torch

    print(out.rstrip())
    print(f"first run {times[0]:.1f} s (training included), second run {times[1]:.1f} s")
    print(f"conditions: {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"torch threads {torch.get_num_threads()}, {torch.backends.cpu.get_cpu_capability()}, "
          f"{platform.processor() or platform.machine()}, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
