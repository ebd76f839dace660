"""The karp-robust command line: the main job, records, reproducibility and bad input."""

import importlib.metadata
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

from robustbench_karp.api import load_model
from robustbench_karp.cli import main
from robustbench_karp.sources import new_model
from robustbench_karp.store import ResultsStore

RECORD_KEYS = {"id", "schema", "config", "clean_accuracy", "robust_accuracy", "per_attack", "checkpoint_sha256",
               "versions", "elapsed_seconds", "indices", "device", "created_utc"}
CONFIG_KEYS = {"model", "dataset", "defense", "attacks", "norm", "eps", "n_examples", "seed"}  # stored once: in "config"


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory):
    """A KARP_HOME holding the standard smallcnn digits checkpoint (trained once for this module)."""
    home = tmp_path_factory.mktemp("trained-home")
    old = os.environ.get("KARP_HOME")
    os.environ["KARP_HOME"] = str(home)
    try:
        load_model("smallcnn", dataset="digits", defense="standard", device="cpu")
    finally:
        os.environ.pop("KARP_HOME") if old is None else os.environ.__setitem__("KARP_HOME", old)
    return home


@pytest.fixture
def home(trained_home, tmp_path, monkeypatch):
    """A fresh store with the trained checkpoint already in it."""
    h = tmp_path / "home"
    shutil.copytree(trained_home / "checkpoints", h / "checkpoints")
    monkeypatch.setenv("KARP_HOME", str(h))
    return h


def cli(*args, env_home=None, timeout=3600):
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    if env_home is not None:
        env["KARP_HOME"] = str(env_home)
    return subprocess.run([sys.executable, "-m", "robustbench_karp", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def one_line_error(capsys, code, expected_code=2):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == expected_code
    assert len(err) == 1 and err[0].startswith("karp-robust: error:"), err
    return err[0]


@pytest.mark.parametrize("flag,bad,valid", [("--model", "resnet19", "resnet18"), ("--dataset", "imagenet21k", "mnist"),
                                            ("--attack", "pgdd", "autoattack"), ("--defense", "magic", "trades")])
def test_unknown_names_exit_2_listing_valid_names(home, capsys, flag, bad, valid):
    line = one_line_error(capsys, main(["evaluate", "--model", "smallcnn", flag, bad]))
    assert bad in line and "valid:" in line and valid in line


@pytest.mark.parametrize("args,message", [
    (["--eps", "8/2x5"], "malformed eps"), (["--eps", "-0.1"], "eps must be >= 0"), (["--steps", "0"], "must be >= 1"),
    (["--n-examples", "0"], "must be >= 1"), (["--attack-arg", "steps"], "KEY=VALUE")])
def test_malformed_arguments_exit_2(home, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model", "smallcnn", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["train", "--model", "smallcnn", "--dataset", "digits", "--defense", "pgd-at", "--eps", "8"], "8/255"),
    (["compare", "--model", "smallcnn", "--dataset", "digits", "--defenses", "pgd-at", "--eps", "8"], "8/255"),
    (["evaluate", "--model", "smallcnn", "--dataset", "digits", "--train-eps", "8"], "8/255"),
    (["evaluate", "--model", "smallcnn", "--dataset", "digits", "--protocol", "standard", "--steps", "50"],
     "apply to an --attack"),
    (["evaluate", "--model", "smallcnn", "--dataset", "digits", "--protocol", "standard", "--attack-arg", "steps=5"],
     "apply to an --attack"),
])
def test_wrong_units_and_options_without_an_attack_are_refused_before_any_training(home, capsys, args, message):
    before = sorted((home / "checkpoints").rglob("*"))
    line = one_line_error(capsys, main(args))
    assert message in line
    assert sorted((home / "checkpoints").rglob("*")) == before  # nothing trained, nothing started


def test_bad_attack_options_exit_2(home, capsys):
    assert "no option stepz" in one_line_error(capsys, main(["evaluate", "--model", "smallcnn", "--attack", "pgd",
                                                             "--attack-arg", "stepz=3"]))
    assert "none of the attacks" in one_line_error(capsys, main(["evaluate", "--model", "smallcnn", "--attack", "fgsm",
                                                                 "--steps", "3"]))


def test_unusable_checkpoints_name_the_file(home, tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    assert str(missing) in one_line_error(capsys, main(["evaluate", "--model", "smallcnn", "--checkpoint", str(missing)]))
    good = next((home / "checkpoints").glob("smallcnn-digits-standard-*.pt"))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    line = one_line_error(capsys, main(["evaluate", "--model", "smallcnn", "--checkpoint", str(truncated)]))
    assert str(truncated) in line and "truncated" in line and "not a PyTorch file" in line
    other = tmp_path / "resnet.pt"
    torch.save({"state_dict": new_model("resnet18", "digits").state_dict()}, other)
    line = one_line_error(capsys, main(["evaluate", "--model", "smallcnn", "--checkpoint", str(other)]))
    assert str(other) in line and "does not fit" in line


def test_checkpoint_that_would_run_code_is_refused(home, tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": Payload()}, evil)
    line = one_line_error(capsys, main(["evaluate", "--model", "smallcnn", "--checkpoint", str(evil)]))
    assert str(evil) in line and not (tmp_path / "pwned").exists()


def test_json_record_and_reproducibility(home, capsys):
    args = ["evaluate", "--model", "smallcnn", "--attack", "fgsm", "--attack", "pgd", "--attack-arg", "steps=10",
            "--n-examples", "120", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert RECORD_KEYS <= set(first) and CONFIG_KEYS <= set(first["config"]) and not CONFIG_KEYS & set(first)
    for key in ("id", "clean_accuracy", "robust_accuracy", "per_attack", "robust_mask", "checkpoint_sha256"):
        assert first[key] == second[key], key
    assert first["indices"] == list(range(120)) and first["config"]["n_examples"] == 120
    attacks = first["config"]["attacks"]
    assert [a["name"] for a in attacks] == ["fgsm", "pgd"] and attacks[1]["steps"] == 10
    assert first["robust_accuracy"] <= min(first["per_attack"].values()) + 1e-12
    assert 0.9 < first["clean_accuracy"] <= 1
    assert first["versions"]["torch"] == importlib.metadata.version("torch")
    assert first["versions"]["torchattacks"] == importlib.metadata.version("torchattacks")
    assert len(ResultsStore().records()) == 2  # one record per run, none lost


def test_eps_sweep_stores_one_record_per_eps(home, capsys):
    assert main(["evaluate", "--model", "smallcnn", "--attack", "fgsm", "--eps", "0,1/20,0.1", "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["config"]["eps"] for r in records] == [0.0, 0.05, 0.1]
    assert records[0]["robust_accuracy"] == records[0]["clean_accuracy"]
    assert records[2]["robust_accuracy"] <= records[1]["robust_accuracy"] <= records[0]["robust_accuracy"]


@pytest.mark.slow
def test_main_job_runs_offline_with_no_other_argument(tmp_path):
    """`karp-robust evaluate --model resnet18 --attack pgd` on a fresh store: trains, evaluates, reuses."""
    first = cli("evaluate", "--model", "resnet18", "--attack", "pgd", env_home=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "robust (worst case)" in first.stdout and "resnet18 / digits / standard" in first.stdout
    assert "training" in first.stderr and "val_pgd_accuracy" in first.stderr
    second = cli("evaluate", "--model", "resnet18", "--attack", "fgsm", "--json", env_home=tmp_path)
    assert second.returncode == 0 and "training" not in second.stderr  # the checkpoint is reused
    records = ResultsStore(tmp_path / "results.sqlite").records()
    assert len(records) == 2 and records[0]["checkpoint_sha256"] == json.loads(second.stdout)["checkpoint_sha256"]
    assert records[0]["robust_accuracy"] < records[0]["clean_accuracy"] and records[0]["clean_accuracy"] > 0.9
    assert len(list((tmp_path / "checkpoints").glob("resnet18-digits-standard-*.pt"))) == 1  # no .last.pt left


def test_bad_input_from_the_shell_has_no_traceback(home):
    result = cli("evaluate", "--model", "resnet19", env_home=home)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]


@pytest.mark.slow
def test_ctrl_c_writes_no_partial_record(home):
    env = {**os.environ, "KARP_HOME": str(home), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "robustbench_karp", "evaluate", "--model", "smallcnn", "--attack",
                             "pgd", "--attack-arg", "steps=100000", "--attack-arg", "early_stop=false"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(8)  # past start-up, inside the attack
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err[-1000:]
    assert "interrupted" in err and "Traceback" not in err
    db = home / "results.sqlite"
    assert not db.exists() or sqlite3.connect(db).execute("SELECT COUNT(*) FROM records").fetchone()[0] == 0


@pytest.mark.slow
def test_concurrent_evaluations_both_land(home):
    env = {**os.environ, "KARP_HOME": str(home), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "robustbench_karp", "evaluate", "--model", "smallcnn", "--attack", "fgsm"]
    procs = [subprocess.Popen(args + ["--seed", "0", "--n-examples", str(n)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for n in (100, 200)]
    for p in procs:
        p.communicate(timeout=1800)
        assert p.returncode == 0
    assert sorted(r["config"]["n_examples"] for r in ResultsStore(home / "results.sqlite").records()) == [100, 200]


def test_list_shows_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ["smallcnn", "wrn-28-10", "stn", "digits", "svhn", "autoattack", "torchattacks:<Class>", "trades"]:
        assert name in out


def test_list_groups_torchattacks_classes_by_the_norm_they_can_run_under(capsys):
    from robustbench_karp.attacks.torchattacks_adapter import ANY, BY_ARGUMENT, NORMS, torchattacks_names

    assert main(["list"]) == 0
    lines = {line.split(":")[0].strip(): line.split(":", 1)[1] for line in capsys.readouterr().out.splitlines()
             if line.strip().startswith(("--norm", "refused", "any norm"))}
    names = {key: [n.strip().split(" ")[0].rstrip("*") for n in value.split(", ")] for key, value in lines.items()}
    assert sorted(n for group in names.values() for n in group) == torchattacks_names()  # each class once
    assert {"PGDL2", "CW"} <= set(names["--norm l2"]) and "PGD" in names["--norm linf"]
    assert "CW*" in lines["--norm l2"] and "PGDL2*" not in lines["--norm l2"]  # minimum-norm ones are marked
    assert "APGD" in names["--norm linf or l2"]
    refused = [n for n in torchattacks_names() if NORMS[n][0] not in ("Linf", "L2", ANY, BY_ARGUMENT)]
    assert sorted(names["refused, no threat model here for their norm"]) == sorted(refused) and "JSMA (L0)" in lines[
        "refused, no threat model here for their norm"]
