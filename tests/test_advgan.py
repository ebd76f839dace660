"""AdvGAN: budget, effect on real MNIST, the generator cache (reuse, invalidation, corruption), distilled mode, harness."""

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

from robustbench_karp.attacks import build_attack
from robustbench_karp.attacks.advgan import AdvGAN
from robustbench_karp.evaluation.engine import predict
from robustbench_karp.harness import EvalRequest, run_evaluation
from robustbench_karp.store import file_sha256, networks, resolve_path, save_checkpoint
from robustbench_karp.threat import ThreatModel, check_budget
from robustbench_karp.threat.context import RunContext

DIGITS = RunContext(dataset="digits", model="smallcnn", seed=0)
TINY = {"epochs": 2, "width": 8}  # about a second of training on the digits


@pytest.fixture(scope="module")
def batch(digits):
    _, test = digits
    return test.batch(torch.arange(64))


@pytest.fixture(autouse=True)
def fresh_memo():
    networks.clear_memo()  # each test sees only its own KARP_HOME's files
    yield
    networks.clear_memo()


def accuracy(model, x, y) -> float:
    return (predict(model, x) == y).float().mean().item()


def trainings(caplog) -> int:
    return sum(r.getMessage().startswith("training advgan-") for r in caplog.records)


@pytest.mark.parametrize("threat", [ThreatModel("linf", 0.1), ThreatModel("l2", 1.0)], ids=lambda t: t.norm.value)
def test_generator_output_and_attack_stay_in_the_ball(threat, digits_model, batch, karp_home):
    x, y = batch
    attack = build_attack("advgan", TINY).bind(dataclasses.replace(DIGITS, threat=threat))
    delta = attack.perturbation(digits_model, x, threat)  # raw G(x), before the projection
    assert threat.distance(x + delta, x).max().item() <= threat.eps + 1e-6
    x_adv = attack(digits_model, x, y, threat, torch.Generator().manual_seed(0))
    check_budget(x_adv, x, threat)
    assert not x_adv.requires_grad


@pytest.mark.slow
def test_short_training_breaks_a_standard_mnist_model(mnist_model, mnist_test, mnist_dir, karp_home):
    x, y = mnist_test.batch(torch.arange(500))
    threat = ThreatModel("linf", 0.3)
    context = RunContext(dataset="mnist", model="smallcnn", data_dir=mnist_dir, download=False, seed=0)
    attack = build_attack("advgan", {"epochs": 2, "train_size": 2048, "batch_size": 64, "width": 8}).bind(context)  # 64 steps
    x_adv = attack(mnist_model, x, y, threat, torch.Generator().manual_seed(0))
    check_budget(x_adv, x, threat)
    clean = accuracy(mnist_model, x, y)
    assert clean > 0.9
    assert accuracy(mnist_model, x_adv, y) < clean - 0.3


def test_second_use_reuses_the_cached_generator(digits_model, batch, karp_home, caplog):
    x, y = batch
    threat = ThreatModel("linf", 0.1)
    caplog.set_level(logging.INFO, logger="robustbench_karp.store.networks")
    first = build_attack("advgan", TINY).bind(dataclasses.replace(DIGITS, threat=threat))
    out = first(digits_model, x, y, threat, torch.Generator())
    record = first.provenance(digits_model)
    assert record["generator_path"].startswith("generators/")  # store-relative: records move with the store
    path = resolve_path(record["generator_path"])
    assert trainings(caplog) == 1 and record["generator_sha256"] == file_sha256(path) and record["mode"] == "semi-white-box"
    mtime = Path(path).stat().st_mtime_ns
    networks.clear_memo()  # as in a new process: the file itself is read and verified
    second = build_attack("advgan", TINY).bind(dataclasses.replace(DIGITS, threat=threat))
    again = second(digits_model, x, y, threat, torch.Generator())
    assert trainings(caplog) == 1  # no retraining
    assert torch.equal(out, again)
    assert Path(path).stat().st_mtime_ns == mtime
    assert second.provenance(digits_model)["generator_sha256"] == record["generator_sha256"]


@pytest.mark.slow
def test_another_target_checkpoint_trains_another_generator(digits_model, batch, karp_home, caplog):
    x, y = batch
    threat = ThreatModel("linf", 0.1)
    caplog.set_level(logging.INFO, logger="robustbench_karp.store.networks")
    paths = []
    for sha in ["a" * 64, "b" * 64]:
        attack = build_attack("advgan", TINY).bind(RunContext(dataset="digits", model="smallcnn", checkpoint_sha256=sha,
                                                              threat=threat))
        attack(digits_model, x, y, threat, torch.Generator())
        paths.append(attack.provenance(digits_model)["generator_path"])
    assert trainings(caplog) == 2 and paths[0] != paths[1]
    smaller = ThreatModel("linf", 0.05)
    other_eps = build_attack("advgan", TINY).bind(RunContext(dataset="digits", model="smallcnn", checkpoint_sha256="a" * 64,
                                                             threat=smaller))
    other_eps(digits_model, x, y, smaller, torch.Generator())
    assert trainings(caplog) == 3 and other_eps.provenance(digits_model)["generator_path"] not in paths


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_corrupted_generator_is_detected_and_retrained(damage, digits_model, batch, karp_home, caplog):
    x, y = batch
    threat = ThreatModel("l2", 1.0)
    caplog.set_level(logging.INFO, logger="robustbench_karp.store.networks")
    attack = build_attack("advgan", TINY).bind(dataclasses.replace(DIGITS, threat=threat))
    out = attack(digits_model, x, y, threat, torch.Generator())
    path = resolve_path(attack.provenance(digits_model)["generator_path"])
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    networks.clear_memo()
    again = attack(digits_model, x, y, threat, torch.Generator())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "corrupted" in r.getMessage()]
    assert len(warnings) == 1 and trainings(caplog) == 2
    assert file_sha256(path) == networks.recorded_sha256(path)  # rewritten and re-recorded
    assert torch.equal(out, again)  # training is deterministic on CPU


@pytest.mark.slow
def test_distilled_mode_trains_a_surrogate_and_attacks(digits_model, batch, karp_home):
    x, y = batch
    threat = ThreatModel("linf", 0.3)
    options = {"mode": "distilled", "epochs": 5, "surrogate_epochs": 3}
    attack = build_attack("advgan", options).bind(dataclasses.replace(DIGITS, threat=threat))
    x_adv = attack(digits_model, x, y, threat, torch.Generator())
    check_budget(x_adv, x, threat)
    surrogates = list((karp_home / "generators").glob("surrogate-digits-smallcnn-*.pt"))
    made = attack.provenance(digits_model)
    assert len(surrogates) == 1 and made["mode"] == "distilled"
    assert resolve_path(made["surrogate_path"]) == surrogates[0] and made["surrogate_sha256"] == file_sha256(surrogates[0])
    assert accuracy(digits_model, x_adv, y) < accuracy(digits_model, x, y) - 0.3


def test_unbound_attack_and_bad_options_raise(digits_model, batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"needs a run context: call attack.bind\(RunContext"):
        AdvGAN()(digits_model, x, y, ThreatModel("linf", 0.1), torch.Generator())
    with pytest.raises(ValueError, match="unknown advgan mode"):
        build_attack("advgan", {"mode": "white-box"})
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        build_attack("advgan", {"epochs": "0"})
    with pytest.raises(ValueError, match="has no option context"):
        build_attack("advgan", {"context": "x"})
    assert "context" not in build_attack("advgan").bind(DIGITS).config()


def test_harness_records_the_generator(digits_model, karp_home, tmp_path):
    checkpoint = tmp_path / "digits-smallcnn.pt"
    save_checkpoint(checkpoint, {"state_dict": digits_model.state_dict()})
    req = EvalRequest(model="smallcnn", dataset="digits", attacks=[build_attack("advgan", TINY)], n_examples=40,
                      checkpoint=str(checkpoint), device="cpu")
    record = run_evaluation(req)
    made = record["attack_provenance"]["advgan"]
    assert made["generator_sha256"] == file_sha256(resolve_path(made["generator_path"]))
    assert record["robust_accuracy"] <= record["clean_accuracy"]
    # the generator is part of the identity: its sha256 and the recipe that trained it are in the EvalConfig,
    # it was trained before the evaluation's cost was counted, and that training is timed on its own
    identity = record["config"]["attack_networks"]["advgan"]["generator"]
    assert identity["recipe"]["attack"]["epochs"] == TINY["epochs"] and len(identity["sha256"]) == 64
    assert record["cost"]["preparation_seconds"]["advgan"] > 0
    assert record["cost"]["per_attack"]["advgan"]["backward_passes"] == 0  # no generator training counted in it
    networks.clear_memo()
    again = run_evaluation(req)  # the second evaluation reuses the same generator
    assert again["attack_provenance"]["advgan"] == made and again["robust_accuracy"] == record["robust_accuracy"]
    assert again["id"] == record["id"]
    for path in resolve_path(made["generator_path"]).parent.glob("advgan-*"):
        path.unlink()  # the generator is trained again; on this CPU to the same bytes, so to the same id
    networks.clear_memo()
    retrained = run_evaluation(req)
    assert retrained["config"]["attack_networks"] == record["config"]["attack_networks"]


def test_two_trained_attacks_of_one_name_keep_both_identities():
    """Two AdvGANs (say semi-white-box and distilled) in one evaluation: each generator's identity is kept."""
    from types import SimpleNamespace

    from robustbench_karp.harness import prepare_attacks

    twins = [SimpleNamespace(name="advgan", prepare=lambda m, d, i=i: {"weights_sha256": str(i) * 64})
             for i in (1, 2)]
    networks, seconds = prepare_attacks(twins, None, torch.device("cpu"))
    assert networks == {"advgan": {"weights_sha256": "1" * 64}, "advgan#2": {"weights_sha256": "2" * 64}}
    assert set(seconds) == {"advgan", "advgan#2"}
