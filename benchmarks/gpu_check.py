"""The DEVICE paths in one short script: AMP bf16 + channels-last training, DDP over NCCL under torchrun,
evaluation and reproduction on the GPU, a batch in physical pieces (the out-of-memory path), PGD-40 and
AutoAttack time against torchattacks (and the original AutoAttack, pyautoattack, when installed), with
2 GPUs a 2-rank NCCL evaluation whose record must equal the single-process one, and `strong` against the
original AutoAttack and ours (strong_check: benchmarks/strong_vs_autoattack.py's table, on the GPU).

    python benchmarks/gpu_check.py --data-dir /path/with/MNIST/raw --out results.json

Every check prints one line and lands in the JSON. It needs a DEVICE device; nothing here runs in the
CPU test suite (which covers the same code on the CPU).
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

import torch
import torchattacks

from robustbench_karp.attacks.autoattack import AutoAttack
from robustbench_karp.attacks.pgd import PGD
from robustbench_karp.data import DATASETS, load_split, subset_indices
from robustbench_karp.evaluation.engine import predict, run_attacks
from robustbench_karp.harness import EvalRequest, run_evaluation
from robustbench_karp.sources import new_model
from robustbench_karp.store import load_checkpoint
from robustbench_karp.threat import ThreatModel
from robustbench_karp.threat.rows import physical_rows
from robustbench_karp.training.config import make_train_config
from robustbench_karp.training.loop import fit

DEVICE = torch.device("cuda")  # --device cpu makes a dry run of the script itself
TRAIN_SIZE: int | None = None  # --quick


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def train_check(data_dir: Path, home: Path) -> dict:
    """bf16 autocast + channels-last training of smallcnn on MNIST (2 epochs) and fgsm-at (3 epochs)."""
    out = {}
    for defense, epochs in (("standard", 2), ("fgsm-at", 3)):
        config = make_train_config("smallcnn", "mnist", defense, seed=0, train_size=TRAIN_SIZE,
                                   recipe_overrides={"epochs": epochs, "amp": "bf16", "channels_last": True})
        start = time.perf_counter()
        payload = fit(config, home / f"{defense}.pt", data_dir=data_dir, device=DEVICE, download=False)
        last = payload["history"][-1]
        out[defense] = {"seconds": time.perf_counter() - start, "val_clean": last["val_clean_accuracy"],
                        "val_pgd10": last["val_pgd_accuracy"], "finite": all(torch.isfinite(v).all().item()
                                                                             for v in payload["state_dict"].values())}
        print(f"train {defense} bf16+channels-last: {out[defense]}", flush=True)
    return out


def ddp_check(data_dir: Path, home: Path) -> dict:
    """torchrun + DDP over NCCL (one process per GPU; one GPU here)."""
    gpus = max(1, torch.cuda.device_count())
    env = {**os.environ, "KARP_HOME": str(home / "ddp")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", "-m",
           "robustbench_karp", "train", "--model", "smallcnn", "--dataset", "mnist", "--defense", "fgsm-at",
           "--epochs", "1", "--device", DEVICE.type, "--data-dir", str(data_dir), "--no-download", "--amp", "bf16"]
    if TRAIN_SIZE:
        cmd += ["--train-size", str(TRAIN_SIZE)]
    start = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    finals = [p for p in (home / "ddp" / "checkpoints").glob("*.pt") if ".last" not in p.name]
    result = {"gpus": gpus, "returncode": run.returncode, "seconds": time.perf_counter() - start,
              "checkpoint": bool(finals), "tail": run.stderr[-600:] if run.returncode else ""}
    if finals:
        result["val_clean"] = load_checkpoint(finals[0])["history"][-1]["val_clean_accuracy"]
    print(f"ddp nccl: {result}", flush=True)
    return result


def ddp_eval_check(data_dir: Path, home: Path) -> dict:
    """torchrun evaluation over NCCL with 2 ranks (each on its own GPU, cuda:LOCAL_RANK): the record must equal the
    single-process one (id, masks). Skipped with fewer than 2 GPUs."""
    gpus = torch.cuda.device_count() if DEVICE.type == "cuda" else 0
    if gpus < 2:
        print(f"ddp evaluation: skipped ({gpus} GPU)", flush=True)
        return {"skipped": f"{gpus} GPU"}
    args = ["evaluate", "--model", "smallcnn", "--dataset", "mnist", "--defense", "fgsm-at", "--checkpoint",
            str(home / "fgsm-at.pt"), "--data-dir", str(data_dir), "--no-download", "--attack", "pgd", "--attack-arg",
            "steps=20", "--n-examples", "1000", "--batch-size", "250", "--eps", "0.3", "--json", "--device", "cuda"]
    single = subprocess.run([sys.executable, "-m", "robustbench_karp", *args], capture_output=True, text=True,
                            env={**os.environ, "KARP_HOME": str(home / "single")}, timeout=600)
    start = time.perf_counter()
    ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                            "robustbench_karp", *args], capture_output=True, text=True,
                           env={**os.environ, "KARP_HOME": str(home / "ranks")}, timeout=600)
    result = {"gpus": gpus, "returncode": ranks.returncode, "seconds": time.perf_counter() - start,
              "tail": ranks.stderr[-600:] if ranks.returncode else ""}
    if single.returncode == 0 and ranks.returncode == 0:
        one, two = json.loads(single.stdout.splitlines()[-1]), json.loads(ranks.stdout.splitlines()[-1])
        result |= {key: one[key] == two[key] for key in ("id", "clean_mask", "robust_mask")}
    print(f"ddp evaluation nccl, 2 ranks: {result}", flush=True)
    return result


def throughput(model, test, indices, batch_size: int) -> dict:
    """PGD-40 (eps 0.3, step 0.01) on the GPU: our engine vs torchattacks.PGD plus its accuracy count."""
    threat, out = ThreatModel("linf", 0.3), {}
    for round_ in range(2):  # the first round warms up cuDNN
        sync()
        start = time.perf_counter()
        batches = ((x, y) for _, x, y in test.batches(indices, batch_size))
        ours = run_attacks(model, batches, [PGD(steps=40, step_size=0.01)], threat,
                           torch.Generator(device=DEVICE).manual_seed(0), DEVICE).robust_accuracy
        sync()
        t_ours = time.perf_counter() - start
        start, correct = time.perf_counter(), 0
        attack = torchattacks.PGD(model, eps=0.3, alpha=0.01, steps=40, random_start=True)
        for _, x, y in test.batches(indices, batch_size):
            x, y = x.to(DEVICE), y.to(DEVICE)
            correct += int((predict(model, attack(x, y)) == y).sum())
        sync()
        t_ref = time.perf_counter() - start
        out = {"ours_s": t_ours, "torchattacks_s": t_ref, "time_ratio": t_ours / t_ref, "ours_acc": ours,
               "torchattacks_acc": correct / len(indices), "ours_images_per_s": len(indices) / t_ours,
               "torchattacks_images_per_s": len(indices) / t_ref, "round": round_}
    return out


def eval_checks(data_dir: Path, home: Path) -> dict:
    test = load_split(DATASETS.get("mnist"), train=False, data_dir=data_dir, download=False)
    indices = subset_indices(len(test), 1000)
    out = {}
    for defense in ("standard", "fgsm-at"):
        model = new_model("smallcnn", "mnist")
        model.load_state_dict(load_checkpoint(home / f"{defense}.pt")["state_dict"])
        out[f"pgd40_{defense}"] = throughput(model.to(DEVICE).eval(), test, indices, 500)
        print(f"pgd-40 throughput {defense}: {out[f'pgd40_{defense}']}", flush=True)
    req = EvalRequest(model="smallcnn", dataset="mnist", defense="fgsm-at", eps=0.3, n_examples=500, device=DEVICE.type,
                      checkpoint=str(home / "fgsm-at.pt"), data_dir=data_dir, download=False,
                      attacks=[PGD(steps=20)])
    first, second = run_evaluation(req), run_evaluation(req)
    out["reproduce_on_gpu"] = {"same_id": first["id"] == second["id"],
                               "robust_diff": abs(first["robust_accuracy"] - second["robust_accuracy"]),
                               "clean_diff": abs(first["clean_accuracy"] - second["clean_accuracy"]),
                               "warnings": first["warnings"]}
    print(f"reproduce on gpu: {out['reproduce_on_gpu']}", flush=True)
    with physical_rows(64):  # what an out-of-memory rerun does: passes in pieces, the same draws
        pieces = run_evaluation(req)
    out["physical_pieces_on_gpu"] = {key: pieces[key] == first[key] for key in ("id", "clean_mask", "robust_mask")}
    print(f"physical pieces of 64 rows on gpu, equal to the whole batch: {out['physical_pieces_on_gpu']}", flush=True)
    out["autoattack_fgsm-at"] = autoattack_time(home, test, indices[:500])
    print(f"autoattack fgsm-at: {out['autoattack_fgsm-at']}", flush=True)
    return out


def autoattack_time(home: Path, test, indices, batch_size: int = 500) -> dict:
    """AutoAttack standard (eps 0.3) through our engine vs torchattacks.AutoAttack, on the fgsm-at model."""
    model = new_model("smallcnn", "mnist")
    model.load_state_dict(load_checkpoint(home / "fgsm-at.pt")["state_dict"])
    model = model.to(DEVICE).eval()
    threat = ThreatModel("linf", 0.3)
    sync()
    start = time.perf_counter()
    batches = ((x, y) for _, x, y in test.batches(indices, batch_size))
    ours = run_attacks(model, batches, [AutoAttack()], threat, torch.Generator(device=DEVICE).manual_seed(0),
                       DEVICE).robust_accuracy
    sync()
    t_ours, start, correct = time.perf_counter() - start, time.perf_counter(), 0
    attack = torchattacks.AutoAttack(model, norm="Linf", eps=0.3, version="standard", n_classes=10, seed=0)
    for _, x, y in test.batches(indices, batch_size):
        x, y = x.to(DEVICE), y.to(DEVICE)
        correct += int((predict(model, attack(x, y)) == y).sum())
    sync()
    t_ref = time.perf_counter() - start
    out = {"ours_s": t_ours, "torchattacks_s": t_ref, "time_ratio": t_ours / t_ref, "ours_acc": ours,
           "torchattacks_acc": correct / len(indices), "n": len(indices)}
    try:  # the original AutoAttack (pip install pyautoattack), when it is there
        from pyautoattack import AutoAttack as Original
    except ImportError:
        return out | {"original": "not installed (pip install pyautoattack)"}
    x, y = test.batch(indices)
    sync()
    start = time.perf_counter()
    original = Original(model, norm="Linf", eps=0.3, version="standard", seed=0, device=DEVICE)
    x_adv, _ = original.run_standard_evaluation(x.to(DEVICE), y.to(DEVICE), batch_size=batch_size)
    sync()
    t_orig = time.perf_counter() - start
    acc = (predict(model, x_adv) == y.to(DEVICE)).float().mean().item()
    return out | {"original_s": t_orig, "ratio_to_original": t_ours / t_orig, "original_acc": acc}


def strong_check(data_dir: Path, home: Path, n: int = 500) -> dict:
    """`strong` vs the original AutoAttack (pyautoattack) and ours on the GPU, as benchmarks/strong_vs_autoattack.py
    compares them on the CPU: the fgsm-at smallcnn that train_check trained, and the same behind a quantized input
    (masked gradients: strong must escalate). MNIST, Linf 0.3, the first n test points."""
    from strong_vs_autoattack import compare, parse_args, table  # benchmarks/ is sys.path[0] when run as a script

    checkpoint = home / "fgsm-at.pt"
    args = parse_args(["--dataset", "mnist", "--data-dir", str(data_dir), "--n-examples", str(n), "--eps", "0.3",
                       "--device", DEVICE.type, "--models", f"smallcnn={checkpoint},quantized:smallcnn={checkpoint}"])
    test = load_split(DATASETS.get("mnist"), train=False, data_dir=data_dir, download=False)
    x, y = test.batch(subset_indices(len(test), n))
    rows = [row for spec in args.models for row in compare(spec, x.to(DEVICE), y.to(DEVICE), ThreatModel("linf", 0.3),
                                                           args)]
    print(f"strong vs autoattack on {DEVICE}:\n{table(rows, n)}", flush=True)
    return {"rows": rows}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="train on 2000 points only (a dry run)")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    global DEVICE, TRAIN_SIZE
    DEVICE, TRAIN_SIZE = torch.device(args.device), 2000 if args.quick else None
    home = Path(tempfile.mkdtemp())
    os.environ["KARP_HOME"] = str(home)
    name = torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "cpu"
    result = {"torch": torch.__version__, "device": name}
    print(result, flush=True)
    for name, check in (("train", train_check), ("ddp", ddp_check), ("eval", eval_checks),
                        ("ddp_eval", ddp_eval_check), ("strong", strong_check)):
        try:
            result[name] = check(args.data_dir, home)
        except Exception as e:  # report every check, even after one fails
            result[name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"{name} FAILED: {e}", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
