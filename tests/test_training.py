"""The one training loop: resume, divergence, the catastrophic-overfitting guard, DDP, the train command."""

import json
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

from robustbench_karp.api import evaluate
from robustbench_karp.cli import main
from robustbench_karp.defenses.base import Recipe
from robustbench_karp.defenses.standard import Standard
from robustbench_karp.sources import new_model
from robustbench_karp.store import ResultsStore, config_hash, file_sha256, load_checkpoint
from robustbench_karp.training import config as train_config_module
from robustbench_karp.training import loop as train_module
from robustbench_karp.training.checkpoints import checkpoint_dir
from robustbench_karp.training.config import make_train_config
from robustbench_karp.training.loop import ResumeError, TrainingDiverged, fit

QUICK = {"epochs": 2, "schedule": "constant", "batch_size": 64}


def digits_config(defense="fgsm-at", **overrides):
    return make_train_config("smallcnn", "digits", defense, recipe_overrides={**QUICK, **overrides}, seed=3,
                             train_size=400)


class StopAfter:
    def __init__(self, epoch):
        self.epoch = epoch

    def on_step(self, *args):
        pass

    def on_epoch(self, metrics):
        if metrics["epoch"] == self.epoch:
            raise KeyboardInterrupt


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    config = digits_config(schedule="onecycle")
    straight = fit(config, tmp_path / "a.pt")
    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "b.pt", callbacks=[StopAfter(1)])
    assert not (tmp_path / "b.pt").exists() and (tmp_path / "b.last.pt").exists()  # last complete epoch kept
    resumed = fit(config, tmp_path / "b.pt", resume=True)
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    log_lines = (tmp_path / "b.log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log_lines] == [1, 2]
    assert (tmp_path / "b.log.csv").read_text().startswith("epoch,")


def test_per_example_memory_is_checkpointed_and_resumed(tmp_path):
    """fgsm-at init=prior: every training example's last perturbation is remembered, and --resume restores it."""
    config = make_train_config("smallcnn", "digits", "fgsm-at", defense_options={"init": "prior"}, seed=3,
                               recipe_overrides={**QUICK, "eps_ramp_epochs": 0}, train_size=400)
    straight = fit(config, tmp_path / "a.pt")
    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "b.pt", callbacks=[StopAfter(1)])
    memory = load_checkpoint(tmp_path / "b.last.pt")["memory"]["values"]  # (N, 1, 8, 8) float16
    remembered = memory.flatten(1).abs().amax(1) > 0
    assert remembered[:400].all() and not remembered[400:].any()  # exactly the training slice
    assert memory.abs().max() <= config.eps * 1.001
    resumed = fit(config, tmp_path / "b.pt", resume=True)
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key


def test_resume_errors(tmp_path):
    config = digits_config()
    with pytest.raises(ResumeError, match="no interrupted run"):
        fit(config, tmp_path / "x.pt", resume=True)
    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "x.pt", callbacks=[StopAfter(1)])
    other = digits_config(lr=5e-4)
    (tmp_path / "x.last.pt").rename(tmp_path / "y.last.pt")
    with pytest.raises(ResumeError, match="different configuration"):
        fit(other, tmp_path / "y.pt", resume=True)
    payload = load_checkpoint(tmp_path / "y.last.pt")  # as torchrun with two processes would have left it
    assert payload["world_size"] == 1
    torch.save({**payload, "world_size": 2}, tmp_path / "x.last.pt")
    with pytest.raises(ResumeError, match="trained by 2 process"):
        fit(config, tmp_path / "x.pt", resume=True)


def test_nan_loss_stops_with_epoch_and_step_and_saves_nothing(tmp_path, monkeypatch):
    config = digits_config("standard")
    calls = {"n": 0}
    real = Standard.loss

    def poisoned(self, model, x, y, threat, gen):
        calls["n"] += 1
        loss, logits = real(self, model, x, y, threat, gen)
        return (loss * float("nan"), logits) if calls["n"] == 7 + 3 else (loss, logits)  # epoch 2, step 3

    monkeypatch.setattr(Standard, "loss", poisoned)
    with pytest.raises(TrainingDiverged, match="epoch 2, step 3"):
        fit(config, tmp_path / "n.pt")
    assert not (tmp_path / "n.pt").exists()
    last = load_checkpoint(tmp_path / "n.last.pt")
    assert last["state"]["epoch"] == 1 and all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_catastrophic_overfitting_guard_keeps_the_best_epoch(tmp_path, monkeypatch, caplog):
    measured = {256: iter([0.5, 0.6, 0.1]), 143: iter([0.4, 0.5, 0.05])}  # guard / validation PGD accuracy per epoch
    real = train_module.robust_accuracy

    def fake(model, data, indices, threat, seed, device, batch_size=500):
        clean, _ = real(model, data, indices, threat, seed, device, batch_size)
        return clean, next(measured[len(indices)])

    monkeypatch.setattr(train_module, "robust_accuracy", fake)
    config = make_train_config("smallcnn", "digits", "fgsm-at", recipe_overrides={**QUICK, "epochs": 4}, seed=3,
                               train_size=400)
    config = type(config)(**{**config.__dict__, "guard_size": 256})
    payload = fit(config, tmp_path / "g.pt")
    assert payload["stopped_early"] and payload["epochs_completed"] == 3 and payload["selected_epoch"] == 2
    assert "catastrophic overfitting at epoch 3" in caplog.text
    monkeypatch.setattr(train_module, "robust_accuracy", real)
    two = fit(type(config)(**{**config.__dict__, "recipe": {**config.recipe, "epochs": 2}}), tmp_path / "two.pt")
    for key, value in two["state_dict"].items():  # constant lr: epoch-2 weights of both runs coincide
        assert torch.equal(value, payload["state_dict"][key]), key


def test_weight_average_and_best_epoch_selection(tmp_path):
    """ema_decay keeps an average of the weights, used for validation and kept; select=best keeps the best epoch."""
    config = digits_config("standard", ema_decay=0.9, select="best", epochs=3)
    payload = fit(config, tmp_path / "ema.pt")
    best = max(payload["history"], key=lambda h: h["val_pgd_accuracy"])
    assert payload["selected_epoch"] == best["epoch"]
    resumed_config = digits_config("standard", ema_decay=0.9, epochs=2)
    straight = fit(resumed_config, tmp_path / "a.pt")
    with pytest.raises(KeyboardInterrupt):
        fit(resumed_config, tmp_path / "b.pt", callbacks=[StopAfter(1)])
    resumed = fit(resumed_config, tmp_path / "b.pt", resume=True)  # the average survives the interruption
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    with pytest.raises(ValueError, match="ema_decay"):
        digits_config("standard", ema_decay=1.5)


def test_train_command_then_evaluate_uses_that_checkpoint(karp_home, tmp_path, capsys):
    copy = tmp_path / "copy.pt"
    tb = tmp_path / "tb"
    args = ["train", "--model", "smallcnn", "--dataset", "digits", "--defense", "fgsm-at", "--eps", "0.1",
            "--epochs", "2", "--out", str(copy), "--tensorboard", str(tb)]
    assert main(args) == 0
    stored = [p for p in checkpoint_dir().glob("smallcnn-digits-fgsm-at-s0-*.pt") if ".last" not in p.name]
    assert len(stored) == 1 and file_sha256(stored[0]) == file_sha256(copy)
    assert any(tb.rglob("events.out.tfevents*"))
    capsys.readouterr()
    # A 2-epoch run is another recipe than fgsm-at's registered one: evaluate uses it only when named.
    from robustbench_karp.training.checkpoints import find_checkpoint
    from robustbench_karp.training.config import make_train_config

    assert find_checkpoint(make_train_config("smallcnn", "digits", "fgsm-at", eps=0.1), torch.device("cpu")) is None
    assert main(["evaluate", "--model", "smallcnn", "--defense", "fgsm-at", "--checkpoint", str(stored[0]),
                 "--attack", "fgsm", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["checkpoint_sha256"] == file_sha256(stored[0]) and record["config"]["defense"]["name"] == "fgsm-at"
    assert "-fp32-" in stored[0].name  # the name says the precision it trained in
    assert record["train_config"]["recipe"]["epochs"] == 2
    assert record["train_outcome"]["epochs_completed"] == 2 and record["train_outcome"]["selected_epoch"] in (1, 2)
    assert main(args) == 0 and "already trained" in capsys.readouterr().out  # no silent retraining
    assert len(ResultsStore().records()) == 1


@pytest.mark.parametrize("args,message", [
    (["--defense", "fgsm-at", "--eps", "0"], "eps must be > 0"), (["--defense", "nope"], "valid:"),
    (["--defense", "pgd-at", "--defense-arg", "steps=0"], "steps must be >= 1"), (["--resume"], "no interrupted run")])
def test_impossible_training_configurations_exit_2(karp_home, capsys, args, message):
    code = main(["train", "--model", "smallcnn", "--dataset", "digits", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]


def test_recipe_fields_added_later_keep_earlier_checkpoint_names():
    """amp and channels_last enter the configuration hash only when set: old checkpoints stay findable."""
    config = make_train_config("smallcnn", "digits", "fgsm-at", seed=0)
    legacy = {**asdict(config), "recipe": {k: v for k, v in config.recipe.items()
                                           if k not in ("amp", "channels_last", "fused")}}
    assert config.hash() == config_hash(legacy)
    fast = make_train_config("smallcnn", "digits", "fgsm-at", seed=0, recipe_overrides={"amp": "bf16"})
    assert fast.hash() != config.hash() and fast.recipe["amp"] == "bf16"
    with pytest.raises(ValueError, match="unknown amp"):
        make_train_config("smallcnn", "digits", "fgsm-at", recipe_overrides={"amp": "fp8"})


def test_a_fused_recipe_reaches_the_optimizer_names_its_checkpoint_and_its_rebuild_command():
    from robustbench_karp.training.checkpoints import train_command
    from robustbench_karp.training.optim import make_optimizer

    model = new_model("smallcnn", "digits")
    plain = make_train_config("smallcnn", "digits", "standard", recipe_overrides={"fused": False})
    fused = make_train_config("smallcnn", "digits", "standard")  # the digits recipe's default
    assert fused.recipe["fused"] and fused.hash() != plain.hash()
    for config, expected in ((plain, False), (fused, True)):
        for optimizer in ("adam", "sgd"):
            recipe = Recipe(**{**config.recipe, "optimizer": optimizer})
            assert bool(make_optimizer(model, recipe).param_groups[0]["fused"]) == expected
    # A record trained before the field existed ran unfused: its rebuild command must say so.
    legacy = {**asdict(plain), "recipe": {k: v for k, v in plain.recipe.items() if k != "fused"}}
    assert "--no-fused" in train_command(legacy) and "fused" not in train_command(asdict(fused))
    from robustbench_karp.cli.parser import build_parser
    from robustbench_karp.cli.train import train_config_from_args

    for config in (plain, fused):  # the printed command rebuilds exactly the recorded recipe
        args = build_parser().parse_args(train_command(asdict(config)).split()[1:])
        assert train_config_from_args(args).hash() == config.hash()


def test_bf16_recipe_on_a_device_without_bf16_units_trains_in_float32(tmp_path, monkeypatch, caplog):
    """Emulated bf16 would be slower than fp32: such devices train in fp32, with a warning and the checkpoint saying so."""
    monkeypatch.setattr(train_config_module, "bf16_supported", lambda device: False)
    fallback = fit(digits_config(epochs=1, amp="bf16"), tmp_path / "fallback.pt")
    plain = fit(digits_config(epochs=1), tmp_path / "plain.pt")
    assert fallback["amp"] == "none" and "no bf16 units: training in float32" in caplog.text
    for key, value in plain["state_dict"].items():
        assert torch.equal(value, fallback["state_dict"][key]), key


@pytest.mark.slow
def test_ddp_two_processes_on_cpu_with_gloo(tmp_path):
    env = {**os.environ, "KARP_HOME": str(tmp_path), "OMP_NUM_THREADS": "1", "KARP_KEEP_RESUME_STATE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "robustbench_karp", "train", "--model", "smallcnn", "--dataset", "digits", "--defense", "fgsm-at",
           "--defense-arg", "init=prior", "--epochs", "3", "--device", "cpu"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    finals = [p for p in (tmp_path / "checkpoints").glob("*.pt") if ".last" not in p.name]
    assert len(finals) == 1 and not list((tmp_path / "checkpoints").glob(".*.tmp"))
    payload = load_checkpoint(finals[0])
    assert payload["history"][-1]["val_clean_accuracy"] > 0.6  # far above chance (0.1): trained on both shards
    memory = load_checkpoint(finals[0].with_suffix(".last.pt"))["memory"]["values"]
    n_train = len(memory) - payload["config"]["val_size"]
    # rank 0 holds both ranks' perturbations (all-gathered): every training example is remembered
    assert (memory[:n_train].flatten(1).abs().amax(1) > 0).all()
    assert result.stdout.count("checkpoint ") == 1  # only rank 0 reports and writes


def test_bf16_autocast_and_channels_last_train_a_working_model(tmp_path):
    """The GPU options run on CPU too (autocast bf16 is supported there): finite loss, a usable checkpoint."""
    config = make_train_config("smallcnn", "digits", "pgd-at", recipe_overrides={"epochs": 3, "amp": "bf16",
                                                                                   "channels_last": True}, seed=0)
    payload = fit(config, tmp_path / "amp.pt")
    assert payload["amp"] == ("bf16" if train_config_module.bf16_supported(torch.device("cpu")) else "none")
    assert all(torch.isfinite(v).all() for v in payload["state_dict"].values())
    assert payload["history"][-1]["val_clean_accuracy"] > 0.7


@pytest.mark.slow
def test_short_mnist_fgsm_at_beats_standard_under_pgd(mnist_dir, mnist_test, tmp_path):
    """200 steps of fgsm-at against the same 200 steps of standard training, on real MNIST at eps 0.2."""
    x, y = mnist_test.batch(torch.arange(500))
    results = {}
    for defense in ("standard", "fgsm-at"):
        config = make_train_config("smallcnn", "mnist", defense, eps=0.2, seed=0, train_size=200 * 64,
                                   recipe_overrides={"epochs": 1, "eps_ramp_epochs": 0, "schedule": "onecycle",
                                                     "lr": 2e-3, "batch_size": 64})
        payload = fit(config, tmp_path / f"{defense}.pt", data_dir=mnist_dir, download=False)
        model = new_model("smallcnn", "mnist")
        model.load_state_dict(payload["state_dict"])
        results[defense] = evaluate(model.eval(), x, y, attacks=[("pgd", {"steps": 20})], eps=0.2, device="cpu")
    assert results["fgsm-at"].clean_accuracy > 0.9
    assert results["fgsm-at"].robust_accuracy > results["standard"].robust_accuracy + 0.3, \
        (results["fgsm-at"].robust_accuracy, results["standard"].robust_accuracy)


def test_train_resumes_an_interrupted_run_by_default_and_leaves_no_resume_state(karp_home, capsys):
    from robustbench_karp.cli import main
    from robustbench_karp.training.checkpoints import checkpoint_path
    from robustbench_karp.training.loop import TrainingInterrupted

    args = ["train", "--model", "smallcnn", "--dataset", "digits", "--defense", "standard", "--epochs", "2",
            "--schedule", "constant", "--batch-size", "64", "--train-size", "400", "--seed", "3", "--device", "cpu"]
    config = digits_config("standard")
    out = checkpoint_path(config, torch.device("cpu"))
    straight = fit(config, karp_home / "straight.pt")
    assert not (karp_home / "straight.last.pt").exists()  # a finished run leaves no resume state
    with pytest.raises(TrainingInterrupted, match="1 of 2 epochs are saved in .*: run the same command again to "
                                                  "resume from epoch 2"):
        fit(config, out, callbacks=[StopAfter(1)])
    assert main(args) == 0  # no --resume needed
    err = capsys.readouterr().err
    assert "resuming the interrupted run" in err and "after epoch 1" in err
    assert not out.with_suffix(".last.pt").exists()
    resumed = load_checkpoint(out)
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key

    with pytest.raises(TrainingInterrupted):
        fit(config, karp_home / "again.pt", callbacks=[StopAfter(1)])
    (karp_home / "again.last.pt").rename(out.with_suffix(".last.pt"))
    assert main([*args, "--force", "--restart"]) == 0
    assert "discarded the interrupted run" in capsys.readouterr().err
    assert [h["epoch"] for h in load_checkpoint(out)["history"]] == [1, 2]  # started over: two fresh epochs
    assert main([*args, "--resume", "--restart"]) == 2


def test_training_syncs_with_the_host_once_per_log_interval(monkeypatch):
    """Loss, accuracy and the NaN check stay on the device between log points (no .item() per step)."""
    import inspect

    from robustbench_karp import devices as distributed_module
    from robustbench_karp.data import DATASETS, load_split
    from robustbench_karp.defenses.base import Recipe, build_defense
    from robustbench_karp.devices import Distributed
    from robustbench_karp.training.optim import make_optimizer

    config = digits_config("standard", epochs=1, batch_size=16)
    data = load_split(DATASETS.get("digits"), train=True)
    train_idx = torch.arange(16 * 60)  # 60 steps
    model = train_module.build_model(config)
    optimizer = make_optimizer(model, Recipe(**config.recipe))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    calls = {"n": 0}
    real_item = torch.Tensor.item

    loop_files = (train_module.__file__, distributed_module.__file__)

    def counted(self):  # .item() called by the training loop itself (the optimizer's own calls are CPU-side)
        if inspect.currentframe().f_back.f_code.co_filename in loop_files:
            calls["n"] += 1
        return real_item(self)

    monkeypatch.setattr(torch.Tensor, "item", counted)
    metrics = train_module.train_epoch(model, build_defense("standard", {}), data, train_idx, config, 0, optimizer,
                                       scheduler, Distributed(), [])
    log_points = -(-60 // train_module.LOG_EVERY)  # 3: steps 25, 50 and 60
    assert calls["n"] <= log_points + 2  # one NaN vote per log point, then the epoch's loss and accuracy
    assert 0 < metrics["train_loss"] < 10 and 0 <= metrics["train_accuracy"] <= 1


def test_a_training_that_falls_to_chance_says_so(tmp_path, monkeypatch, caplog):
    """A loss that explodes but stays finite (MART in bf16 did) leaves a chance-level model: it is kept, with a warning."""
    real = Standard.loss

    def exploding(self, model, x, y, threat, gen):
        loss, logits = real(self, model, x, y, threat, gen)
        return -1e3 * loss, logits  # ascends the loss: finite, and the model unlearns the labels

    monkeypatch.setattr(Standard, "loss", exploding)
    with caplog.at_level("WARNING", logger="robustbench_karp.training.loop"):
        payload = fit(digits_config("standard", epochs=1), tmp_path / "c.pt")
    assert payload["history"][-1]["val_clean_accuracy"] < 0.15
    assert "classify the validation split at chance" in caplog.text
    caplog.clear()
    monkeypatch.setattr(Standard, "loss", real)
    with caplog.at_level("WARNING", logger="robustbench_karp.training.loop"):
        payload = fit(digits_config("standard", epochs=2), tmp_path / "ok.pt")
    assert payload["history"][-1]["val_clean_accuracy"] > 0.5 and "chance" not in caplog.text
