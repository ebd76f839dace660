"""Protocol standard/3 (certification, `strong`, the defense's adaptive attacks, the probe) and `--protocol autoattack`,
which stays exactly standard/2: the same EvalConfig, so the same record id; a board ranks standard/2 and standard/3
rows together, each naming its protocol."""

from __future__ import annotations

import json

import pytest

from robustbench_karp import catalog
from robustbench_karp.attacks import ATTACKS, build_attack
from robustbench_karp.attacks.fgsm import FGSM
from robustbench_karp.attacks.pgd import PGD
from robustbench_karp.boards.entries import build_entries
from robustbench_karp.boards.tables import boards, protocol_cell
from robustbench_karp.cli import main
from robustbench_karp.evaluation.evalconfig import EvalConfig
from robustbench_karp.evaluation.protocols import ALIASES, PROTOCOLS, get_protocol
from robustbench_karp.store import config_hash


class StandIn(PGD):
    """Registered as `strong` for a test only while attacks/strong.py is not there yet."""

    name = "strong"


@pytest.fixture
def strong(monkeypatch):
    if "strong" not in ATTACKS:
        monkeypatch.setitem(ATTACKS._items, "strong", StandIn)
    return build_attack("strong")


@pytest.fixture
def prepared(karp_home, digits_checkpoint):
    from robustbench_karp.harness import EvalRequest, prepare

    req = EvalRequest(model="smallcnn", dataset="digits", checkpoint=str(digits_checkpoint), n_examples=12,
                      device="cpu")
    return req, prepare(req)


def test_standard_is_version_3_certification_then_strong_then_the_probe(strong):
    protocol = get_protocol("standard")
    assert protocol.label == "standard/3" and PROTOCOLS.get("standard/3") is protocol
    assert [a.config() for a in protocol.build_attacks()] == [strong.config()]  # strong with its default options
    assert protocol.certify == "crown-ibp" and protocol.certify == PROTOCOLS.get("standard/2").certify
    assert protocol.probes == PROTOCOLS.get("standard/2").probes  # a purifier's plain PGD, as standard/2's
    assert "autoattack" not in json.dumps([a.config() for a in protocol.build_attacks()])


def test_autoattack_is_standard_2_and_gives_its_record_id(prepared, strong):
    from robustbench_karp.harness import EvalRequest, plan_evaluation

    req, model = prepared
    plans = {name: plan_evaluation(EvalRequest(**{**req.__dict__, "protocol": name}), model)
             for name in ("autoattack", "standard/2", "standard")}
    assert get_protocol("autoattack") is PROTOCOLS.get("standard/2") and ALIASES == {"autoattack": "standard/2"}
    assert plans["autoattack"].config == plans["standard/2"].config
    assert plans["autoattack"].id == plans["standard/2"].id == config_hash(plans["standard/2"].config.to_dict())
    assert plans["autoattack"].config.protocol == "standard/2"
    assert [a["name"] for a in plans["autoattack"].config.attacks] == ["autoattack"]
    # the newest standard is another evaluation: another id, strong instead of AutoAttack, same certification
    three = plans["standard"].config
    assert three.protocol == "standard/3" and plans["standard"].id != plans["standard/2"].id
    assert [a["name"] for a in three.attacks] == ["strong"] and three.certify == plans["autoattack"].config.certify


def test_autoattack_with_an_added_attack_is_one_line_and_writes_nothing(karp_home, capsys):
    code = main(["evaluate", "--model", "smallcnn", "--dataset", "digits", "--protocol", "autoattack",
                 "--attack", "pgd", "--n-examples", "8", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--protocol autoattack" in err and "--attack" in err
    assert not karp_home.exists() or not any(p.is_file() for p in karp_home.rglob("*"))  # no training, no record
    # the library refuses it too; standard/2 itself still takes additions
    from robustbench_karp.harness import EvalRequest, requested_attacks

    with pytest.raises(ValueError, match="takes no --attack"):
        requested_attacks(EvalRequest(protocol="autoattack", attacks=[FGSM()]))
    attacks, label = requested_attacks(EvalRequest(protocol="standard/2", attacks=[FGSM()]))
    assert [a.name for a in attacks] == ["autoattack", "fgsm"] and label == "standard/2"
    assert requested_attacks(EvalRequest(protocol="autoattack"))[1] == "standard/2"


def test_a_purifiers_adaptive_attacks_run_before_strong_and_the_probe_beside(prepared, strong, monkeypatch):
    from robustbench_karp import harness
    from robustbench_karp.harness import EvalRequest, plan_evaluation

    class Purifier:  # what plan_evaluation asks of a defense here: its adaptive attacks
        def adaptive_attacks(self):
            return [FGSM()]

    monkeypatch.setattr(harness, "build_defense", lambda name, options: Purifier())
    monkeypatch.setattr(type(get_protocol("standard")), "build_probes", lambda self, defense: [PGD(steps=3)])
    req, model = prepared
    plan = plan_evaluation(EvalRequest(**{**req.__dict__, "protocol": "standard"}), model)
    assert [a.name for a in plan.attacks] == ["fgsm", "strong"] and [p.name for p in plan.probes] == ["pgd"]
    plain = plan_evaluation(EvalRequest(**{**req.__dict__, "attacks": [strong]}), model)
    assert [a.name for a in plain.attacks] == ["strong", "fgsm"]  # without a protocol they run last, as before


def board_record(model: str, robust: int, attack: dict, label: str, n: int = 50) -> dict:
    """A record of ours at MNIST Linf 0.3 that ran one protocol (its requirement frozen, as records freeze it)."""
    config = EvalConfig(model=model, dataset="mnist", defense={"name": "pgd-at"}, weights=model * 4,
                        defense_weights=None, norm="linf", eps=0.3, n_examples=n, seed=0, batch_size=500,
                        attacks=(attack,), rng="per-batch/1", protocol=label).to_dict()
    return {"id": config_hash(config), "schema": 3, "config": config, "clean_accuracy": 1.0,
            "robust_accuracy": robust / n, "per_attack": {attack["name"]: robust / n}, "attack_order": [attack["name"]],
            "clean_mask": "1" * n, "robust_mask": "1" * robust + "0" * (n - robust), "indices": list(range(n)),
            "checkpoint": None, "checkpoint_sha256": None, "created_utc": "2026-12-07T00:00:00+00:00",
            "warnings": [], "versions": {}, "protocol_requirements": {label: [attack]}}


def test_a_board_ranks_standard_2_and_standard_3_rows_together(strong, karp_home, monkeypatch):
    monkeypatch.setattr(catalog, "_cache", catalog._Cache())  # requirements computed here, never from another test's
    aa = build_attack("autoattack").config()
    rows = [board_record("aa-row", 40, aa, "standard/2"), board_record("strong-row", 45, strong.config(), "standard/3"),
            board_record("strong-low", 30, strong.config(), "standard/3"),
            board_record("pgd-only", 48, build_attack("pgd").config(), "none")]
    rows[-1]["protocol_requirements"] = {}  # a hand-picked attack: no protocol
    entries = build_entries(rows, checkpoint_exists=lambda p: False)
    assert [(e["model"], e["status"], e["protocols"]) for e in entries] == [
        ("strong-row", "ranked", ["standard/3"]), ("aa-row", "ranked", ["standard/1", "standard/2"]),
        ("strong-low", "ranked", ["standard/3"]), ("pgd-only", "partial", [])]
    ranked, partial = boards(entries)  # one board (mnist linf 0.3): its ranked table and its partial one
    assert (ranked["tier"], partial["tier"]) == ("ranked", "partial") and ranked["eps"] == partial["eps"] == 0.3
    column = [c for c, _ in ranked["rows"][0]["cells"]].index("standard/3 · karp-robust")
    assert [(row["cells"][0][0], row["cells"][column][0]) for row in ranked["rows"]] == [
        ("1", "standard/3 · karp-robust"), ("2", "standard/2 · karp-robust"), ("3", "standard/3 · karp-robust")]
    assert protocol_cell(entries[1]) == "standard/2 · karp-robust"
