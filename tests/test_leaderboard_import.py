"""The RobustBench import and export on real model_info files, and the curve figure's legend.

tests/data/robustbench_model_info/ holds RobustBench's own files (its repository at commit 78fcc9e,
MIT licence), in its layout model_info/<dataset>/<threat>/<model id>.json: the models an import
keyed without the model id hid, files with `external`, eps written as 0.031, ImageNet ones and a
corruptions file. benchmarks/robustbench_import_check.py runs the same checks on all 188 Linf/L2 files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustbench_karp.boards.curves import curve_figure
from robustbench_karp.boards.entries import build_entries
from robustbench_karp.boards.robustbench_export import autoattack_accuracy, export_robustbench
from robustbench_karp.boards.robustbench_import import import_robustbench
from robustbench_karp.boards.site import render_site

MODEL_INFO = Path(__file__).parent / "data" / "robustbench_model_info"
FILES = sorted(p for p in MODEL_INFO.glob("*/*/*.json") if p.parent.name in ("Linf", "L2"))


def load(rel: str, **kwargs) -> dict:
    path = MODEL_INFO / rel
    return import_robustbench(json.loads(path.read_text()), f"model_info/{rel}", **kwargs)


def robustbench_key(path: Path) -> float:
    """RobustBench's own ranking key (template.py): `external` where the file has it, else `autoattack_acc`."""
    data = json.loads(path.read_text())
    return float(data["external"] if "external" in data else data["autoattack_acc"])


@pytest.fixture(scope="module")
def entries() -> list[dict]:
    return build_entries([load(str(p.relative_to(MODEL_INFO))) for p in FILES], checkpoint_exists=lambda p: False)


def test_every_file_is_its_own_entry(entries):
    assert len(FILES) == 25 and len(entries) == len(FILES)  # no two models merged
    ids = {(e["dataset"], e["norm"], e["model_id"]) for e in entries}
    assert len(ids) == len(FILES)
    hidden_before = ["Gowal2020Uncovering_70_16_extra", "Rebuffi2021Fixing_70_16_cutmix_extra", "Rade2021Helper_R18_extra",
                     "Huang2021Exploring_ema", "Cui2020Learnable_34_10_LBGAT6", "Cui2020Learnable_34_10_LBGAT9_eps_8_255",
                     "Bai2023Improving_edm"]
    assert set(hidden_before) <= {e["model_id"] for e in entries}
    assert all(e["left_out_record_ids"] == [] and e["notes"] == [] for e in entries if e["eps"] == 8 / 255
               and not e["model_id"].startswith(("Xiao", "Zhang")))


def test_each_board_is_ranked_as_robustbench_ranks_it(entries):
    boards: dict[tuple, list[dict]] = {}
    for e in entries:
        boards.setdefault((e["dataset"], e["norm"], e["eps"]), []).append(e)
    threat = {"linf": "Linf", "l2": "L2"}
    for (dataset, norm, _), board in boards.items():
        keys = [robustbench_key(MODEL_INFO / dataset / threat[norm] / f"{e['model_id']}.json") for e in board]
        assert keys == sorted(keys, reverse=True)
        assert [round(100 * e["robust_accuracy"], 2) for e in board] == keys
    # The 0.031 files (Xiao2020Enhancing, Zhang2019Theoretically) join the 8/255 board, as on RobustBench.
    assert sorted(len(b) for b in boards.values()) == [2, 3, 6, 14]


def test_robust_accuracy_is_the_lower_of_autoattack_and_external():
    kang = load("cifar10/Linf/Kang2021Stable.json")
    assert (kang["robust_accuracy"], kang["robust_source"], kang["per_attack"]) == (
        0.642, "external", {"autoattack": 0.7128, "best-known": 0.642})
    assert kang["warnings"] == ["robustbench marks this evaluation unreliable"]
    xiao = load("cifar10/Linf/Xiao2020Enhancing.json")
    assert (xiao["robust_accuracy"], xiao["robust_source"]) == (0.074, "external")
    qin = load("cifar10/Linf/Qin2019Adversarial.json")  # external == autoattack_acc: the AutoAttack figure
    assert (qin["robust_accuracy"], qin["robust_source"]) == (0.5284, "autoattack_acc")
    (entry,) = build_entries([kang], checkpoint_exists=lambda p: False)
    assert (entry["robust_accuracy"], entry["per_attack"]) == (0.642, {"autoattack": 0.7128, "autoattack+best-known": 0.642})


def test_dataset_and_threat_come_from_the_path_and_a_disagreeing_file_is_flagged():
    cifar100 = load("cifar100/Linf/Hendrycks2019Using.json")  # the file itself says "cifar10"
    assert (cifar100["config"]["dataset"], cifar100["robust_accuracy"]) == ("cifar100", 0.2842)
    assert cifar100["warnings"] == ["its model_info says dataset 'cifar10'; imported as cifar100 "
                                    "(from its path model_info/cifar100/Linf/)"]
    cifar10 = load("cifar10/Linf/Hendrycks2019Using.json")
    assert (cifar10["config"]["dataset"], cifar10["robust_accuracy"], cifar10["warnings"]) == ("cifar10", 0.5492, [])
    assert len(build_entries([cifar10, cifar100], checkpoint_exists=lambda p: False)) == 2
    data = json.loads((MODEL_INFO / "cifar10/L2/Gowal2020Uncovering.json").read_text())
    elsewhere = import_robustbench(data, "downloads/Gowal2020Uncovering.json", dataset="cifar10", norm="l2")
    assert (elsewhere["config"]["dataset"], elsewhere["config"]["norm"], elsewhere["config"]["eps"]) == ("cifar10", "l2", 0.5)
    with pytest.raises(ValueError, match="field 'threat_model'.*--norm"):
        import_robustbench(data, "downloads/Gowal2020Uncovering.json")


def test_imagenet_n_and_eps_written_as_a_rounded_fraction():
    imagenet = load("imagenet/Linf/Bai2024MixedNUTS.json")
    assert (imagenet["config"]["n_examples"], imagenet["config"]["eps"]) == (5000, 4 / 255)
    assert load("cifar10/Linf/Carmon2019Unlabeled.json")["config"]["n_examples"] == 10000
    zhang = load("cifar10/Linf/Zhang2019Theoretically.json")
    assert (zhang["config"]["eps"], zhang["eps_written"]) == (8 / 255, "0.031")
    assert zhang["notes"] == ["evaluated at eps = 0.031 (7.9/255), not exactly 8/255; shown on the 8/255 board"]
    (entry,) = build_entries([zhang], checkpoint_exists=lambda p: False)
    assert entry["eps_label"] == "8/255" and entry["notes"] == zhang["notes"]
    base = json.loads((MODEL_INFO / "cifar10/Linf/Carmon2019Unlabeled.json").read_text())
    for eps, norm, expected in [("0.3", "linf", 0.3), ("0.125", "linf", 0.125), ("0.5", "l2", 0.5), ("0.0314", "l2", 0.0314)]:
        assert import_robustbench({**base, "eps": eps}, "x.json", norm=norm)["config"]["eps"] == expected  # left as written


def test_corruptions_are_a_one_line_error():
    (path,) = (MODEL_INFO / "cifar10" / "corruptions").glob("*.json")
    with pytest.raises(ValueError, match="^robustbench model_info: a common-corruptions result; corruptions are not "
                                         "supported") as raised:
        import_robustbench(json.loads(path.read_text()), f"model_info/cifar10/corruptions/{path.name}")
    assert "\n" not in str(raised.value)


def test_a_reimport_replaces_the_row():
    first = load("cifar10/Linf/Carmon2019Unlabeled.json", imported_utc="2025-01-01T00:00:00+00:00")
    data = json.loads((MODEL_INFO / "cifar10/Linf/Carmon2019Unlabeled.json").read_text())
    changed = {**data, "name": "Renamed", "external": "58.00"}
    second = import_robustbench(changed, "model_info/cifar10/Linf/Carmon2019Unlabeled.json",
                                imported_utc="2025-06-01T00:00:00+00:00")
    assert second["id"] == first["id"]
    for records in ([first, second], [second, first]):
        (entry,) = build_entries(records, checkpoint_exists=lambda p: False)
        assert (entry["defense"], entry["robust_accuracy"]) == ("Renamed", 0.58)


def robustbench_reads(path: Path) -> dict:
    """What RobustBench's own code reads from a model_info file (template.py, utils.list_available_models):
    the board from the directories, float() of the percent strings, the ranking key."""
    data = json.loads(path.read_text())
    assert path.parent.parent.name in ("cifar10", "cifar100", "imagenet") and path.parent.name in ("Linf", "L2")
    return {"clean": float(data["clean_acc"]), "autoattack": float(data["autoattack_acc"]),
            "key": float(data["external"] if "external" in data else data["autoattack_acc"]),
            "venue": "Unpublished" if data["venue"] == "" else data["venue"]}


@pytest.mark.parametrize("rel", ["cifar10/Linf/Kang2021Stable.json", "cifar10/Linf/Zhang2019Theoretically.json",
                                 "imagenet/Linf/Amini2024MeanSparse_Swin-L.json"])
def test_an_imported_entry_exports_back_to_the_same_file_numbers(rel, tmp_path):
    (entry,) = build_entries([load(rel)], checkpoint_exists=lambda p: False)
    info, where = export_robustbench(entry)
    assert where == f"model_info/{rel}"
    out = tmp_path / where
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps(info, indent=2))
    original = json.loads((MODEL_INFO / rel).read_text())
    assert robustbench_reads(out) == robustbench_reads(MODEL_INFO / rel)
    assert {k: v for k, v in info.items() if k not in ("clean_acc", "autoattack_acc", "external")} == \
        {k: v for k, v in original.items() if k not in ("clean_acc", "autoattack_acc", "external")}
    again = import_robustbench(json.loads(out.read_text()), str(out))
    assert (again["clean_accuracy"], again["robust_accuracy"], again["config"]["eps"]) == (
        entry["clean_accuracy"], entry["robust_accuracy"], entry["eps"])


def own_entry(per_attack: dict[str, float], robust: float, dataset: str = "cifar10") -> dict:
    n = 1000
    record = {"id": "a" * 16, "model": "resnet18", "dataset": dataset, "defense": "pgd-at", "norm": "linf",
              "eps": 8 / 255, "n_examples": n, "clean_accuracy": 0.897, "robust_accuracy": robust,
              "per_attack": per_attack, "attack_order": list(per_attack), "seed": 0, "weights_sha256": "e" * 64,
              "checkpoint": "/ckpt.pt", "created_utc": "2025-01-01T00:00:00+00:00", "warnings": []}
    (entry,) = build_entries([record], checkpoint_exists=lambda p: True)
    return entry


def test_our_entry_exports_what_robustbench_reads(tmp_path):
    aa = {"autoattack/apgd-ce": 0.52, "autoattack/apgd-t": 0.51}
    entry = own_entry({**aa, "bpda-pgd": 0.49}, robust=0.49)  # an adaptive attack broke more than AutoAttack
    assert autoattack_accuracy(entry) == 0.51
    info, where = export_robustbench(entry)
    assert where == "model_info/cifar10/Linf/<YourModelName>.json"
    assert (info["clean_acc"], info["autoattack_acc"], info["external"], info["eps"]) == ("89.70", "51.00", "49.00", "8/255")
    assert (info["architecture"], info["additional_data"], info["number_forward_passes"], info["unreliable"]) == (
        "resnet18", False, 1, False)
    assert entry["entry_id"] in info["footnote"] and "1000 test points" in info["footnote"]
    out = tmp_path / "model_info/cifar10/Linf/Karp2025Test.json"
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps(info))
    assert robustbench_reads(out) == {"clean": 89.7, "autoattack": 51.0, "key": 49.0, "venue": "Unpublished"}
    again = import_robustbench(json.loads(out.read_text()), str(out))
    assert (again["clean_accuracy"], again["robust_accuracy"]) == (entry["clean_accuracy"], entry["robust_accuracy"])
    assert "external" not in export_robustbench(own_entry(aa, robust=0.51))[0]


@pytest.mark.parametrize("per_attack, dataset, message", [
    ({"pgd": 0.5}, "cifar10", "ran no AutoAttack"), ({"autoattack/apgd-ce": 0.5}, "mnist", "on no RobustBench board")])
def test_export_refuses_what_robustbench_cannot_rank(per_attack, dataset, message):
    with pytest.raises(ValueError, match=message):
        export_robustbench(own_entry(per_attack, robust=0.5, dataset=dataset))


def test_the_curve_legend_sits_outside_the_axes():
    lines = {f"model {i} / defense": [(0.0, 0.9), (0.1, 0.5 - i / 100), (0.3, 0.1)] for i in range(20)}
    fig = curve_figure("mnist (linf)", lines)
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    legend, axes = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 > axes.x1  # right of the axes, never over a curve
    assert fig.bbox.x0 <= legend.x0 and legend.x1 <= fig.bbox.x1 and fig.bbox.y0 <= legend.y0  # and inside the figure
    assert len(ax.get_legend().get_texts()) == 20


def test_published_files_are_world_readable(tmp_path):
    import os

    entries = build_entries([load("cifar10/Linf/Carmon2019Unlabeled.json")], checkpoint_exists=lambda p: False)
    old = os.umask(0o022)
    try:
        written = render_site(entries, tmp_path / "site")
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {"0o644"}
    assert {oct(d.stat().st_mode & 0o777) for d in [tmp_path / "site", tmp_path / "site" / "entries"]} == {"0o755"}


def test_a_certified_bound_never_reaches_robustbench():
    # RobustBench ranks attack accuracy: a certified lower bound must not become its `external` or any field
    aa = {"autoattack/apgd-ce": 0.52, "autoattack/apgd-t": 0.51}
    entry = own_entry(aa, robust=0.51)
    bare, _ = export_robustbench(entry)
    entry.update({"certified_accuracy": 0.31, "certified_ci": [0.28, 0.34], "k_certified": 310,
                  "certification": {"method": "crown-ibp"}})
    info, _ = export_robustbench(entry)
    assert info == bare
    assert not any("certif" in k for k in info) and "external" not in info


def test_a_long_legend_label_is_whole_never_cut():
    from robustbench_karp.boards.format import CERTIFIED

    long = "certcnn / ibp (ε 0.1, eps_factor=1.2, 35 ep, seed 0, lr cut at 75% and 90%) · 0123456789abcdef"
    lines = {long: [(0.0, 0.99), (0.1, 0.96)], long + CERTIFIED: [(0.0, 0.99), (0.1, 0.94)],
             **{f"{long} {i}": [(0.0, 0.9, "protocol"), (0.1, 0.5, "partial")] for i in range(2)},
             **{f"model {i} / defense": [(0.0, 0.9, "protocol"), (0.1, 0.5, "partial")] for i in range(10)}}
    fig = curve_figure("mnist (linf)", lines)
    legend = fig.axes[0].get_legend()
    attacked, certified = [t.get_text() for t in legend.get_texts()][:2]
    assert " ".join(attacked.split()) == long and "…" not in attacked and "\n" in attacked  # wrapped, whole
    assert " ".join(certified.split()) == long + CERTIFIED
    box, figure = legend.get_window_extent(fig.canvas.get_renderer()), fig.bbox
    assert figure.x0 <= box.x0 and box.x1 <= figure.x1 and figure.y0 <= box.y0 and box.y1 <= figure.y1  # all of it shows
    (key,) = fig.texts  # the marker key under the legend, not under its last lines
    assert key.get_window_extent(fig.canvas.get_renderer()).y1 < box.y0


def test_drawing_a_curve_with_a_fresh_font_cache_says_nothing(tmp_path):
    """matplotlib logs "generated new fontManager" at INFO on a fresh cache; the CLI logs INFO: not in a build."""
    import os
    import subprocess
    import sys

    script = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
              "from robustbench_karp.boards.curves import curve_png\n"
              "assert curve_png('t', {'a': [(0.0, 0.9), (0.1, 0.5)]}).startswith(b'\\x89PNG')\n"
              "logging.getLogger('robustbench_karp').info('still logged')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MPLCONFIGDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert any(tmp_path.glob("fontlist*.json"))  # the cache was new
    assert "fontManager" not in done.stderr and "still logged" in done.stderr


FIGURE = {"model": "Madry et al., 2018", "link": "https://arxiv.org/abs/1706.06083", "clean": "98.53",
          "robust": "88.50", "attack": "AutoAttack (standard)", "dataset": "mnist", "norm": "linf", "eps": "0.3"}


def test_a_papers_figure_is_an_external_record_on_any_known_dataset():
    from robustbench_karp.boards.paper_import import import_paper
    from robustbench_karp.boards.verify import record_problems

    record = import_paper(FIGURE)
    assert (record["clean_accuracy"], record["robust_accuracy"]) == (0.9853, 0.885)  # exact decimal / 100
    assert (record["config"]["n_examples"], record["config"]["eps"], record["ranks_beside_protocols"]) == (10000, 0.3, True)
    assert record_problems(record) == []
    cifar = import_paper({**FIGURE, "dataset": "cifar100", "eps": "8/255", "n_examples": 500, "attack": "PGD-20"})
    assert (cifar["config"]["eps"], cifar["config"]["n_examples"], cifar["ranks_beside_protocols"]) == (8 / 255, 500, False)
    assert cifar["id"] != record["id"] and import_paper(dict(FIGURE))["id"] == record["id"]  # a re-add: the same row
    (entry,) = build_entries([cifar], checkpoint_exists=lambda p: False)
    assert (entry["status"], entry["external"]) == ("partial", True)  # PGD alone: an upper bound
    with pytest.raises(ValueError, match="n_examples must be a positive integer .*digits has no default"):
        import_paper({**FIGURE, "dataset": "digits", "eps": "0.1"})
    with pytest.raises(ValueError, match="unknown field"):
        import_paper({**FIGURE, "clean_acc": "98.53"})
    edited = {**record, "robust_accuracy": 0.9}
    assert record_problems(edited) == [f"record {record['id']}: robust_accuracy 0.9 but its paper figure gives 0.885"]
