"""Every published number re-derivable, one board for every AutoAttack number, and the holes a review found.

Mixed boards rank by accuracy; builds re-derive entries from records and `verify` catches a hand edit;
records keep no home paths; printed commands survive the shell; resumes refuse mixed conditions;
AdvGAN's generator is part of the identity; reproduce never follows a path from published JSON;
torchrun ranks place their model on their own GPU.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from torch import nn

from robustbench_karp.boards.entries import build_entries
from robustbench_karp.boards.robustbench_import import import_robustbench
from robustbench_karp.boards.site import render_site
from robustbench_karp.boards.tables import boards
from robustbench_karp.cli import main
from robustbench_karp.evaluation.evalconfig import EvalConfig
from robustbench_karp.store import ResultsStore, config_hash

ROOT = Path(__file__).resolve().parents[1]
AUTOATTACK = {"name": "autoattack", "steps": 100, "square_queries": 5000}
CARMON = {"link": "https://arxiv.org/abs/1905.13736", "name": "Unlabeled Data Improves Adversarial Robustness",
          "additional_data": True, "number_forward_passes": 1, "dataset": "cifar10", "venue": "NeurIPS 2019",
          "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "89.69", "autoattack_acc": "59.53",
          "threat_model": "Linf"}


def protocol_record(model: str, robust: int, n: int = 100, dataset: str = "cifar10", eps: float = 8 / 255) -> dict:
    """A schema-3 record of ours that ran AutoAttack standard: the first `robust` of n points survive."""
    config = EvalConfig(model=model, dataset=dataset, defense={"name": "pgd-at"}, weights=model * 4, defense_weights=None,
                        norm="linf", eps=eps, n_examples=n, seed=0, batch_size=500, attacks=(AUTOATTACK,),
                        rng="per-batch/1").to_dict()
    mask = "1" * robust + "0" * (n - robust)
    return {"id": config_hash(config), "schema": 3, "config": config, "clean_accuracy": 1.0,
            "robust_accuracy": robust / n, "per_attack": {"autoattack": robust / n}, "attack_order": ["autoattack"],
            "clean_mask": "1" * n, "robust_mask": mask, "indices": list(range(n)), "checkpoint": None,
            "checkpoint_sha256": None, "created_utc": "2026-12-01T00:00:00+00:00", "warnings": [], "versions": {}}


def imported(name: str, autoattack: str) -> dict:
    return import_robustbench({**CARMON, "autoattack_acc": autoattack}, f"model_info/cifar10/Linf/{name}.json")


def test_a_mixed_board_ranks_ours_and_robustbenchs_by_accuracy_alone():
    ours = [protocol_record("ours-a", 65), protocol_record("ours-b", 52)]
    theirs = [imported("Theirs70", "70.00"), imported("Theirs60", "60.00"), imported("Theirs45", "45.00")]
    entries = build_entries(ours + theirs, checkpoint_exists=lambda p: False)
    order = [e.get("model_id") or e["model"] for e in entries]
    assert order == ["Theirs70", "ours-a", "Theirs60", "ours-b", "Theirs45"]
    assert {e["status"] for e in entries} == {"ranked"}
    (board,) = boards(entries)  # one board, one ranked table: the separation note compares these rows only
    assert [row["cells"][0][0] for row in board["rows"]] == ["1", "2", "3", "4", "5"]
    protocol_column = [c for c, _ in board["rows"][0]["cells"]].index("AutoAttack · robustbench")
    assert [row["cells"][protocol_column][0] for row in board["rows"]] == [
        "AutoAttack · robustbench", "standard/2 · karp-robust", "AutoAttack · robustbench", "standard/2 · karp-robust",
        "AutoAttack · robustbench"]
    assert "#1 and #2" in board["separation"] or "separated" in board["separation"]


def test_a_partial_entry_stays_in_its_own_unranked_table():
    partial = {**protocol_record("pgd-only", 90), "per_attack": {"pgd": 0.9}, "attack_order": ["pgd"]}
    partial["config"] = {**partial["config"], "attacks": [{"name": "pgd"}]}
    partial["id"] = config_hash(partial["config"])
    tables = boards(build_entries([partial, imported("Theirs60", "60.00")], checkpoint_exists=lambda p: False))
    assert [(t["tier"], len(t["rows"])) for t in tables] == [("ranked", 1), ("partial", 1)]


@pytest.fixture
def site(tmp_path):
    out = tmp_path / "site"
    render_site(build_entries([protocol_record("ours-a", 65), imported("Theirs60", "60.00")],
                              checkpoint_exists=lambda p: False), out)
    return out


def test_tampering_is_caught_by_verify_and_undone_by_a_build(site, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KARP_HOME", str(tmp_path / "empty-home"))
    assert main(["leaderboard", "verify", str(site)]) == 0
    assert "verified" in capsys.readouterr().out
    path = next(p for p in (site / "entries").glob("*.json") if "ours-a" in p.read_text())
    honest = path.read_text()
    entry = json.loads(honest)
    path.write_text(json.dumps({**entry, "robust_accuracy": 0.99}, sort_keys=True, indent=2) + "\n")
    assert main(["leaderboard", "verify", str(site)]) == 1
    out = capsys.readouterr().out
    assert f"entry {entry['entry_id']}: robust_accuracy is 0.99 but its records give 0.65" in out
    assert main(["leaderboard", "build", "--out", str(site)]) == 0  # re-derived from the records it publishes
    assert path.read_text() == honest
    assert main(["leaderboard", "verify", str(site)]) == 0
    assert not (tmp_path / "empty-home" / "results.sqlite").exists()  # the builds read a store they never made


def test_verify_catches_a_record_whose_numbers_or_id_were_edited(site, capsys):
    path = next(p for p in (site / "entries").glob("*.json") if "ours-a" in p.read_text())
    entry = json.loads(path.read_text())
    record = entry["records"][0]
    entry["records"][0] = {**record, "robust_accuracy": 0.7, "config": {**record["config"], "seed": 1}}
    path.write_text(json.dumps(entry, sort_keys=True, indent=2) + "\n")
    assert main(["leaderboard", "verify", str(site)]) == 1
    out = capsys.readouterr().out
    assert f"record {record['id']}: its id is not its config's hash" in out
    assert f"record {record['id']}: robust_accuracy 0.7 but its mask counts 0.65" in out


def _edit_record(site: Path, model: str, edit) -> str:
    path = next(p for p in (site / "entries").glob("*.json") if model in p.read_text())
    entry = json.loads(path.read_text())
    edit(entry["records"][0])
    path.write_text(json.dumps(entry, sort_keys=True, indent=2) + "\n")
    return entry["records"][0]["id"]


def _two_attacks(record: dict) -> None:
    record |= {"per_attack": {"apgd-ce": 0.7, "autoattack": 0.65}, "attack_order": ["apgd-ce", "autoattack"]}


@pytest.mark.parametrize("model,edit,says", [
    ("ours-a", lambda r: r.update(protocol_requirements={"standard/1": [], "standard/2": []}),
     "frozen requirements of standard/1 are not what standard/1 asks"),
    ("ours-a", lambda r: r.update(indices=list(range(50, 150))), "not the first 100 of the test split"),
    ("ours-a", lambda r: (_two_attacks(r), r["per_attack"].update({"apgd-ce": 0.6})),
     "per-attack accuracies [0.6, 0.65] do not fall"),
    ("Theirs60", lambda r: r["config"].update(eps=0.5), "config "),
    ("Theirs60", lambda r: r.update(robust_source="external"), "robust_source "),
])
def test_verify_catches_edits_outside_the_masks(site, capsys, model, edit, says):
    rid = _edit_record(site, model, edit)
    assert main(["leaderboard", "verify", str(site)]) == 1
    assert f"record {rid}: " in (out := capsys.readouterr().out) and says in out


def test_edited_empty_requirements_never_rank_a_row():
    edited = {**protocol_record("edited", 90), "per_attack": {"pgd": 0.9}, "attack_order": ["pgd"],
              "protocol_requirements": {"standard/1": [], "standard/2": []}}
    edited["config"] = {**edited["config"], "attacks": [{"name": "pgd"}]}
    edited["id"] = config_hash(edited["config"])
    (entry,) = build_entries([edited], checkpoint_exists=lambda p: False)
    assert entry["status"] == "partial" and entry["protocols"] == []


def test_a_certificate_another_record_contradicts_is_flagged_and_never_counted(tmp_path, capsys):
    certified = {**protocol_record("net", 65), "certified_mask": "1" * 70 + "0" * 30, "certified_accuracy": 0.7}
    certified["robust_mask"] = "1" * 70 + "0" * 30  # its own attacks broke none of its certified points
    certified["robust_accuracy"] = certified["per_attack"]["autoattack"] = 0.7
    other = protocol_record("net", 65)  # same model and points, another attack config: it broke points 65..69
    other["config"] = {**other["config"], "attacks": [{"name": "pgd"}]}
    other |= {"id": config_hash(other["config"]), "per_attack": {"pgd": 0.65}, "attack_order": ["pgd"]}
    (entry,) = build_entries([certified, other], checkpoint_exists=lambda p: False)
    assert entry["k_certified"] == 65 and entry["certified_conflicts"] == 5 and entry["k_robust"] == 65
    assert any("5 point(s) certified by one record were broken" in f for f in entry["flags"])
    render_site([entry], tmp_path / "site")
    assert main(["leaderboard", "verify", str(tmp_path / "site")]) == 1
    assert "5 point(s) certified by one record were broken by another's attack" in capsys.readouterr().out


def test_an_import_keeps_no_importers_directories():
    record = import_robustbench(CARMON, "/home/alice/robustbench/model_info/cifar10/Linf/Carmon2019Unlabeled.json")
    assert record["imported_from"] == "model_info/cifar10/Linf/Carmon2019Unlabeled.json"
    from robustbench_karp.store.records import migrate

    assert migrate({**record, "imported_from": "/home/alice/Carmon2019Unlabeled.json"})["imported_from"] == \
        "Carmon2019Unlabeled.json"


def test_a_partial_entry_is_not_exported_to_robustbench(karp_home, capsys):
    partial = {**protocol_record("pgd-only", 90), "per_attack": {"pgd": 0.9}, "attack_order": ["pgd"]}
    partial["config"] = {**partial["config"], "attacks": [{"name": "pgd"}]}
    partial["id"] = config_hash(partial["config"])
    ResultsStore().append(partial)
    (entry,) = build_entries([partial], checkpoint_exists=lambda p: False)
    assert main(["leaderboard", "export", entry["entry_id"]]) == 2
    assert "is partial" in capsys.readouterr().err


def test_the_committed_leaderboard_verifies(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KARP_HOME", str(tmp_path))
    assert main(["leaderboard", "verify", str(ROOT / "leaderboard")]) == 0, capsys.readouterr().out


def test_no_absolute_home_paths_in_the_published_leaderboard():
    home = re.compile(r"(/home/|/root/|/Users/|[A-Z]:\\\\Users\\\\|/tmp/)")
    for path in (ROOT / "leaderboard").rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".csv", ".html"):
            assert not home.search(path.read_text()), path


def test_records_keep_no_absolute_paths_and_old_ones_lose_theirs():
    from robustbench_karp.store import portable_path
    from robustbench_karp.store.records import migrate

    assert portable_path(Path("/home/someone/models/w.pt")) == "w.pt"
    old = {"id": "x", "model": "m", "dataset": "mnist", "defense": "standard", "norm": "linf", "eps": 0.3,
           "checkpoint": "/home/someone/w.pt", "model_file": "/home/someone/net.py",
           "attack_provenance": {"advgan": {"generator_path": "/home/someone/.cache/g.pt", "generator_sha256": "a"}}}
    new = migrate(old)
    assert "/home/" not in json.dumps(new) and new["checkpoint"] == "w.pt" and "model_file" not in new


def test_printed_commands_survive_the_shell():
    from robustbench_karp.training.checkpoints import train_command

    weird = {"model": "smallcnn", "dataset": "mnist", "norm": "linf", "eps": 0.3, "seed": 0, "train_size": None,
             "defense": {"name": "pgd-at", "steps": 5}, "recipe": {"epochs": 3}}
    command = train_command(weird, data_dir=Path("/data dir/with 'quotes'"))
    argv = shlex.split(command)
    assert argv[:4] == ["karp-robust", "train", "--model", "smallcnn"]
    assert argv[argv.index("--data-dir") + 1] == "/data dir/with 'quotes'"
    (board,) = boards(build_entries([imported("Theirs60", "60.00")], checkpoint_exists=lambda p: False))
    assert shlex.split(board["command"]) == ["karp-robust", "leaderboard", "build", "--dataset", "cifar10", "--norm",
                                             "linf", "--eps", "8/255"]


def test_an_imported_dataset_must_be_one_we_know():
    with pytest.raises(ValueError, match="dataset 'cifar10; rm -rf' is not one"):
        import_robustbench(CARMON, "x.json", dataset="cifar10; rm -rf", norm="linf")


def test_reproduce_never_imports_a_module_path_from_published_json(tmp_path, monkeypatch, capsys):
    """A crafted entry names a module file outside the working tree, with that file's true sha256."""
    import hashlib

    evil = tmp_path / "elsewhere" / "evil.py"
    evil.parent.mkdir()
    evil.write_text(f"open({str(tmp_path / 'pwned')!r}, 'w').write('x')\ndef build():\n    raise SystemExit\n")
    sha = hashlib.sha256(evil.read_bytes()).hexdigest()
    record = protocol_record("evil.py:build", 50, dataset="mnist", eps=0.3)
    record["config"]["source"] = {"kind": "file", "file": "evil.py", "factory": "build", "sha256": sha,
                                  "normalization": None}
    record["id"] = config_hash(record["config"])
    record |= {"model_file": str(evil), "checkpoint": str(tmp_path / "w.pt"), "checkpoint_sha256": "0" * 64}
    site = tmp_path / "site"
    render_site(build_entries([record], checkpoint_exists=lambda p: False), site)
    monkeypatch.setenv("KARP_HOME", str(tmp_path / "home"))
    code = main(["reproduce", record["id"], "--site", str(site)])
    err = capsys.readouterr().err
    assert code == 2 and "--model-file" in err and not (tmp_path / "pwned").exists()
    # the same file named as the model itself, under a source kind nothing knows: still never imported
    record["config"]["model"], record["config"]["source"] = str(evil) + ":build", {"kind": "other"}
    record["checkpoint"], record["config"]["defense"] = None, {"name": "standard"}
    record["id"] = config_hash(record["config"])
    render_site(build_entries([record], checkpoint_exists=lambda p: False), tmp_path / "site2")
    code = main(["reproduce", record["id"], "--site", str(tmp_path / "site2")])
    err = capsys.readouterr().err
    assert code == 2 and "never followed" in err and not (tmp_path / "pwned").exists()


def test_resuming_under_other_conditions_is_refused(tmp_path):
    from robustbench_karp.evaluation.sharded import PartialResults, ResumeRefused

    partial = PartialResults(tmp_path / "results.sqlite", "a" * 16, [2])
    here = {"device": "cuda", "threads": 8, "torch": "2.14.1"}
    partial.check_conditions(here)
    from robustbench_karp.evaluation.engine import BatchOutcome

    partial.save(0, BatchOutcome([True, True], [True, False], {"pgd": 1}, {}))
    partial.check_conditions(here)  # the same conditions resume
    for changed in ({**here, "threads": 2}, {**here, "device": "cpu"}):
        with pytest.raises(ResumeRefused, match=r"other conditions .*--restart"):
            partial.check_conditions(changed)


def test_a_resume_on_other_threads_refuses_on_the_command_line(karp_home, digits_checkpoint, monkeypatch, capsys):
    from robustbench_karp.evaluation.sharded import PartialResults

    args = ["evaluate", "--model", "smallcnn", "--checkpoint", str(digits_checkpoint), "--attack", "fgsm",
            "--n-examples", "40", "--batch-size", "20"]
    real_save = PartialResults.save

    def save_then_stop(self, b, outcome):  # the first batch lands, then the run is interrupted
        real_save(self, b, outcome)
        raise KeyboardInterrupt

    monkeypatch.setattr(PartialResults, "save", save_then_stop)
    assert main(args) == 130
    monkeypatch.setattr(PartialResults, "save", real_save)
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads != 1 else 2)
    try:
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "other conditions" in err and "threads" in err and "--restart" in err and len(err.splitlines()) == 1
        assert main([*args, "--restart"]) == 0
    finally:
        torch.set_num_threads(threads)


def test_torchrun_rank_1_of_2_places_its_model_on_its_own_gpu():
    from robustbench_karp.devices import resolve_device

    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    assert resolve_device("auto", env=env, cuda_available=True) == torch.device("cuda", 1)
    assert resolve_device("cuda", env=env, cuda_available=True) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", env=env, cuda_available=True) == torch.device("cuda", 0)  # asked for by name
    assert resolve_device("auto", env=env, cuda_available=False) == torch.device("cpu")
    assert resolve_device("auto", env={}, cuda_available=True) == torch.device("cuda")


def test_prepare_places_the_model_on_the_device_resolved_for_its_rank(karp_home, digits_checkpoint, monkeypatch):
    """harness.prepare resolves the device (LOCAL_RANK included) before the model is placed: stub the choice."""
    from robustbench_karp import harness

    chosen = []

    def stub(device, **kw):
        chosen.append(device)
        return torch.device("cpu")  # stands for cuda:1 on a machine without GPUs

    monkeypatch.setattr(harness, "resolve_device", stub)
    model, provenance, device = harness.prepare(harness.EvalRequest(model="smallcnn", checkpoint=str(digits_checkpoint),
                                                                    device="cuda"))
    assert chosen == ["cuda"] and device == torch.device("cpu")
    assert {p.device for p in model.parameters()} == {torch.device("cpu")}


class Quantize(nn.Module):
    def forward(self, x):
        return (x * 4).round() / 4  # five grey levels: a zero gradient almost everywhere


class Vanishing(nn.Module):
    """A purifier whose preprocessing kills input gradients: plain PGD sees none, BPDA goes around it."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier, self.preprocess = classifier, Quantize()

    def forward(self, x):
        return self.classifier(self.preprocess(x))


@pytest.mark.slow
def test_the_protocol_measures_a_purifiers_non_adaptive_accuracy_and_flags_obfuscation(karp_home, digits_model,
                                                                                        monkeypatch):
    import dataclasses

    from robustbench_karp import harness
    from robustbench_karp.attacks import build_attack
    from robustbench_karp.evaluation.protocols import PROTOCOLS

    req = harness.EvalRequest(model="smallcnn", dataset="digits", defense="defense-gan", n_examples=60, device="cpu",
                              protocol="standard/2", attacks=[], eps=0.1)
    model = Vanishing(digits_model)
    provenance = {"model": "smallcnn", "dataset": "digits", "defense": "defense-gan",
                  "defense_config": {"name": "defense-gan", "base": "standard"}, "model_source": None,
                  "checkpoint": None, "checkpoint_sha256": None, "weights_sha256": "w" * 64,
                  "defense_weights_sha256": None, "train_config": None, "train_conditions": None, "train_amp": None,
                  "train_outcome": None}
    cheap = dataclasses.replace(PROTOCOLS.get("standard/2"), attacks=(("fgsm", ()),))  # a cheap stand-in for AA
    monkeypatch.setitem(PROTOCOLS._items, "standard/2", cheap)
    record = harness.run_evaluation(req, store=ResultsStore(), prepared=(model, provenance, torch.device("cpu")))
    assert record["config"]["probes"] == [build_attack("pgd").config()]
    assert record["probes"]["probe:pgd"] == record["non_adaptive_accuracy"] > record["robust_accuracy"] + 0.1
    assert any("obfuscated gradients" in w for w in record["warnings"])
    assert "probes" in record["cost"]


def test_a_rows_protocol_is_judged_by_the_requirements_frozen_in_its_record(monkeypatch):
    # the catalog now asks pgd-at for an extra adaptive attack: rows that ran before keep the word of their record
    stricter = {"standard/1": [AUTOATTACK, {"name": "eot-pgd"}], "standard/2": [AUTOATTACK, {"name": "eot-pgd"}]}
    monkeypatch.setattr("robustbench_karp.catalog.protocol_requirements", lambda defense: stricter)
    frozen = {**protocol_record("frozen", 60), "protocol_requirements": {"standard/2": [AUTOATTACK]}}
    unfrozen = protocol_record("unfrozen", 50)  # an older record that froze nothing: the catalog's word applies
    entries = {e["model"]: e for e in build_entries([frozen, unfrozen], checkpoint_exists=lambda p: False)}
    assert entries["frozen"]["status"] == "ranked"
    assert entries["unfrozen"]["status"] != "ranked"


def test_defense_arg_selects_the_checkpoint_trained_with_those_options(karp_home, digits_checkpoint, monkeypatch):
    """--defense-arg beta=3 must evaluate a TRADES model trained at beta 3, never the registered beta's."""
    from robustbench_karp import harness

    asked = []

    def obtain(config, **kw):
        asked.append(config)
        return digits_checkpoint

    monkeypatch.setattr(harness.checkpoints, "obtain_checkpoint", obtain)
    for options in ({}, {"beta": 3.0}):
        harness.prepare(harness.EvalRequest(model="smallcnn", defense="trades", defense_options=options))
    default, chosen = asked
    assert default.defense["beta"] != 3.0 and chosen.defense["beta"] == 3.0
    assert default.stem() != chosen.stem()  # two files in the store, two identities


def test_a_build_publishes_only_records_that_re_derive(karp_home, tmp_path, capsys):
    store = ResultsStore()
    store.append(protocol_record("with-masks", 60))
    legacy = {**protocol_record("no-masks", 70), "clean_mask": None, "robust_mask": None}
    store.append(legacy)
    assert main(["leaderboard", "build", "--out", str(tmp_path / "site")]) == 0
    assert "left out 1 record(s) whose numbers cannot be re-derived" in capsys.readouterr().err
    (entry,) = [json.loads(p.read_text()) for p in (tmp_path / "site" / "entries").glob("*.json")]
    assert entry["model"] == "with-masks"
    assert main(["leaderboard", "verify", str(tmp_path / "site")]) == 0


def test_a_build_that_leaves_nothing_says_so_and_keeps_the_site(karp_home, tmp_path, capsys):
    site = tmp_path / "site"
    render_site(build_entries([protocol_record("only", 60)], checkpoint_exists=lambda p: False), site)
    rid = _edit_record(site, "only", lambda r: r.update(robust_mask=None))
    assert main(["leaderboard", "build", "--out", str(site)]) == 2
    err = capsys.readouterr().err
    assert "nothing left to publish" in err and f"record {rid}" in err and len(err.strip().splitlines()) == 2
    assert len(list((site / "entries").glob("*.json"))) == 1  # nothing was deleted on the way


def test_the_boards_hand_written_history_survives_builds_and_is_verified(site, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KARP_HOME", str(tmp_path / "empty-home"))
    (site / "HISTORY.md").write_text("- Dropped: legacy row 31027f08432bd7a4 (no masks).\n")
    assert main(["leaderboard", "verify", str(site)]) == 1  # the README does not carry it yet
    assert "README.md" in capsys.readouterr().out
    assert main(["leaderboard", "build", "--out", str(site)]) == 0
    readme = (site / "README.md").read_text()
    assert readme.endswith("## History of these boards (HISTORY.md)\n\n- Dropped: legacy row 31027f08432bd7a4 (no masks).\n")
    assert (site / "HISTORY.md").is_file() and main(["leaderboard", "verify", str(site)]) == 0
