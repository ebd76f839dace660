"""`karp-robust records list/show/export`, `--version` and `data download`, on a temporary KARP_HOME; the MNIST skip.

The store holds two records made by real evaluations of a quickly trained digits smallcnn (given with
--checkpoint, so nothing is trained through the CLI) and a third derived from the first: another model,
defense and warning, and an id sharing its first six characters (for the ambiguous-prefix error).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import urllib.error

import pandas
import pytest
import torch
import torchvision
from conftest import MNIST_FILES, mnist_data_dir, mnist_missing_message

from robustbench_karp.cli import main
from robustbench_karp.store import ResultsStore


@pytest.fixture(scope="module")
def made_records(digits_model, tmp_path_factory) -> list[dict]:
    """[pgd record, fgsm record, derived trades record], made once for the module in a store of their own."""
    home = tmp_path_factory.mktemp("records-home")
    checkpoint = home / "digits-smallcnn.pt"
    torch.save(digits_model.state_dict(), checkpoint)
    common = ["evaluate", "--model", "smallcnn", "--checkpoint", str(checkpoint), "--device", "cpu"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KARP_HOME", str(home))
        assert main([*common, "--attack", "fgsm", "--attack", "pgd", "--attack-arg", "steps=5", "--n-examples", "60"]) == 0
        assert main([*common, "--attack", "fgsm", "--eps", "0.05", "--n-examples", "40"]) == 0
        pgd, fgsm = ResultsStore().records()
    derived = {**pgd, "id": pgd["id"][:6] + "0" * 10, "robust_accuracy": 0.25,
               "config": {**pgd["config"], "model": "resnet18", "defense": {"name": "trades", "beta": 6.0}},
               "per_attack": {"fgsm": 0.5, "pgd": 0.25}, "created_utc": "2030-01-01T00:00:00+00:00",
               "warnings": ["pgd is weaker than fgsm on 3 points"]}
    return [pgd, fgsm, derived]


@pytest.fixture
def store(karp_home, made_records) -> list[dict]:
    """The three records appended to the test's own KARP_HOME."""
    results = ResultsStore()
    for record in made_records:
        results.append(record)
    return made_records


def one_line_error(capsys, code) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("karp-robust: error:"), err
    return err[0]


def listed_ids(out: str) -> list[str]:
    return [line.split("|")[1].strip() for line in out.splitlines()[2:] if line.startswith("|")]


def test_list_shows_every_record_and_filters(store, capsys):
    pgd, fgsm, trades = store
    assert main(["records", "list"]) == 0
    out = capsys.readouterr().out
    assert listed_ids(out) == [pgd["id"], fgsm["id"], trades["id"]]
    header = [c.strip() for c in out.splitlines()[0].strip("|").split("|")]
    assert header == ["id", "created (UTC)", "model", "dataset", "defense", "norm", "eps", "n", "clean", "robust", "attacks"]
    row = [c.strip() for c in out.splitlines()[2].strip("|").split("|")]
    assert row[2:9] == ["smallcnn", "digits", "standard", "linf", "0.1", "60", f"{pgd['clean_accuracy']:.4f}"]
    assert row[10] == "fgsm, pgd" and "3 records" in out
    for filters, expected in [(["--attack", "pgd"], [pgd, trades]), (["--attack", "FGSM"], [pgd, fgsm, trades]),
                              (["--model", "resnet18"], [trades]), (["--defense", "standard", "--attack", "pgd"], [pgd]),
                              (["--dataset", "digits", "--defense", "trades"], [trades])]:
        assert main(["records", "list", *filters]) == 0
        assert listed_ids(capsys.readouterr().out) == [r["id"] for r in expected], filters
    assert main(["records", "list", "--dataset", "mnist"]) == 0
    assert capsys.readouterr().out.startswith("no records match these filters")


def test_list_of_an_empty_home_creates_nothing(karp_home, capsys):
    assert main(["records", "list"]) == 0
    assert capsys.readouterr().out.startswith("no records in")
    assert not (karp_home / "results.sqlite").exists()


def test_show_is_readable_and_json_is_the_record(store, capsys):
    pgd, fgsm, trades = store
    assert main(["records", "show", fgsm["id"][:8]]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"record {fgsm['id']}")
    assert "linf eps=0.05" in out and "first 40 test points" in out and "fgsm(loss=ce)" in out
    assert f"| after fgsm          |     {fgsm['per_attack']['fgsm']:.4f} |" in out
    assert f"| robust (worst case) |     {fgsm['robust_accuracy']:.4f} |" in out
    assert fgsm["checkpoint"] in out and fgsm["config"]["weights"] in out and "warnings: none" in out
    assert main(["records", "show", trades["id"]]) == 0
    out = capsys.readouterr().out
    assert "trades(beta=6.0)" in out and "  - pgd is weaker than fgsm on 3 points" in out
    assert main(["records", "show", fgsm["id"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == fgsm


def test_show_of_an_unknown_or_ambiguous_id_is_one_line(store, capsys):
    pgd, _, trades = store
    assert "unknown record id 'ffff'" in one_line_error(capsys, main(["records", "show", "ffff"]))
    line = one_line_error(capsys, main(["records", "show", pgd["id"][:6]]))
    assert "ambiguous" in line and pgd["id"] in line and trades["id"] in line
    assert main(["records", "show", pgd["id"][:7]]) == 0  # one more character decides


def test_export_csv_reads_back_with_pandas(store, tmp_path, capsys):
    out = tmp_path / "records.csv"
    assert main(["records", "export", "--format", "csv", "--out", str(out)]) == 0
    assert "wrote 3 records" in capsys.readouterr().err
    table = pandas.read_csv(out)
    assert len(table) == 3 and not {"clean_mask", "robust_mask", "indices"} & set(table.columns)
    for record, (_, row) in zip(store, table.iterrows()):
        assert row["id"] == record["id"] and row["model"] == record["config"]["model"]
        for key in ("eps", "n_examples", "seed"):
            assert row[key] == record["config"][key], key  # exact: floats are written as repr
        for key in ("clean_accuracy", "robust_accuracy"):
            assert row[key] == record[key], key
        for name in ("fgsm", "pgd"):
            assert (row[f"after_{name}"] == record["per_attack"][name] if name in record["per_attack"]
                    else pandas.isna(row[f"after_{name}"]))
        assert json.loads(row["attack_configs"]) == record["config"]["attacks"]
        assert row["n_warnings"] == len(record["warnings"])
    assert main(["records", "export", "--format", "csv", "--defense", "trades"]) == 0  # to stdout, filtered
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].startswith(store[2]["id"] + ",")


def test_export_json_round_trips(store, tmp_path, capsys):
    out = tmp_path / "records.json"
    assert main(["records", "export", "--format", "json", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == store == ResultsStore().records()
    assert not list(tmp_path.glob(".records.json.*"))  # the atomic write left no temporary file
    assert main(["records", "export", "--format", "json", "--model", "nothing"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == (f"karp-robust {importlib.metadata.version('karp-robust')} "
                                               f"(torch {importlib.metadata.version('torch')})")


def test_data_download_offline_names_the_files(karp_home, tmp_path, monkeypatch, capsys):
    def offline(self):
        raise urllib.error.URLError("network unreachable (test)")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    line = one_line_error(capsys, main(["data", "download", "mnist", "--data-dir", str(tmp_path / "data")]))
    assert "download failed" in line and "network unreachable (test)" in line
    assert f"in {tmp_path / 'data'}/MNIST/raw/" in line and all(name in line for name in MNIST_FILES)


def test_data_download_of_data_at_hand(mnist_dir, karp_home, capsys):
    assert main(["data", "download", "digits"]) == 0
    assert "nothing to download" in capsys.readouterr().out
    assert main(["data", "download", "mnist", "--data-dir", str(mnist_dir)]) == 0  # already there: no network
    assert capsys.readouterr().out.strip() == f"mnist: ready under {mnist_dir} (train 60000, test 10000 images)"
    assert "unknown dataset 'mnist2'" in one_line_error(capsys, main(["data", "download", "mnist2"]))


def test_mnist_skip_names_the_missing_files(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte").write_bytes(b"")
    monkeypatch.setenv("KARP_TEST_DATA", str(tmp_path))
    path, missing = mnist_data_dir()
    assert path == tmp_path.resolve() and missing == [n for n in MNIST_FILES if n != "t10k-images-idx3-ubyte"]
    message = mnist_missing_message(path, missing)
    assert ", ".join(missing) in message and str(raw.resolve()) in message
    assert f"karp-robust data download mnist --data-dir {path}" in message


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["records", "--help"], ["evaluate", "--help"]])
def test_help_and_version_do_not_import_torch(args):
    code = ("import sys\nfrom robustbench_karp.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    assert e.code == 0\nassert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
