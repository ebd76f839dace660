"""compare, leaderboard build/publish/add-external/export and reproduce, through the CLI."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from robustbench_karp import harness
from robustbench_karp.cli import main
from robustbench_karp.store import ResultsStore

COMPARE = ["compare", "--model", "smallcnn", "--defenses", "standard,fgsm-at", "--attacks", "fgsm,pgd",
           "--attack-arg", "pgd.steps=5", "--n-examples", "100"]
MODEL_INFO = {"link": "https://arxiv.org/abs/1905.13736", "name": "Unlabeled Data Improves Adversarial Robustness",
              "authors": "Yair Carmon", "additional_data": True, "number_forward_passes": 1, "dataset": "cifar10",
              "venue": "NeurIPS 2019", "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "89.69",
              "reported": "62.5", "autoattack_acc": "59.53", "threat_model": "Linf"}


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("karp-robust: error:"), err
    return err[0]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """A store filled by one compare run (two defenses x two attacks on the digits)."""
    home = tmp_path_factory.mktemp("compare-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KARP_HOME", str(home))
        assert main(COMPARE) == 0
    return home


@pytest.fixture
def home(compared, tmp_path, monkeypatch):
    copy = tmp_path / "home"
    shutil.copytree(compared, copy)
    monkeypatch.setenv("KARP_HOME", str(copy))
    for record in ResultsStore(copy / "results.sqlite").records():  # store-relative: they move with the store
        assert record["checkpoint"].startswith("checkpoints/")
    return copy


def test_compare_prints_the_matrix_and_reuses_the_store(home, capsys):
    assert main(COMPARE) == 0
    captured = capsys.readouterr()
    assert captured.err.count("stored, reused") == 4 and "running" not in captured.err
    header = next(line for line in captured.out.splitlines() if line.startswith("| defense"))
    assert ["clean", "fgsm", "pgd", "worst case [95% CI]"] == [c.strip() for c in header.split("|")[2:6]]
    rows = [line for line in captured.out.splitlines() if line.startswith("| standard") or line.startswith("| fgsm-at")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        fgsm, pgd, worst = float(cells[2]), float(cells[3]), float(cells[4].split()[0])
        assert worst <= min(fgsm, pgd)  # the worst case is per example, never the best attack


def test_interrupted_compare_resumes_where_it_stopped(compared, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KARP_HOME", str(tmp_path / "fresh"))
    shutil.copytree(compared / "checkpoints", tmp_path / "fresh" / "checkpoints")
    real, calls = harness.run_evaluation, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(harness, "run_evaluation", interrupted)
    assert main(COMPARE) == 130
    assert len(ResultsStore().records()) == 2  # the finished cells stayed, the interrupted one left nothing
    monkeypatch.setattr(harness, "run_evaluation", real)
    capsys.readouterr()
    assert main(COMPARE) == 0
    assert capsys.readouterr().err.count("stored, reused") == 2 and len(ResultsStore().records()) == 4


@pytest.mark.parametrize("args,message", [(["--defenses", ","], "--defenses is empty"),
                                          (["--defenses", "standard,magic"], "valid:")])
def test_compare_bad_input(home, capsys, args, message):
    assert main(["compare", "--model", "smallcnn", *args]) == 2
    assert message in error_line(capsys)


def test_leaderboard_publish_and_not_reproducible_entries(home, tmp_path, capsys):
    missing = next(r for r in ResultsStore().records() if r["config"]["defense"]["name"] == "fgsm-at")["checkpoint"]
    (home / missing).unlink()
    out = tmp_path / "site"
    assert main(["leaderboard", "publish", "--out", str(out), "--dataset", "digits"]) == 0
    assert "1 not reproducible" in capsys.readouterr().out
    rows = [line for line in (out / "README.md").read_text().splitlines() if "| smallcnn" in line]
    assert len(rows) == 2  # shown, never dropped
    assert "no: checkpoint missing" in next(r for r in rows if "fgsm-at" in r)
    assert "yes" in next(r for r in rows if "standard" in r)
    assert len(list((out / "entries").glob("*.json"))) == 2 and (out / "results.csv").is_file()
    assert "<table" in (out / "index.html").read_text()
    assert not list((out / "curves").glob("*.png"))  # each model at one eps: no curve to draw


def test_leaderboard_with_no_entries_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KARP_HOME", str(tmp_path / "empty"))
    assert main(["leaderboard", "publish", "--out", str(tmp_path / "site")]) == 2
    assert "no entries to publish" in error_line(capsys)
    assert not (tmp_path / "site").exists()


def _store_with(home, tmp_path, name, keep):
    """A second store holding only the records of `home` that keep(record) selects (checkpoints copied)."""
    other = tmp_path / name
    shutil.copytree(home / "checkpoints", other / "checkpoints")
    store = ResultsStore(other / "results.sqlite")
    for record in ResultsStore(home / "results.sqlite").records():
        if keep(record):
            store.append(record)
    return other


def test_leaderboard_merge_keeps_entries_of_other_stores(home, tmp_path, monkeypatch, capsys):
    out = tmp_path / "site"
    assert main(["leaderboard", "publish", "--out", str(out)]) == 0  # standard and fgsm-at
    before = {p.name: p.read_bytes() for p in (out / "entries").glob("*.json")}
    fgsm_at = next(n for n, b in before.items() if json.loads(b)["defense"] == "fgsm-at")
    assert len(before) == 2
    # A store with the standard model's records only: fgsm-at's published entry stays, re-derived to the same bytes.
    monkeypatch.setenv("KARP_HOME", str(_store_with(home, tmp_path, "b", lambda r: r["config"]["defense"]["name"] == "standard")))
    for flags in (["--merge"], []):  # keeping what is published is the default; --merge says so
        assert main(["leaderboard", "publish", "--out", str(out), *flags]) == 0
        assert {p.name: p.read_bytes() for p in (out / "entries").glob("*.json")} == before
        assert "fgsm-at" in (out / "README.md").read_text() and "warning" not in capsys.readouterr().err
    # A store that lacks one of an entry's published records: the published record stays in the entry.
    dropped = next(r["id"] for r in ResultsStore().records() if r["attack_order"] == ["fgsm"])
    monkeypatch.setenv("KARP_HOME", str(_store_with(home, tmp_path, "c", lambda r: r["id"] != dropped
                                                    and r["config"]["defense"]["name"] == "standard")))
    assert main(["leaderboard", "publish", "--out", str(out)]) == 0
    assert {p.name: p.read_bytes() for p in (out / "entries").glob("*.json")} == before
    # --prune: the site is this store's alone on the boards built, and the other entry's file does not linger.
    assert main(["leaderboard", "publish", "--out", str(out), "--prune"]) == 0
    assert [p.name for p in (out / "entries").glob("*.json")] == [n for n in before if n != fgsm_at]
    assert "fgsm-at" not in (out / "README.md").read_text() and "fgsm-at" not in (out / "results.csv").read_text()
    assert dropped not in (out / "results.csv").read_text()


@pytest.mark.parametrize("damage,message", [
    (lambda e: "{not json", "not valid JSON"),
    (lambda e: json.dumps([e]), "not a JSON object"),
    (lambda e: json.dumps({k: v for k, v in e.items() if k != "robust_ci"}), "lacks robust_ci"),
    (lambda e: json.dumps({**e, "eps": 0.5}), "does not match"),
    (lambda e: json.dumps({**e, "records": [1]}), "not a list of records"),
])
def test_leaderboard_merge_refuses_a_damaged_published_entry(home, tmp_path, capsys, damage, message):
    out = tmp_path / "site"
    assert main(["leaderboard", "publish", "--out", str(out)]) == 0
    path = next((out / "entries").glob("*.json"))
    path.write_text(damage(json.loads(path.read_text())))
    capsys.readouterr()
    assert main(["leaderboard", "publish", "--out", str(out), "--merge"]) == 2
    assert message in error_line(capsys)
    assert path.is_file()  # a refused merge writes nothing


def test_add_external_and_its_bad_input(home, tmp_path, capsys):
    good = tmp_path / "Carmon2019Unlabeled.json"
    good.write_text(json.dumps(MODEL_INFO))
    assert main(["leaderboard", "add-external", str(good)]) == 0
    external = [r for r in ResultsStore().records() if r.get("source") == "external"]
    assert len(external) == 1 and external[0]["robust_accuracy"] == pytest.approx(0.5953)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({k: v for k, v in MODEL_INFO.items() if k != "clean_acc"}))
    assert main(["leaderboard", "add-external", str(bad)]) == 2
    assert "clean_acc" in error_line(capsys)
    bad.write_text("{not json")
    assert main(["leaderboard", "add-external", str(bad)]) == 2
    assert "not valid JSON" in error_line(capsys)
    out = tmp_path / "site"
    assert main(["leaderboard", "publish", "--out", str(out)]) == 0
    assert "external" in (out / "README.md").read_text()


def test_reproduce_matches_exactly_on_cpu(home, capsys):
    record = ResultsStore().records()[0]
    capsys.readouterr()
    assert main(["reproduce", record["id"]]) == 0
    out = capsys.readouterr().out
    assert "exact match" in out and "MISMATCH" not in out and out.strip().endswith("reproduced")


def test_reproduce_reports_a_mismatch_and_exits_1(home, capsys):
    record = ResultsStore().records()[0]
    ResultsStore().append({**record, "robust_accuracy": record["robust_accuracy"] + 0.01, "created_utc": "9999"})
    assert main(["reproduce", record["id"]]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_reproduce_bad_input(home, capsys):
    record = ResultsStore().records()[0]
    assert main(["reproduce", record["id"][:10] + "zz"]) == 2
    assert f"closest in the store: {record['id']}" in error_line(capsys)
    checkpoint = home / record["checkpoint"]
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"] = {k: v + 1e-3 if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    torch.save(state, checkpoint)
    assert main(["reproduce", record["id"]]) == 0  # other weights: evaluated anyway, judged statistically (issue 31)
    out = capsys.readouterr().out
    assert "weights differ from the recorded ones (weights_sha256)" in out
    assert "statistically reproduced (other weights)" in out
    checkpoint.unlink()
    assert main(["reproduce", record["id"]]) == 2
    line = error_line(capsys)
    assert "is missing" in line and "karp-robust train --model smallcnn --dataset digits" in line and "--train-missing" in line


def test_a_mismatch_never_touches_the_store_and_a_match_appends_only_when_asked(home, capsys):
    record = ResultsStore().records()[-1]
    tampered = {**record, "robust_accuracy": record["robust_accuracy"] + 0.01, "created_utc": "9999"}
    ResultsStore().append(tampered)
    rows = len(ResultsStore().records())
    assert main(["reproduce", record["id"]]) == 1
    assert "nothing was written" in capsys.readouterr().out
    assert len(ResultsStore().records()) == rows and ResultsStore().get(record["id"]) == tampered
    other = ResultsStore().records()[0]
    assert main(["reproduce", other["id"], "--append"]) == 0
    assert len(ResultsStore().records()) == rows + 1


def test_reproduce_from_a_published_site_without_the_records(home, tmp_path, capsys, monkeypatch):
    site = tmp_path / "site"
    assert main(["leaderboard", "publish", "--out", str(site)]) == 0
    entry = json.loads(next((site / "entries").glob("*.json")).read_text())
    clone = tmp_path / "clone-home"  # a clone of the published site: the checkpoints, but no results store
    shutil.copytree(home / "checkpoints", clone / "checkpoints")
    monkeypatch.setenv("KARP_HOME", str(clone))
    capsys.readouterr()
    assert main(["reproduce", entry["entry_id"], "--site", str(site)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines().count("reproduced") == len(entry["record_ids"]) and "MISMATCH" not in out
    assert f"reproduced {len(entry['record_ids'])} of {len(entry['record_ids'])} records" in out
    assert "robust_mask" in out and ResultsStore().records() == []


def test_a_build_limited_to_some_boards_keeps_every_other_board(home, tmp_path, capsys):
    site = tmp_path / "site"
    assert main(["leaderboard", "publish", "--out", str(site)]) == 0
    before = sorted(p.name for p in (site / "entries").glob("*.json"))
    assert main(["leaderboard", "build", "--out", str(site), "--dataset", "mnist", "--norm", "linf", "--eps", "0.3"]) == 0
    assert sorted(p.name for p in (site / "entries").glob("*.json")) == before  # the digits boards were not asked
    assert main(["leaderboard", "build", "--out", str(site), "--dataset", "digits"]) == 0
    assert sorted(p.name for p in (site / "entries").glob("*.json")) == before


MODEL_INFO_DIR = Path(__file__).parent / "data" / "robustbench_model_info"


def test_add_external_imports_many_and_a_reimport_replaces_the_row(karp_home, tmp_path, capsys):
    files = [str(MODEL_INFO_DIR / "cifar10" / "Linf" / f"{name}.json")
             for name in ("Gowal2020Uncovering_70_16", "Gowal2020Uncovering_70_16_extra", "Kang2021Stable")]
    assert main(["leaderboard", "add-external", *files]) == 0
    out = capsys.readouterr().out
    assert "Kang2021Stable (cifar10 linf eps 8/255: clean 0.9373, robust 0.6420 from external)" in out
    assert main(["leaderboard", "add-external", files[0]]) == 0  # again: the same row, not a second one
    site = tmp_path / "site"
    assert main(["leaderboard", "publish", "--out", str(site)]) == 0
    entries = [json.loads(p.read_text()) for p in (site / "entries").glob("*.json")]
    assert sorted(e["model_id"] for e in entries) == ["Gowal2020Uncovering_70_16", "Gowal2020Uncovering_70_16_extra",
                                                      "Kang2021Stable"]
    rows = [line for line in (site / "README.md").read_text().splitlines() if line.startswith("| ")][1:]  # after the header
    assert [row.split("|")[2].split()[0] for row in rows] == [
        "Gowal2020Uncovering_70_16_extra", "Kang2021Stable", "Gowal2020Uncovering_70_16"]  # 65.87, 64.20, 57.14


def test_add_external_bad_files_are_one_line_errors(karp_home, tmp_path, capsys):
    (corruption,) = (MODEL_INFO_DIR / "cifar10" / "corruptions").glob("*.json")
    assert main(["leaderboard", "add-external", str(corruption)]) == 2
    assert "corruptions are not supported" in error_line(capsys)
    elsewhere = tmp_path / "Gowal2020Uncovering.json"
    shutil.copy(MODEL_INFO_DIR / "cifar10" / "L2" / "Gowal2020Uncovering.json", elsewhere)
    assert main(["leaderboard", "add-external", str(elsewhere)]) == 2
    assert "--norm" in error_line(capsys) and ResultsStore().records() == []
    assert main(["leaderboard", "add-external", str(elsewhere), "--dataset", "cifar10", "--norm", "l2"]) == 0
    assert [(r["config"]["dataset"], r["config"]["norm"]) for r in ResultsStore().records()] == [("cifar10", "l2")]
    hendrycks = MODEL_INFO_DIR / "cifar100" / "Linf" / "Hendrycks2019Using.json"
    assert main(["leaderboard", "add-external", str(hendrycks)]) == 0
    assert "warning: Hendrycks2019Using: its model_info says dataset 'cifar10'" in capsys.readouterr().err


def test_export_writes_a_model_info_that_imports_back(karp_home, tmp_path, capsys):
    kang = MODEL_INFO_DIR / "cifar10" / "Linf" / "Kang2021Stable.json"
    assert main(["leaderboard", "add-external", str(kang)]) == 0
    site = tmp_path / "site"
    assert main(["leaderboard", "publish", "--out", str(site)]) == 0
    (entry_file,) = (site / "entries").glob("*.json")
    out = tmp_path / "model_info" / "cifar10" / "Linf" / "Kang2021Stable.json"
    capsys.readouterr()
    assert main(["leaderboard", "export", entry_file.stem, "--format", "robustbench", "--out", str(out)]) == 0
    assert "submit it to RobustBench as model_info/cifar10/Linf/Kang2021Stable.json" in capsys.readouterr().err
    exported, original = json.loads(out.read_text()), json.loads(kang.read_text())
    assert [exported[k] for k in ("clean_acc", "autoattack_acc", "external")] == ["93.73", "71.28", "64.20"]
    assert exported == {**original, "clean_acc": "93.73", "autoattack_acc": "71.28", "external": "64.20"}
    # From the published site alone (another machine's store knows nothing of it), printed to stdout.
    karp_home_other = tmp_path / "other-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KARP_HOME", str(karp_home_other))
        assert main(["leaderboard", "export", entry_file.stem, "--site", str(site)]) == 0
        assert json.loads(capsys.readouterr().out) == exported
        assert main(["leaderboard", "export", entry_file.stem[:-1] + "x", "--site", str(site)]) == 2
        assert f"closest: {entry_file.stem}" in error_line(capsys)


def test_publish_under_umask_022_is_world_readable(karp_home, tmp_path):
    import os

    assert main(["leaderboard", "add-external", str(MODEL_INFO_DIR / "cifar10" / "Linf" / "Carmon2019Unlabeled.json")]) == 0
    site = tmp_path / "www" / "robustness"
    old = os.umask(0o022)
    try:
        assert main(["leaderboard", "publish", "--out", str(site)]) == 0
    finally:
        os.umask(old)
    files = [p for p in site.rglob("*") if p.is_file()]
    assert len(files) == 4 and {oct(p.stat().st_mode & 0o777) for p in files} == {"0o644"}  # no curve: one eps
    dirs = [site.parent, site, site / "entries"]
    assert {oct(d.stat().st_mode & 0o777) for d in dirs} == {"0o755"}


AA_README = "https://github.com/fra31/auto-attack/blob/a39220048b3c9f2cca9a4d3a54604793c68eca7e/README.md#mnist---linf"


def paper(name: str, clean: str, robust: str, attack: str = "AutoAttack (standard)") -> list[str]:
    return ["leaderboard", "add-external", "--paper", name, "--link", "https://arxiv.org/abs/1706.06083",
            "--clean", clean, "--robust", robust, "--attack", attack, "--dataset", "mnist", "--norm", "linf",
            "--eps", "0.3", "--source", AA_README]


def test_add_external_takes_a_papers_figure_on_mnist_ranked_beside_ours(karp_home, tmp_path, capsys):
    assert main(paper("Madry et al., 2018", "98.53", "88.50")) == 0
    assert "added published figure Madry et al., 2018 (mnist linf eps 0.3: clean 0.9853, robust 0.8850" in \
        capsys.readouterr().out
    assert main(paper("Some et al., 2021", "99.10", "95.00", attack="PGD-40")) == 0  # not AutoAttack: an upper bound
    assert main(paper("Madry et al., 2018", "98.53", "88.50")) == 0  # again: the same row
    site = tmp_path / "site"
    assert main(["leaderboard", "publish", "--out", str(site)]) == 0
    entries = {e["model_id"]: e for e in (json.loads(p.read_text()) for p in (site / "entries").glob("*.json"))}
    madry, pgd = entries["Madry et al., 2018"], entries["Some et al., 2021"]
    assert (madry["status"], madry["n"], madry["robust_accuracy"], madry["k_robust"]) == ("ranked", 10000, 0.885, 8850)
    assert madry["external"] and madry["link"] == "https://arxiv.org/abs/1706.06083"
    assert any(AA_README in note for note in madry["notes"])  # its source, on the page
    assert pgd["status"] == "partial" and pgd["robust_accuracy"] == 0.95
    page = (site / "index.html").read_text()
    assert AA_README in page and "AutoAttack (standard) · published" in page
    capsys.readouterr()
    assert main(["leaderboard", "verify", str(site)]) == 0
    record = next(r for r in madry["records"])
    record["paper_figure"]["robust"] = "90.50"  # the figure edited: verify re-derives the record from it
    (site / "entries" / f"{madry['entry_id']}.json").write_text(json.dumps(madry))
    assert main(["leaderboard", "verify", str(site)]) == 1
    assert "robust_accuracy 0.885 but its paper figure gives 0.905" in capsys.readouterr().out


@pytest.mark.parametrize("change, message", [
    (["--link", ""], "needs --link"), (["--clean", "0.9853"], "not 0.9926"), (["--dataset", "mnist2"], "one karp-robust knows"),
    (["--robust", "99.9"], "at most clean"), (["--eps", "1/0"], "eps must be"), (["--link", "javascript:x"], "http(s) URL")])
def test_a_bad_paper_figure_is_a_one_line_error(karp_home, capsys, change, message):
    args = paper("Madry et al., 2018", "98.53", "88.50")
    args[args.index(change[0]) + 1] = change[1]
    assert main(args) == 2
    assert message in error_line(capsys) and ResultsStore().records() == []
