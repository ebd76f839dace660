"""Physical chunking: a logical batch cut into smaller pieces for memory gives the same numbers.

The engine reruns a batch that ran out of device memory in pieces of half the rows. Here a model
that "runs out of memory" above a row count stands in for a GPU: the evaluation must end with the
masks, accuracies and pass counts of the uncut run. Where cutting would change random draws
(torchattacks' classes, a model with its own randomness) it must be a clear error instead.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from robustbench_karp.api import evaluate
from robustbench_karp.attacks import build_attack
from robustbench_karp.cli import describe_error
from robustbench_karp.cli.parser import build_parser
from robustbench_karp.threat import ThreatModel
from robustbench_karp.threat.rows import OutOfMemory, physical_rows

ATTACKS = [("pgd", {"steps": "6", "restarts": "2", "step_size": "0.03"}), ("fgsm", {}),
           ("pgd", {"steps": "4", "early_stop": "false", "restarts": "2"}), ("eot-pgd", {"steps": "3", "samples": "2"})]


class FitsRows(nn.Module):
    """model, but a gradient pass of more than `rows` images raises the error CUDA raises when memory runs out.

    Predictions (no gradient) of any size pass: the first refusal comes after PGD drew its random start,
    so the rerun must start again from the batch's generator state.
    """

    def __init__(self, model: nn.Module, rows: int):
        super().__init__()
        self.model, self.rows, self.refused = model, rows, 0

    def forward(self, x):
        if len(x) > self.rows and torch.is_grad_enabled():
            self.refused += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of {len(x)} rows")
        return self.model(x)


@pytest.fixture(scope="module")
def points(digits):
    _, test = digits
    return test.batch(torch.arange(90))


@pytest.mark.parametrize("name, options", ATTACKS)
def test_an_attack_in_physical_pieces_is_identical(digits_model, points, name, options):
    x, y = points
    attack, threat = build_attack(name, options), ThreatModel("linf", 0.1)
    assert attack.splits
    whole = attack(digits_model.eval(), x, y, threat, torch.Generator().manual_seed(3))
    with physical_rows(7):
        pieces = attack(digits_model, x, y, threat, torch.Generator().manual_seed(3))
    assert torch.equal(whole, pieces)
    assert not torch.equal(whole, x)  # it attacked


def test_out_of_memory_reruns_the_batch_in_pieces_with_the_same_numbers(digits_model, points, caplog):
    x, y = points
    plain = evaluate(digits_model, x, y, attacks=ATTACKS, eps=0.1, batch_size=64, device="cpu", seed=5)
    tight = FitsRows(digits_model, rows=20)
    with caplog.at_level(logging.WARNING, logger="robustbench_karp.evaluation.engine"):
        cut = evaluate(tight, x, y, attacks=ATTACKS, eps=0.1, batch_size=64, device="cpu", seed=5)
    assert tight.refused > 0 and "in pieces of 32 rows" in caplog.text and "in pieces of 16 rows" in caplog.text
    assert (cut.clean, cut.robust, cut.per_attack) == (plain.clean, plain.robust, plain.per_attack)
    assert 0 < plain.robust_accuracy < plain.clean_accuracy  # the attacks broke some points, not all
    for key in ("forward_passes", "backward_passes"):  # the failed attempts are not counted
        assert cut.cost[key] == plain.cost[key]


def test_out_of_memory_that_pieces_cannot_fix_without_changing_numbers_is_a_clear_error(digits_model, points):
    x, y = points
    with pytest.raises(OutOfMemory, match="autoattack/apgd-ce on .* points: .*--batch-size"):
        evaluate(FitsRows(digits_model, rows=20), x, y, attacks=["autoattack"], eps=0.1, batch_size=64, device="cpu")

    class Reseeded(FitsRows):  # a model with its own randomness (a Defense-GAN purifier is one)
        def reseed(self, seed: int) -> None:
            pass

    with pytest.raises(OutOfMemory, match="draws its own randomness") as e:
        evaluate(Reseeded(digits_model, rows=20), x, y, attacks=["pgd"], eps=0.1, batch_size=64, device="cpu")
    code, message = describe_error(e.value)
    assert code == 1 and "\n" not in message and message.startswith("OutOfMemory: out of device memory")
    with pytest.raises(OutOfMemory, match="one row at a time"):
        evaluate(FitsRows(digits_model, rows=0), x, y, attacks=["pgd"], eps=0.1, batch_size=64, device="cpu")


def test_batch_size_auto_is_the_default_logical_batch(capsys):
    parser = build_parser()
    for command in (["evaluate"], ["compare", "--defenses", "standard"]):
        assert parser.parse_args([*command, "--batch-size", "auto"]).batch_size == 500
        assert parser.parse_args(command).batch_size == 500
        assert parser.parse_args([*command, "--batch-size", "128"]).batch_size == 128
        with pytest.raises(SystemExit) as e:
            parser.parse_args([*command, "--batch-size", "big"])
        assert e.value.code == 2 and "expected an integer, got 'big'" in capsys.readouterr().err
