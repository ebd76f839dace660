"""The leaderboard: Wilson intervals, worst-case entries, the RobustBench importer and the golden site.

tests/golden/records.json holds synthetic records (20 test points; resnet18/pgd_at on 100): on mnist
linf 0.3 smallcnn/standard (a fgsm -> pgd cascade, a square run, and an older run of the same id; the
newest two carry engine-counted costs), smallcnn/trades at eps 0, 0.1, 0.2, 0.3 (the 0.3 one flagged),
resnet18/pgd_at whose checkpoint is missing, and two external RobustBench entries on cifar10 8/255
(Carmon2019Unlabeled from the fixture, and Kang2021Stable from tests/data: flagged unreliable, ranked
by its best-known figure). Its rendered site is compared with
tests/golden/{README.md, results.csv, index.html}. After an intended change of the output,
regenerate them and review the diff before committing:

    KARP_UPDATE_GOLDEN=1 OMP_NUM_THREADS=1 pytest tests/test_leaderboard.py -k golden
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import pytest

from robustbench_karp.boards.entries import build_entries, curves, import_robustbench, wilson_interval
from robustbench_karp.boards.site import render_site

GOLDEN = Path(__file__).parent / "golden"
MODEL_INFO = Path(__file__).parent / "data" / "robustbench_model_info"
KANG = "cifar10/Linf/Kang2021Stable.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_DATA = re.compile(rb"data:image/png;base64,([A-Za-z0-9+/=]+)")


def golden_entries() -> list[dict]:
    fixture = json.loads((GOLDEN / "records.json").read_text())
    external = [import_robustbench(fixture["robustbench_model_info"], fixture["robustbench_source"]),
                import_robustbench(json.loads((MODEL_INFO / KANG).read_text()), f"model_info/{KANG}")]
    existing = set(fixture["existing_checkpoints"])
    return build_entries(fixture["records"] + external, checkpoint_exists=existing.__contains__)


def make_record(rid: str, *, broken: dict[str, set[int]], n: int = 10, wrong: frozenset[int] = frozenset(),
                model: str = "smallcnn", created: str = "2025-01-01T00:00:00+00:00", warnings: tuple[str, ...] = (),
                checkpoint: str = "/ckpt/a.pt") -> dict:
    """A record on test points 0..n-1: `wrong` misclassified clean, then each attack (a cascade) breaks its points."""
    clean = set(range(n)) - set(wrong)
    robust, per_attack = set(clean), {}
    for name, points in broken.items():
        robust -= points
        per_attack[name] = len(robust) / n
    mask = lambda points: "".join("1" if i in points else "0" for i in range(n))
    return {"id": rid, "model": model, "dataset": "mnist", "defense": "standard", "checkpoint": checkpoint,
            "checkpoint_sha256": "f" * 64, "attacks": [{"name": a} for a in broken], "attack_order": list(broken),
            "norm": "linf", "eps": 0.3, "n_examples": n, "indices": list(range(n)), "seed": 0,
            "clean_accuracy": len(clean) / n, "robust_accuracy": len(robust) / n, "per_attack": per_attack,
            "clean_mask": mask(clean), "robust_mask": mask(robust), "versions": {"torch": "2.5.1"},
            "created_utc": created, "warnings": list(warnings), "train_config": None}


def exists(path: str) -> bool:
    return True


@pytest.mark.parametrize("k, n, expected", [
    (0, 10, (0.0, 0.277533)),  # upper = z^2 / (n + z^2) = 3.841459 / 13.841459
    (50, 100, (0.403832, 0.596168)),  # 0.5 -+ z * sqrt(25 + z^2/4) / (100 + z^2) = 0.5 -+ 0.096168
    (10, 10, (0.722467, 1.0)),  # lower = n / (n + z^2) = 10 / 13.841459
    (1, 20, (0.008881, 0.236131)),
])
def test_wilson_interval_matches_hand_computed_values(k, n, expected):
    assert wilson_interval(k, n) == pytest.approx(expected, abs=1e-6)


def test_wilson_interval_edge_cases():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(11, 10)


def test_worst_case_is_the_and_of_the_masks_across_records():
    a = make_record("a" * 16, broken={"attack_a": {0, 1}})
    b = make_record("b" * 16, broken={"attack_b": {1, 2}})
    (entry,) = build_entries([a, b], exists)
    # Only points 3..9 survive both attacks; each attack alone leaves 8 of 10.
    assert (entry["k_robust"], entry["n"], entry["robust_accuracy"]) == (7, 10, 0.7)
    assert entry["per_attack"] == {"attack_a": 0.8, "attack_b": 0.8}
    assert entry["robust_ci"] == list(wilson_interval(7, 10))
    assert entry["clean_accuracy"] == 1.0 and entry["record_ids"] == ["a" * 16, "b" * 16]


def test_ranking_uses_the_worst_case_never_the_best_attack():
    # x: attack_a alone leaves 90%, but with attack_b only 30% survive; y: 50% against its one attack.
    x = [make_record("1" * 16, model="x", broken={"attack_a": {0}}),
         make_record("2" * 16, model="x", broken={"attack_b": set(range(1, 7))})]
    y = [make_record("3" * 16, model="y", broken={"attack_a": set(range(5))})]
    entries = build_entries(x + y, exists)
    assert [(e["model"], e["robust_accuracy"]) for e in entries] == [("y", 0.5), ("x", 0.3)]


def test_a_cascade_keeps_its_cumulative_accuracies():
    (entry,) = build_entries([make_record("c" * 16, broken={"fgsm": {0}, "pgd": {1, 2}})], exists)
    assert entry["per_attack"] == {"fgsm": 0.9, "fgsm+pgd": 0.7}
    assert entry["attacks"] == ["fgsm", "pgd"]


def test_a_missing_checkpoint_keeps_the_entry_but_not_reproducible():
    records = [make_record("a" * 16, broken={"pgd": {0}}, checkpoint="checkpoints/gone.pt"),
               make_record("b" * 16, model="other", broken={"pgd": {0}}, checkpoint="checkpoints/here.pt")]
    entries = build_entries(records, checkpoint_exists=lambda p: p == "checkpoints/here.pt")
    status = {e["model"]: (e["reproducible"], e["reproducibility"]) for e in entries}
    assert status == {"smallcnn": (False, "no: checkpoint missing"), "other": (True, "yes")}


def test_the_newest_record_of_an_id_wins():
    old = make_record("a" * 16, broken={"pgd": {0}}, created="2025-01-01T00:00:00+00:00")
    new = make_record("a" * 16, broken={"pgd": {0, 1, 2, 3}}, created="2025-02-01T00:00:00+00:00")
    for records in ([old, new], [new, old]):
        (entry,) = build_entries(records, exists)
        assert entry["robust_accuracy"] == 0.6 and entry["record_ids"] == ["a" * 16]


def test_warnings_of_every_record_become_flags():
    records = [make_record("a" * 16, broken={"pgd": {0}}, warnings=("zero gradients on 3 points",)),
               make_record("b" * 16, broken={"square": {1}}, warnings=("black-box beats white-box",))]
    (entry,) = build_entries(records, exists)
    assert entry["flags"] == ["black-box beats white-box", "zero gradients on 3 points"]


def test_a_record_on_a_subset_of_the_points_still_breaks_them():
    # pgd on 10 points breaks point 0; square on the first 5 breaks 1, 2, 3: all four are broken (never 0.9).
    big = make_record("a" * 16, broken={"pgd": {0}}, n=10)
    small = make_record("b" * 16, broken={"square": {1, 2, 3}}, n=5)
    (entry,) = build_entries([big, small], exists)
    assert (entry["n"], entry["k_robust"], entry["robust_accuracy"]) == (10, 6, 0.6)
    assert entry["record_ids"] == ["a" * 16, "b" * 16] and entry["left_out_record_ids"] == []
    assert any("subset" in note for note in entry["notes"])


def test_records_on_other_points_are_left_out_with_a_note():
    big = make_record("a" * 16, broken={"pgd": {0}}, n=10)
    other = {**make_record("b" * 16, broken={"square": {1, 2, 3}}, n=5), "indices": [20, 21, 22, 23, 24]}
    (entry,) = build_entries([big, other], exists)
    assert (entry["n"], entry["robust_accuracy"], entry["record_ids"]) == (10, 0.9, ["a" * 16])
    assert entry["left_out_record_ids"] == ["b" * 16]
    assert any("b" * 16 in note and "other test points" in note for note in entry["notes"])


AUTOATTACK = {"name": "autoattack", "steps": 100, "square_queries": 5000}


def test_only_protocol_entries_are_ranked_and_partial_ones_never_above_them():
    # "pgd-only" looks stronger (90%) than "protocol" (60%), but only ran PGD: it is an upper bound.
    pgd_only = make_record("1" * 16, model="pgd-only", broken={"pgd": {0}})
    protocol = {**make_record("2" * 16, model="protocol", broken={"autoattack": {0, 1, 2, 3}}), "attacks": [AUTOATTACK]}
    weaker_options = {**make_record("3" * 16, model="aa-10-steps", broken={"autoattack": {0}}),
                      "attacks": [{**AUTOATTACK, "steps": 10}]}
    entries = build_entries([pgd_only, protocol, weaker_options], exists)
    assert [(e["model"], e["status"], e["protocols"]) for e in entries] == [
        ("protocol", "ranked", ["standard/1", "standard/2"]), ("aa-10-steps", "partial", []), ("pgd-only", "partial", [])]
    from robustbench_karp.boards.tables import boards

    tables = boards(entries)
    assert [(b["tier"], [r["entry_id"] for r in b["rows"]]) for b in tables] == [
        ("ranked", [entries[0]["entry_id"]]), ("partial", [entries[1]["entry_id"], entries[2]["entry_id"]])]
    assert tables[1]["rows"][0]["cells"][0][0] == "–" and "upper bound" in tables[1]["title"]


def test_a_protocol_run_ranks_its_model_and_a_larger_partial_run_stays_beside_it():
    # The case: PGD on 30 points, then the protocol on the first 20 of them. The protocol's 20 points rank
    # the model; PGD's breaks among them count (point 1), its break outside them (25) does not; PGD's 30 stay beside.
    pgd = make_record("a" * 16, broken={"pgd": {1, 25}}, n=30)
    protocol = {**make_record("b" * 16, broken={"autoattack": {0, 2}}, n=20, created="2025-02-01T00:00:00+00:00"),
                "attacks": [AUTOATTACK]}
    (entry,) = build_entries([pgd, protocol], exists)
    assert (entry["status"], entry["protocols"], entry["protocol_coverage"]) == ("ranked", ["standard/1", "standard/2"], {})
    assert (entry["n"], entry["k_robust"], entry["robust_accuracy"]) == (20, 17, 0.85)  # 0, 1, 2 broken
    assert entry["record_ids"] == ["b" * 16, "a" * 16] and entry["left_out_record_ids"] == []
    assert entry["partial_measurements"] == [{"record_ids": ["a" * 16], "n": 30, "attacks": ["pgd"],
                                              "clean_accuracy": 1.0, "robust_accuracy": 28 / 30}]
    assert any("also measured on 30 test points by pgd" in note and "93.3%" in note for note in entry["notes"])
    from robustbench_karp.boards.tables import boards, protocol_cell

    assert protocol_cell(entry) == "standard/2 · karp-robust"
    (board,) = boards([entry])
    assert board["tier"] == "ranked" and board["rows"][0]["cells"][0][0] == "1"


def test_without_a_protocol_run_the_largest_set_still_decides():
    pgd = make_record("a" * 16, broken={"pgd": {1, 25}}, n=30)
    square = make_record("b" * 16, broken={"square": {0, 2}}, n=20)
    (entry,) = build_entries([pgd, square], exists)
    assert (entry["status"], entry["n"], entry["k_robust"], entry["partial_measurements"]) == ("partial", 30, 26, [])


def test_a_purifier_needs_its_adaptive_attacks_for_the_protocol():
    gan = {"name": "defense-gan", "base": "standard", "steps": 50, "restarts": 4, "lr": 10.0, "epochs": 3,
           "train_size": None, "latent_dim": 64, "width": 32, "batch_size": 64, "gan_lr": 1e-4}
    record = {**make_record("4" * 16, broken={"autoattack": {0}}), "defense": "defense-gan", "defense_config": gan,
              "attacks": [AUTOATTACK]}
    (entry,) = build_entries([record], exists)
    assert entry["status"] == "partial"
    from robustbench_karp.attacks import build_attack

    adaptive = [build_attack("transfer-pgd").config(), build_attack("bpda-pgd", {"samples": 2}).config()]
    (entry,) = build_entries([{**record, "attacks": [AUTOATTACK, *adaptive]}], exists)
    assert entry["status"] == "ranked"


def test_defense_options_and_weights_separate_entries():
    base = make_record("5" * 16, broken={"pgd": {0}})
    variants = [base, {**base, "id": "6" * 16, "defense_config": {"name": "standard", "x": 1}},
                {**base, "id": "7" * 16, "weights_sha256": "e" * 64}]
    assert len(build_entries(variants, exists)) == 3


def test_golden_entries_external_flagged_and_curves():
    entries = golden_entries()
    by_name = {(e["model"], e["defense"], e["eps"]): e for e in entries}
    external = [e for e in entries if e["external"]]
    assert len(entries) == 8 and len(external) == 2
    assert all(e["reproducibility"] == "external" and not e["reproducible"] for e in external)
    # Kang2021Stable: AutoAttack 71.28%, best known 64.20%; it is ranked by the lower figure, as on RobustBench.
    assert [(e["model_id"], e["robust_accuracy"], e["robust_source"]) for e in external] == [
        ("Kang2021Stable", 0.642, "external"), ("Carmon2019Unlabeled", 0.5953, "autoattack_acc")]
    standard = by_name[("smallcnn", "standard", 0.3)]  # the older run of a1a1... (90% robust) is superseded
    assert (standard["k_robust"], standard["per_attack"]) == (1, {"fgsm": 0.55, "fgsm+pgd": 0.35, "square": 0.55})
    # Its two records' engine-counted costs add up per test point: (19 + 440 + 0) backward passes / 20 points.
    cost = standard["cost"]
    assert (cost["backward_per_point"], cost["wall_seconds"], cost["devices"]) == (22.95, 25.0, ["cpu"])
    assert cost["per_attack"]["pgd"]["backward_per_point"] == 40 and cost["per_attack"]["square"]["backward_passes"] == 0
    assert by_name[("smallcnn", "trades", 0.3)]["cost"]["backward_per_point"] is None  # its record predates the counts
    assert by_name[("smallcnn", "trades", 0.3)]["flags"] == [
        "gradient masking suspected: black-box square beats white-box pgd on 2 points"]
    assert curves(entries)[("mnist", "linf", "smallcnn / trades")] == [  # eps 0 is clean; the others ran no protocol
        (0.0, 0.85, "protocol"), (0.1, 0.75, "partial"), (0.2, 0.6, "partial"), (0.3, 0.55, "partial")]


def fgsm_record(rid: str, sha: str, eps: float, seed: int, defense_options: dict, epochs: int) -> dict:
    record = make_record(rid, broken={"pgd": {0}}, checkpoint=f"/ckpt/{sha}.pt")
    record.update(defense="fgsm-at", checkpoint_sha256=sha * 64, eps=eps, seed=seed, train_config={
        "defense": {"name": "fgsm-at", "step_scale": 1.25, **defense_options}, "recipe": {"epochs": epochs}})
    return record


def test_training_label_and_one_curve_per_checkpoint():
    """Two fgsm-at checkpoints are told apart by how they were trained; a lone-eps checkpoint draws no curve."""
    records = [fgsm_record("a" * 16, "a", 0.1, 0, {"init": "prior"}, 10),
               fgsm_record("b" * 16, "a", 0.3, 0, {"init": "prior"}, 10),
               fgsm_record("c" * 16, "c", 0.1, 0, {}, 20), fgsm_record("d" * 16, "c", 0.3, 0, {}, 20),
               fgsm_record("e" * 16, "e", 0.3, 1, {"init": "uniform"}, 12)]
    entries = build_entries(records, exists)
    assert sorted({e["training"] for e in entries}) == ["12 ep", "20 ep", "init=prior, 10 ep"]
    assert set(curves(entries)) == {("mnist", "linf", "smallcnn / fgsm-at (init=prior, 10 ep, seed 0)"),
                                    ("mnist", "linf", "smallcnn / fgsm-at (20 ep, seed 0)")}
    assert all(len(points) == 2 for points in curves(entries).values())
    # the same recipe and seed retrained into other weights: two curves, told apart by the weights' hash
    again = [fgsm_record("h" * 16, "h", 0.1, 0, {}, 20), fgsm_record("i" * 16, "h", 0.3, 0, {}, 20)]
    twins = curves(build_entries(records[2:4] + again, exists))
    assert sorted(twins) == [("mnist", "linf", "smallcnn / fgsm-at (20 ep, seed 0) · cccccccc"),
                             ("mnist", "linf", "smallcnn / fgsm-at (20 ep, seed 0) · hhhhhhhh")]
    assert all(len(points) == 2 for points in twins.values())
    assert build_entries([make_record("f" * 16, broken={})], exists)[0]["training"] == ""
    # two checkpoints of one recipe trained at other eps (ibp at 0.1 and 0.3, both on the eps-0 board)
    at = [{**fgsm_record(c * 16, c, 0.0, 0, {}, 35), "defense": "ibp"} for c in "pq"]
    for record, eps in zip(at, (0.1, 0.3)):
        record["train_config"].update(defense={"name": "ibp"}, eps=eps)
    assert sorted(e["training"] for e in build_entries(at, exists)) == ["ε 0.1, 35 ep", "ε 0.3, 35 ep"]
    bf16 = fgsm_record("g" * 16, "g", 0.3, 0, {}, 10)
    bf16["train_config"]["recipe"]["amp"] = "bf16"
    fp32 = {**bf16, "id": "h" * 16, "checkpoint_sha256": "h" * 64, "train_amp": "none"}
    labels = {e["weights"][5]: e["training"] for e in build_entries([{**bf16, "train_amp": "bf16"}, fp32], exists)}
    assert labels == {"g": "10 ep", "h": "fp32 (no bf16), 10 ep"}  # the same recipe, trained without bf16 units
    stopped = {**fgsm_record("i" * 16, "i", 0.3, 0, {"init": "prior"}, 12),
               "train_outcome": {"epochs_completed": 4, "selected_epoch": 2, "stopped_early": True}}
    finished = {**fgsm_record("j" * 16, "j", 0.3, 0, {}, 12),
                "train_outcome": {"epochs_completed": 12, "selected_epoch": 11, "stopped_early": False}}
    labels = {e["weights"][5]: e["training"] for e in build_entries([stopped, finished], exists)}
    assert labels == {"i": "init=prior, stopped at ep 4 of 12 (catastrophic overfitting), kept ep 2", "j": "12 ep"}
    zoo = {**make_record("k" * 16, broken={}), "model": "robustbench:Carmon2019Unlabeled", "train_config": None,
           "model_source": {"kind": "robustbench", "id": "Carmon2019Unlabeled", "threat_model": "Linf"}}
    assert build_entries([zoo], exists)[0]["training"] == "robustbench weights, trained elsewhere"  # not 'standard'
    # Defense-GAN's own options (GAN epochs, L, R) decide its number but are not in its classifier's training
    gan = {"name": "defense-gan", "base": "standard", "steps": 50, "restarts": 4, "lr": 10.0, "epochs": 3,
           "train_size": None, "latent_dim": 64, "width": 32, "batch_size": 64, "gan_lr": 1e-4}
    purifier = {**make_record("l" * 16, broken={}), "defense": "defense-gan", "defense_config": gan,
                "train_config": {"defense": {"name": "standard"}, "recipe": {"epochs": 4}}}
    paper = {**purifier, "id": "m" * 16, "defense_config": {**gan, "steps": 200, "restarts": 10, "epochs": 10}}
    assert sorted(e["training"] for e in build_entries([purifier, paper], exists)) == [
        "classifier standard, 4 ep", "epochs=3, restarts=4, steps=50; classifier standard, 4 ep"]



def test_a_published_training_label_is_worded_afresh_from_its_record(tmp_path):
    import json

    from robustbench_karp.boards.published import load_published

    gan = {"name": "defense-gan", "base": "standard", "steps": 50, "restarts": 4, "lr": 10.0, "epochs": 3,
           "train_size": None, "latent_dim": 64, "width": 32, "batch_size": 64, "gan_lr": 1e-4}
    record = {**make_record("n" * 16, broken={"pgd": {0}}), "defense": "defense-gan", "defense_config": gan,
              "train_config": {"defense": {"name": "standard"}, "recipe": {"epochs": 4}}}
    render_site(build_entries([record], exists), tmp_path)
    (path,) = (tmp_path / "entries").glob("*.json")
    path.write_text(json.dumps({**json.loads(path.read_text()), "training": "4 ep"}))  # as an older version worded it
    assert [e["training"] for e in load_published(tmp_path)] == ["epochs=3, restarts=4, steps=50; classifier standard, 4 ep"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    render_site(golden_entries(), out)
    return out


@pytest.mark.parametrize("name", ["README.md", "results.csv", "index.html"])
def test_golden_files(site, name):
    actual = (site / name).read_bytes()
    if name == "index.html":
        # PNG pixels depend on the matplotlib/FreeType build, so the golden page holds a placeholder
        # for each embedded image; the payloads are checked against curves/*.png below.
        actual = PNG_DATA.sub(b"data:image/png;base64,PLACEHOLDER", actual)
    golden = GOLDEN / name
    if os.environ.get("KARP_UPDATE_GOLDEN") == "1":
        golden.write_bytes(actual)
    assert golden.is_file(), f"{golden} is missing: regenerate with KARP_UPDATE_GOLDEN=1 pytest tests/test_leaderboard.py"
    assert actual.decode() == golden.read_bytes().decode(), f"{name} differs from {golden} (see module docstring)"


def test_site_files_pngs_and_embedded_images(site):
    entries = golden_entries()
    assert sorted(p.name for p in (site / "entries").iterdir()) == sorted(f"{e['entry_id']}.json" for e in entries)
    pngs = [site / "curves" / "mnist-linf.png"]  # cifar10's entries have one eps each: no curve, no figure
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)
    page = (site / "index.html").read_bytes()
    assert [base64.b64decode(m) for m in PNG_DATA.findall(page)] == [p.read_bytes() for p in pngs]
    assert page.count(b'alt="Robustness curves on ') == 1 and not (site / "curves" / "cifar10-linf.png").exists()
    # Self-contained: no fetch/XHR, nothing loaded from elsewhere; the only URLs are the external
    # entries' paper links, which a reader clicks (nothing is fetched).
    for forbidden in (b"fetch(", b"XMLHttpRequest", b"<link", b'src="http'):
        assert forbidden not in page
    urls = re.findall(rb'(.{9})https?://', page)
    assert urls == [b'<a href="', b'<a href="']
    entry = json.loads((site / "entries" / f"{entries[0]['entry_id']}.json").read_text())
    assert entry == json.loads(json.dumps(entries[0]))


def test_rendering_is_pure(tmp_path):
    entries = golden_entries()
    first, second = render_site(entries, tmp_path / "a"), render_site(list(reversed(entries)), tmp_path / "b")
    tree = lambda root: {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    assert [p.relative_to(tmp_path / "a") for p in first] == [p.relative_to(tmp_path / "b") for p in second]


def test_no_entries_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no entries to publish"):
        render_site([], tmp_path / "site")
    assert not (tmp_path / "site").exists()


CARMON = {"link": "https://arxiv.org/abs/1905.13736", "name": "Unlabeled Data Improves Adversarial Robustness",
          "authors": "Yair Carmon, Aditi Raghunathan, Ludwig Schmidt, Percy Liang, John C. Duchi",
          "additional_data": True, "number_forward_passes": 1, "dataset": "cifar10", "venue": "NeurIPS 2019",
          "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "89.69", "reported": "62.5",
          "autoattack_acc": "59.53", "threat_model": "Linf"}


def test_import_robustbench_converts_to_fractions():
    record = import_robustbench(CARMON, "Carmon2019Unlabeled.json")
    config = record["config"]
    assert (record["clean_accuracy"], record["robust_accuracy"], config["eps"]) == (0.8969, 0.5953, 8 / 255)
    assert (record["source"], record["tool"], config["dataset"], config["norm"]) == ("external", "robustbench", "cifar10", "linf")
    assert record["per_attack"] == {"autoattack": 0.5953} and config["n_examples"] == 10000
    assert config["model"] == "WideResNet-28-10" and config["defense"] == {"name": CARMON["name"]}
    assert record["warnings"] == [] and record["created_utc"] == "unknown" and re.fullmatch(r"[0-9a-f]{16}", record["id"])
    assert import_robustbench(dict(CARMON), "elsewhere/Carmon2019Unlabeled.json")["id"] == record["id"]


def test_import_robustbench_reads_the_threat_model_from_the_directory():
    data = {k: v for k, v in CARMON.items() if k != "threat_model"}
    assert import_robustbench(data, "model_info/cifar10/L2/x.json")["config"]["norm"] == "l2"
    with pytest.raises(ValueError, match="field 'threat_model'"):
        import_robustbench(data, "x.json")


@pytest.mark.parametrize("change, field", [
    ({"clean_acc": None}, "clean_acc"), ({"clean_acc": "abc"}, "clean_acc"), ({"clean_acc": "120"}, "clean_acc"),
    ({"autoattack_acc": None}, "autoattack_acc"), ({"autoattack_acc": "95.0"}, "autoattack_acc"),
    ({"eps": "1/0"}, "eps"), ({"eps": "__import__('os')"}, "eps"), ({"eps": None}, "eps"),
    ({"dataset": None}, "dataset"), ({"threat_model": "l3"}, "threat_model"), ({"n_examples": 0}, "n_examples"),
    ({"external": "abc"}, "external"), ({"external": "101"}, "external"),
])
def test_import_robustbench_errors_name_the_field(change, field):
    data = {k: v for k, v in {**CARMON, **change}.items() if v is not None}  # None: the field is missing
    with pytest.raises(ValueError, match=f"robustbench model_info: field '{field}'"):
        import_robustbench(data, "Carmon2019Unlabeled.json")
