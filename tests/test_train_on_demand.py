"""Training on demand says what it trains, why and for how long, and asks for --train past the limit."""

import re

from robustbench_karp.cli import main
from robustbench_karp.store import ResultsStore


def test_long_training_on_demand_asks_for_train(karp_home, capsys, caplog, monkeypatch):
    caplog.set_level("INFO")
    monkeypatch.setenv("KARP_TRAIN_LIMIT_SECONDS", "0.001")  # any estimate is past it
    args = ["evaluate", "--model", "smallcnn", "--dataset", "digits", "--attack", "fgsm", "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training it (8 epochs of standard on digits" in err[0]
    assert re.search(r"would take about \d+ s on cpu; pass --train to start it", err[0])
    assert not (karp_home / "checkpoints").exists() or not list((karp_home / "checkpoints").glob("*.pt*"))  # no .lock
    assert ResultsStore().records() == []

    assert main([*args, "--train"]) == 0  # --train lifts the limit
    assert "no checkpoint for smallcnn: training it now, 8 epochs of standard on digits" in caplog.text
    assert len(ResultsStore().records()) == 1


def test_training_under_the_limit_announces_an_estimate(karp_home, caplog, monkeypatch):
    caplog.set_level("INFO")
    monkeypatch.setenv("KARP_TRAIN_LIMIT_SECONDS", "600")
    assert main(["evaluate", "--model", "smallcnn", "--dataset", "digits", "--attack", "fgsm", "--device", "cpu"]) == 0
    assert re.search(r"training it now, 8 epochs of standard on digits \(smallcnn-digits-standard-\S+\); about \d+ s "
                     r"on cpu", caplog.text)
