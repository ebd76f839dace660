"""The catalog: registry facts for commands that need no model, cached so that they never import torch.

`karp-robust list` and `leaderboard build` must start in under 2 s (importing torch alone takes
about 2 s on a busy 2-core machine). The cache must give exactly what the registries give, and the
commands must print and write the same bytes from a cold and a warm cache.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import rederivable

from robustbench_karp import catalog
from robustbench_karp.attacks import ATTACKS, build_attack
from robustbench_karp.attacks.torchattacks_adapter import torchattacks_names
from robustbench_karp.data import DATASETS
from robustbench_karp.defenses import DEFENSES
from robustbench_karp.evaluation.protocols import get_protocol, satisfied
from robustbench_karp.models import MODELS
from robustbench_karp.store import ResultsStore

GOLDEN = Path(__file__).parent / "golden"
NO_TORCH = ("import sys\nfrom robustbench_karp.cli import main\ncode = main(sys.argv[1:])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(code)")


@pytest.fixture
def fresh_catalog(karp_home, monkeypatch):
    monkeypatch.setattr(catalog, "_cache", catalog._Cache())  # nothing remembered from other tests
    return karp_home


def test_facts_are_what_the_registries_hold(fresh_catalog):
    facts = catalog.facts()
    assert facts["models"] == MODELS.names() and facts["attacks"] == ATTACKS.names()
    assert facts["datasets"] == {n: dict(DATASETS.get(n).default_eps) for n in DATASETS.names()}
    assert facts["torchattacks"] == torchattacks_names()
    assert set(facts["single_step"]) == {"fgsm"} and set(facts["black_box"]) == {"square"}
    assert facts["defenses"]["trades"]["beta"] == DEFENSES.get("trades").beta == 6.0
    assert facts["defenses"]["pgd-at"] == {f.name: f.default for f in dataclasses.fields(DEFENSES.get("pgd-at"))}
    # a second process reads the file: the same answer, as JSON holds it
    cached = json.loads(catalog.cache_path().read_text())
    assert cached["fingerprint"] == catalog.source_fingerprint() and cached["facts"] == facts


def test_a_stale_or_broken_cache_is_recomputed(fresh_catalog, monkeypatch):
    catalog.cache_path().parent.mkdir(parents=True)
    catalog.cache_path().write_text(json.dumps({"fingerprint": catalog.source_fingerprint(), "facts": {"attacks": ["made-up"]},
                                                "requirements": {}}))
    assert catalog.facts()["attacks"] == ["made-up"]  # a current cache is trusted: that is its point
    for stale in ("{not json", json.dumps({"fingerprint": "another", "facts": {"attacks": ["made-up"]}})):
        catalog.cache_path().write_text(stale)
        monkeypatch.setattr(catalog, "_cache", catalog._Cache())
        assert catalog.facts()["attacks"] == ATTACKS.names()
    # an edited source file changes the fingerprint
    before = catalog.source_fingerprint()
    monkeypatch.setattr(catalog, "_PACKAGES", catalog._PACKAGES[:1])
    assert catalog.source_fingerprint() != before


def test_protocol_requirements_and_coverage(fresh_catalog):
    gan = {"name": "defense-gan", "base": "standard", "steps": 50, "restarts": 4}
    required = catalog.protocol_requirements(gan)["standard/1"]
    adaptive = DEFENSES.get("defense-gan")(**{k: v for k, v in gan.items() if k != "name"}).adaptive_attacks()
    assert required == json.loads(json.dumps([a.config() for a in get_protocol("standard/1").build_attacks() + adaptive]))
    assert catalog.protocol_requirements({"name": "no-such-defense"}) == {"standard/1": None, "standard/2": None,
                                                                         "standard/3": None}
    aa = build_attack("autoattack", {"steps": "100", "square_queries": "5000"}).config()
    plain = catalog.protocol_requirements({"name": "pgd-at"})
    assert satisfied([aa], plain) == ["standard/1", "standard/2"]  # nothing more is asked of a plain model
    assert satisfied([{**aa, "steps": 100.0}], plain) == ["standard/1", "standard/2"]  # 100.0 is 100, as JSON holds it
    assert satisfied([{**aa, "steps": 10}], plain) == []
    assert satisfied([aa], catalog.protocol_requirements(gan)) == []  # a purifier needs its adaptive attacks
    assert satisfied([aa, *required], catalog.protocol_requirements(gan)) == ["standard/1"]  # standard/2 needs the probe
    probe = {"probe": build_attack("pgd").config()}
    assert satisfied([aa, *required, probe], catalog.protocol_requirements(gan)) == ["standard/1", "standard/2"]
    assert get_protocol("standard").label == "standard/3" and get_protocol("standard/1").version == 1
    assert get_protocol("autoattack").label == "standard/2"  # AutoAttack standard for good, whatever standard runs


# Every protocol version's requirements of a purifier, frozen: "ran standard/1" must mean the same on every
# record. A change to AutoAttack's options or to a defense's adaptive attacks fails here: add a new version.
FROZEN = {
    "standard/1": [{"name": "autoattack", "square_queries": 5000, "steps": 100},
                   {"name": "transfer-pgd", "steps": 50, "step_size": None, "restarts": 1, "random_start": True,
                    "loss": "ce", "early_stop": False},
                   {"name": "bpda-pgd", "steps": 50, "step_size": None, "restarts": 1, "random_start": True,
                    "samples": 2, "loss": "ce", "early_stop": True}],
}
FROZEN["standard/2"] = FROZEN["standard/1"] + [{"probe": {"name": "pgd", "steps": 50, "step_size": None, "restarts": 1,
                                                          "random_start": True, "loss": "ce", "early_stop": True}}]

# standard/3: strong (with every option at its default) instead of AutoAttack; the same adaptive attacks and probe.
# Its options changed once, on 2026-12-08, from the first uncalibrated strong (9 targets, no square-near) to the
# calibrated one, before any standard/3 row was published (issue 30). From here on a change is a new version.
STRONG = {"name": "strong", "steps": 100, "odi_steps": 2, "target_steps": 100, "targets": 4, "near_queries": 5000,
          "near_share": 0.2, "near_restarts": 1, "square_queries": 1000, "escalated_queries": 5000,
          "escalated_restarts": 2, "eot_samples": 8, "escalate": True}
FROZEN["standard/3"] = [STRONG] + FROZEN["standard/2"][1:]


@pytest.mark.parametrize("label", sorted(FROZEN))
def test_protocol_versions_are_frozen(label):
    from robustbench_karp.evaluation.protocols import PROTOCOLS, canonical

    required = PROTOCOLS.get(label).required_configs({"name": "defense-gan", "base": "standard"})
    assert sorted(map(canonical, required)) == sorted(map(canonical, FROZEN[label]))


def _run(args: list[str], env_home: Path, no_torch: bool) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "KARP_HOME": str(env_home)}
    code = NO_TORCH if no_torch else "import sys\nfrom robustbench_karp.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_list_and_leaderboard_build_skip_torch_once_cached_with_the_same_output(fresh_catalog, tmp_path):
    store = ResultsStore()
    for record in json.loads((GOLDEN / "records.json").read_text())["records"]:
        store.append(rederivable(record))  # a build publishes only records whose numbers re-derive
    cold_list = _run(["list"], fresh_catalog, no_torch=False)
    cold_build = _run(["leaderboard", "build", "--out", str(tmp_path / "cold")], fresh_catalog, no_torch=False)
    assert cold_list.returncode == 0 and cold_build.returncode == 0, cold_list.stderr + cold_build.stderr
    warm_list = _run(["list"], fresh_catalog, no_torch=True)
    warm_build = _run(["leaderboard", "build", "--out", str(tmp_path / "warm")], fresh_catalog, no_torch=True)
    assert warm_list.returncode == 0 and warm_build.returncode == 0, warm_list.stderr + warm_build.stderr
    assert warm_list.stdout == cold_list.stdout and "defenses: crown-ibp, defense-gan, fgsm-at, ibp" in warm_list.stdout
    cold, warm = sorted((tmp_path / "cold").rglob("*")), sorted((tmp_path / "warm").rglob("*"))
    assert [p.relative_to(tmp_path / "cold") for p in cold] == [p.relative_to(tmp_path / "warm") for p in warm]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(cold, warm) if a.is_file())
    assert "standard/1" in (tmp_path / "warm" / "README.md").read_text()  # protocols were judged, not skipped


def test_warm_fills_the_cache_only_when_the_registries_are_loaded(fresh_catalog):
    # in this process the registries are imported (as after evaluate or train): warm writes the facts
    assert not catalog.cache_path().exists()
    catalog.warm()
    assert json.loads(catalog.cache_path().read_text())["facts"] == catalog.compute_facts()
    # a command that loaded nothing (records list) leaves the cache alone and never imports torch for it
    catalog.cache_path().unlink()
    done = _run(["records", "list"], fresh_catalog, no_torch=True)
    assert done.returncode == 0, done.stderr
    assert not catalog.cache_path().exists()
