"""The README's main job, as a new user meets it: the first run (training included) and the second.

    python benchmarks/first_run.py                   # a fresh KARP_HOME; prints both wall times, the output, the conditions
    python benchmarks/first_run.py --update-readme   # and writes them into README.md's sample output

The first run trains ResNet-18 on the embedded digits, then attacks it with PGD; the second reuses
the checkpoint. Issue 15's target: the first run under 60 s on 2 cores, clean accuracy >= 0.97.
Run it alone: other jobs on the cores make the times meaningless.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--update-readme", action="store_true", help="replace README.md's sample output with this run's")
    args = p.parse_args()
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

    from robustbench_karp.store.identity import cpu_processor

    conditions = (f"{os.cpu_count()} cores, torch's {torch.get_num_threads()} threads, "
                  f"{torch.backends.cpu.get_cpu_capability()}, {cpu_processor()[0]}, load {os.getloadavg()[0]:.1f}")
    print(out.rstrip())
    print(f"first run {times[0]:.1f} s (training included), second run {times[1]:.1f} s")
    print(f"conditions: {conditions}")
    if args.update_readme:
        update_readme(out.rstrip(), times, conditions)


# README.md's sample: the fenced block after 'attacks it with PGD and prints:' and the "Measured ..." paragraph
# after it (tests/test_docs.py checks that README.md still holds exactly one)
SAMPLE = re.compile(r"(attacks it with PGD and prints:\n\n```\n)(.*?)(\n```\n\n)(Measured .*?\n\n)", re.S)


def update_readme(output: str, times: list[float], conditions: str) -> None:
    """Replace README.md's sample output and its timing paragraph (dated, naming the machine) with this run's."""
    readme = REPO / "README.md"
    text = readme.read_text()
    timing = (f"Measured {date.today().isoformat()} ({conditions}): the first run took {times[0]:.1f} s, training "
              f"included, and the second {times[1]:.1f} s. `python benchmarks/first_run.py --update-readme` measures "
              "both and rewrites this sample.\n\n")
    new, count = SAMPLE.subn(lambda m: m.group(1) + output + m.group(3) + timing, text)
    if count != 1:
        sys.exit("README.md: the sample output block was not found")
    readme.write_text(new)
    print("README.md updated")


if __name__ == "__main__":
    main()
