"""Evaluation in logical batches (issue 14): the same record whether run whole, resumed, or sharded under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustbench_karp.attacks import build_attack
from robustbench_karp.evaluation.sharded import PartialResults, batch_seed
from robustbench_karp.harness import EvalRequest, run_evaluation
from robustbench_karp.store import ResultsStore

REPO = Path(__file__).resolve().parents[1]


def request(checkpoint, **kw) -> EvalRequest:
    # PGD with a random start and restarts: every batch draws random numbers, so any mix-up of streams shows
    pgd = build_attack("pgd", {"steps": 5, "restarts": 2, "random_start": True})
    return EvalRequest(model="smallcnn", dataset="digits", attacks=[pgd], n_examples=120, batch_size=40,
                       device="cpu", checkpoint=str(checkpoint), **kw)


def same_numbers(a, b) -> None:
    for key in ("id", "clean_mask", "robust_mask", "per_attack", "clean_accuracy", "robust_accuracy"):
        assert a[key] == b[key], key
    assert a["cost"]["backward_passes"] == b["cost"]["backward_passes"]


def test_batch_seeds_are_distinct_streams():
    seeds = {batch_seed(s, b) for s in range(3) for b in range(100)}
    assert len(seeds) == 300 and all(0 <= s < 2**63 for s in seeds)
    assert batch_seed(0, 1) != batch_seed(1, 0)


def test_resumed_evaluation_equals_an_uninterrupted_one(karp_home, digits_checkpoint, tmp_path):
    whole = run_evaluation(request(digits_checkpoint), store=ResultsStore(tmp_path / "whole.sqlite"))
    assert whole["config"]["rng"] == "per-batch/1"

    class Interrupted(Exception):
        pass

    done = []

    def stop_after_first(k):
        done.append(k)
        raise Interrupted

    store = ResultsStore()
    with pytest.raises(Interrupted):
        run_evaluation(request(digits_checkpoint), store=store, on_batch=stop_after_first)
    assert done == [40] and store.records() == []  # no record, one partial result
    partial = PartialResults(store.path, whole["id"], [40, 40, 40])
    assert sorted(partial.load()) == [0]

    seen = []
    resumed = run_evaluation(request(digits_checkpoint), store=store, on_batch=seen.append)
    same_numbers(resumed, whole)
    assert seen == [40, 40, 40]  # the kept batch is reported at once, then the two that ran
    assert not partial.dir.exists() and [r["id"] for r in store.records()] == [whole["id"]]


def test_a_partial_result_of_another_batch_size_is_not_reused(karp_home, digits_checkpoint):
    store = ResultsStore()
    whole = run_evaluation(request(digits_checkpoint), store=ResultsStore(karp_home / "other.sqlite"))
    partial = PartialResults(store.path, whole["id"], [40, 40, 40])
    from robustbench_karp.evaluation.engine import BatchOutcome
    from robustbench_karp.evaluation.recording import run_conditions

    partial.check_conditions(run_conditions(torch.device("cpu")))  # as an interrupted run here would leave them
    partial.save(0, BatchOutcome([True] * 7, [True] * 7, {"pgd": 7}, {}))  # wrong size: ignored, recomputed
    same_numbers(run_evaluation(request(digits_checkpoint), store=store), whole)


def test_old_records_keep_their_one_generator_scheme(karp_home, digits_checkpoint, capsys):
    """A record made before per-batch randomness (no config.rng) re-runs with the scheme it was made with."""
    from robustbench_karp.cli import main

    old = run_evaluation(request(digits_checkpoint, rng=None))
    assert "rng" not in old["config"]
    new = run_evaluation(request(digits_checkpoint))
    assert new["id"] != old["id"]
    assert main(["reproduce", old["id"]]) == 0
    assert capsys.readouterr().out.strip().endswith("reproduced")


def test_two_torchrun_processes_write_the_single_process_record(karp_home, digits_checkpoint, tmp_path):
    """2 gloo ranks, each taking every other batch; rank 0 gathers and writes the one record."""
    args = ["evaluate", "--model", "smallcnn", "--dataset", "digits", "--checkpoint", str(digits_checkpoint),
            "--attack", "pgd", "--attack-arg", "steps=5", "--attack-arg", "restarts=2", "--n-examples", "120",
            "--batch-size", "40", "--device", "cpu", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    single = subprocess.run([sys.executable, "-m", "robustbench_karp", *args], capture_output=True, text=True,
                            env={**env, "KARP_HOME": str(tmp_path / "one")}, timeout=3600)
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    sharded = subprocess.run([*torchrun, "-m", "robustbench_karp", *args], capture_output=True, text=True,
                             env={**env, "KARP_HOME": str(tmp_path / "two")}, timeout=3600)
    assert sharded.returncode == 0, sharded.stderr
    one, two = json.loads(single.stdout), json.loads(sharded.stdout)  # rank 0 alone prints
    same_numbers(one, two)
    assert [r["id"] for r in ResultsStore(tmp_path / "two" / "results.sqlite").records()] == [one["id"]]


def test_early_drop_is_identical_for_every_compaction_interval_and_never_weaker(digits, digits_model):
    """ascend keeps each point's first adversarial iterate with masked writes and compacts every k steps."""
    from robustbench_karp.attacks.base import untargeted_objective
    from robustbench_karp.threat import ThreatModel, ascend

    _, test = digits
    x, y = test.batch(torch.arange(200))
    threat = ThreatModel("linf", 0.1)
    objective = untargeted_objective(digits_model, y)

    def run(k, stop):  # a step as large as eps makes iterates bounce: the last one loses points an earlier one broke
        gen = torch.Generator().manual_seed(0)
        return ascend(x, objective, threat, steps=20, step_size=0.1, random_start=True, gen=gen,
                      stop_when_done=stop, final_check=True, compact_every=k)

    results = {k: run(k, True) for k in (1, 3, 8, 50)}
    for k in (3, 8, 50):
        assert torch.equal(results[k][0], results[1][0]) and torch.equal(results[k][1], results[1][1]), k
    early, done = results[1]
    last, _ = run(1, False)
    with torch.no_grad():
        robust_early = digits_model(early).argmax(1) == y
        robust_last = digits_model(last).argmax(1) == y
    assert not (robust_early & ~robust_last).any()  # a point the last iterate breaks, early drop breaks too
    assert (robust_last & ~robust_early).any()  # and early drop keeps some the last iterate loses
    assert torch.equal(done, ~robust_early | done)  # every point marked done is adversarial in the result
    assert threat.distance(early, x).max() <= 0.1 + 1e-6 and early.min() >= 0 and early.max() <= 1


def test_progress_off_a_terminal_names_the_attack_and_moves_within_a_batch(karp_home, digits_checkpoint, capsys,
                                                                          monkeypatch):
    import re

    from robustbench_karp.cli import main

    monkeypatch.setenv("KARP_PROGRESS_INTERVAL", "0")  # every update (CI logs get one line per 10 s)
    assert main(["evaluate", "--model", "smallcnn", "--dataset", "digits", "--checkpoint", str(digits_checkpoint),
                 "--attack", "fgsm", "--attack", "pgd", "--attack-arg", "steps=20", "--n-examples", "100",
                 "--batch-size", "100", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if re.match(r"evaluating: pgd on batch 1: \d+/100 ", line)]
    passes = [int(re.search(r"(\d+) forward passes", line).group(1)) for line in lines]
    assert len(passes) >= 10 and passes == sorted(passes) and passes[-1] > passes[0]  # it moves inside batch 1
    # and, before any batch is done, says how far PGD is through its pass budget and how long the run may still take
    shares = [int(m.group(1)) for line in lines if (m := re.search(r", pgd (\d+)% of its passes, about \d+ s "
                                                                 r"left in the run$", line))]
    assert len(shares) >= 5 and shares == sorted(shares) and 0 <= shares[0] < shares[-1] <= 100
    assert "evaluating: fgsm on batch 1" in captured.err
    assert re.search(r"\| after pgd +\| +[0-9.]+ \| +[0-9.]+ \|", captured.out)  # the table gives seconds per attack
