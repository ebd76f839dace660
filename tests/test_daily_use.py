"""A newcomer's second trial, item by item: reproduce that gets there, progress that moves, eps guarded, weights
named, the same checks from Python, deleting and naming, file models that stay reproducible, the page, examples,
every adversarial example, one number format."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import time

import pytest
import torch
from conftest import Softmaxed
from torch import nn

from robustbench_karp.api import evaluate
from robustbench_karp.cli import main
from robustbench_karp.store import ResultsStore

NET = """from torch import nn


def build() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
"""


EVAL = ["evaluate", "--model", "smallcnn", "--n-examples", "60", "--attack", "fgsm"]


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("karp-robust: error:"), err
    return err[0]


@pytest.mark.slow
def test_reproduce_prints_a_rebuild_command_that_gets_there(karp_home, capsys):
    assert main([*EVAL, "--json"]) == 0  # trains smallcnn on the digits by its registered recipe
    record = json.loads(capsys.readouterr().out)
    for path in (karp_home / "checkpoints").glob("*.pt"):
        path.unlink()
    assert main(["reproduce", record["id"]]) == 2
    line = one_line(capsys)
    command = re.search(r"`(karp-robust train [^`]*)`", line).group(1)
    assert "checkpoints/smallcnn-digits-standard-s0-" in line  # the file it will write
    argv = shlex.split(command)
    assert argv[:2] == ["karp-robust", "train"] and main(argv[1:]) == 0
    capsys.readouterr()
    assert main(["reproduce", record["id"]]) == 0
    assert capsys.readouterr().out.strip().endswith("reproduced")


def test_an_entry_that_does_not_reproduce_says_why_and_sums_up(karp_home, digits_checkpoint, capsys, monkeypatch):
    from robustbench_karp import harness

    args = ["evaluate", "--model", "smallcnn", "--checkpoint", str(digits_checkpoint), "--n-examples", "40", "--json"]
    for attack in ("fgsm", "pgd"):
        assert main([*args, "--attack", attack]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    site = karp_home / "site"
    assert main(["leaderboard", "build", "--out", str(site)]) == 0
    entry = json.loads(next((site / "entries").glob("*.json")).read_text())
    real = harness.run_evaluation

    def one_point_flipped(req, **kw):  # the pgd record's re-run breaks one more point
        new = real(req, **kw)
        if req.attacks[0].name == "pgd":
            mask = new["robust_mask"]
            i = mask.index("1")
            new["robust_mask"] = mask[:i] + "0" + mask[i + 1:]
        return new

    monkeypatch.setattr(harness, "run_evaluation", one_point_flipped)
    capsys.readouterr()
    assert main(["reproduce", entry["entry_id"], "--site", str(site)]) == 1
    out = capsys.readouterr().out
    pgd = next(r for r in records if r["config"]["attacks"][0]["name"] == "pgd")
    assert "reproduced 1 of 2 records" in out
    assert re.search(rf"{pgd['id']}: robust on other points: test point\(s\) \d+", out)


class TTY:
    """A pseudo-terminal's writing end, as a stream (what stderr is in a real terminal)."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        self.file = os.fdopen(self.slave, "w", buffering=1)

    def read(self) -> str:
        chunks = []
        os.set_blocking(self.master, False)
        try:
            while True:
                chunks.append(os.read(self.master, 65536).decode(errors="replace"))
        except BlockingIOError:
            return "".join(chunks)


def test_the_terminal_bar_moves_within_a_batch_and_estimates_the_whole_run():
    from robustbench_karp.cli.progress import EvalProgress

    tty = TTY()
    progress = EvalProgress(stream=tty.file)
    assert progress.tty
    progress.expect([("pgd", 10.0), ("square", 100.0)], batch_size=100)
    progress.start(300)
    progress.batch(0)
    progress.attack("pgd", 100, 10.0)
    seen = set()
    for passes in range(0, 1001, 50):  # one batch, no update(): only ticks, as within a long attack
        progress.tick(passes)
        time.sleep(0.06)
        seen |= set(re.findall(r"(\d+) passes", tty.read()))
    assert len(seen) >= 3  # redrawn several times within the batch
    left = progress.seconds_left()
    # pgd is done (1000 passes) in about 1.2 s; square: 100 points x 100 passes of this batch, and of two more
    # batches (pgd's 100 points each), at pgd's measured rate: about 30,000 / 830 passes per second
    assert left is not None and 20 < left < 80
    progress.__exit__(None, None, None)


def test_eps_in_the_wrong_units_is_refused_with_a_hint(karp_home, capsys, digits_model):
    assert main(["evaluate", "--eps", "8"]) == 2
    assert "did you mean 8/255" in one_line(capsys)
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match="did you mean 8/255"):
        evaluate(digits_model, x, torch.zeros(4, dtype=torch.long), eps=8)
    with pytest.raises(ValueError, match="above the diameter"):
        evaluate(digits_model, x, torch.zeros(4, dtype=torch.long), norm="l2", eps=9)
    assert not (karp_home / "results.sqlite").exists()


def test_a_model_file_without_weights_is_refused(karp_home, capsys, tmp_path):
    net = tmp_path / "net.py"
    net.write_text(NET)
    assert main(["evaluate", "--model", f"{net}:build", "--dataset", "digits", "--normalize", "none"]) == 2
    assert "--weights-in-factory" in one_line(capsys)
    assert main(["evaluate", "--model", f"{net}:build", "--dataset", "digits", "--normalize", "none",
                 "--weights-in-factory", "--n-examples", "20", "--attack", "fgsm"]) == 0  # said so: evaluated
    capsys.readouterr()
    assert main(["evaluate", "--model", "torchvision:resnet18", "--dataset", "digits"]) == 2
    assert "--random-weights" in one_line(capsys)


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([2.0] + [0.0] * 9))

    def forward(self, x):
        return self.bias.expand(len(x), 10) + 0 * x.flatten(1)[:, :1]


def test_the_python_api_runs_the_clis_checks(digits_model, digits):
    x, y = digits[1].batch(torch.arange(60))
    result = evaluate(Softmaxed(digits_model), x, y, attacks=["fgsm"], eps=0.1, device="cpu")
    assert any("probabilities instead of logits" in w for w in result.warnings)
    always_zero = Constant()  # predicts class 0 for every image: right on about a tenth of them
    chance = evaluate(always_zero, x, y, attacks=["fgsm"], eps=0.1, device="cpu")
    assert chance.clean_accuracy < 0.15 and any("at chance for 10 classes" in w for w in chance.warnings)


def test_records_delete_then_a_build_drops_the_row(karp_home, digits_checkpoint, capsys):
    args = ["evaluate", "--model", "smallcnn", "--checkpoint", str(digits_checkpoint), "--n-examples", "30", "--json"]
    assert main([*args, "--attack", "fgsm"]) == 0 and main([*args, "--attack", "fgsm", "--eps", "0.05"]) == 0
    doomed = json.loads(capsys.readouterr().out.splitlines()[1])
    site = karp_home / "site"
    assert main(["leaderboard", "build", "--out", str(site)]) == 0
    assert doomed["id"] in (site / "results.csv").read_text()
    before = {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}
    assert main(["records", "delete", doomed["id"][:8]]) == 2  # no terminal to ask: says to pass --yes
    assert "--yes" in one_line(capsys)
    assert main(["records", "delete", doomed["id"][:8], "--yes"]) == 0
    assert doomed["id"] not in {r["id"] for r in ResultsStore().records()}
    assert {p: p.read_bytes() for p in site.rglob("*") if p.is_file()} == before  # published files untouched
    assert main(["leaderboard", "build", "--out", str(site)]) == 0
    assert doomed["id"] not in (site / "results.csv").read_text()
    assert main(["leaderboard", "verify", str(site)]) == 0




def test_a_name_labels_a_file_models_rows_and_files_can_move(karp_home, tmp_path, capsys, digits):
    net, weights = tmp_path / "net.py", tmp_path / "w.pt"
    net.write_text(NET)
    x, y = digits[0].batch(torch.arange(500))
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(linear.parameters(), 1e-2)
    for _ in range(50):
        opt.zero_grad()
        nn.functional.cross_entropy(linear(x), y).backward()
        opt.step()
    torch.save(linear.state_dict(), weights)
    args = ["evaluate", "--model", f"{net}:build", "--dataset", "digits", "--normalize", "none",
            "--checkpoint", str(weights), "--attack", "fgsm", "--n-examples", "30", "--name", "my-digits-net", "--json"]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["config"]["model"] == "my-digits-net" and not record["checkpoint"].startswith("/")  # the store's copy
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(str(net), moved / "net.py")
    shutil.move(str(weights), moved / "w.pt")
    assert main(["reproduce", record["id"]]) == 0
    assert capsys.readouterr().out.strip().endswith("reproduced")


def test_every_adversarial_example_is_saved_inside_the_ball(karp_home, digits_checkpoint, tmp_path, capsys,
                                                            digits_model, digits):
    from robustbench_karp.threat import ThreatModel, check_budget

    out = tmp_path / "adv.pt"
    assert main(["evaluate", "--model", "smallcnn", "--checkpoint", str(digits_checkpoint), "--n-examples", "80",
                 "--attack", "fgsm", "--attack", "pgd", "--eps", "0.1", "--save-adversarial", str(out), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    saved = torch.load(out, weights_only=True)
    assert saved["x_adv"].shape == (80, 1, 8, 8) and saved["indices"].tolist() == record["indices"]
    x, y = digits[1].batch(saved["indices"])
    check_budget(saved["x_adv"], x, ThreatModel("linf", 0.1))  # every point inside the ball and [0, 1]
    with torch.no_grad():
        predicted = digits_model(saved["x_adv"]).argmax(1)
    assert (predicted[saved["broken"]] != y[saved["broken"]]).all()  # the broken ones are misclassified
    robust = torch.tensor([c == "1" for c in record["robust_mask"]])
    clean = torch.tensor([c == "1" for c in record["clean_mask"]])
    assert torch.equal(saved["broken"], clean & ~robust)
    result = evaluate(digits_model, x, y, attacks=["fgsm", "pgd"], eps=0.1, device="cpu", return_adversarial=True)
    assert result.adversarial.shape == x.shape and torch.equal(result.broken, saved["broken"])


def test_a_corrupt_checkpoint_is_named_corrupt(tmp_path, capsys, karp_home):
    """Garbage trips the unpickler in many ways (UnpicklingError, IndexError, an odd-protocol warning...), and a
    truncated file fails the zip reader: each is one line naming the file corrupt, never a traceback."""
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(64, 64)}, good)
    bad = tmp_path / "bad.pt"
    for content in [random.Random(seed).randbytes(4096) for seed in range(12)] + [good.read_bytes()[:3000]]:
        bad.write_bytes(content)
        assert main(["evaluate", "--model", "smallcnn", "--checkpoint", str(bad)]) == 2
        line = one_line(capsys)
        assert "corrupted" in line and "Python objects" not in line and "weights_only" not in line


def test_numbers_have_one_format_on_the_command_line(karp_home, digits_checkpoint, capsys):
    assert main(["evaluate", "--model", "smallcnn", "--checkpoint", str(digits_checkpoint), "--n-examples", "50",
                 "--attack", "fgsm", "--eps", "0"]) == 0
    out = capsys.readouterr().out
    numbers = re.findall(r"\|\s+(\d\.\d+|\d)\s+\|", out)
    assert numbers and all(re.fullmatch(r"\d\.\d{4}", n) for n in numbers), numbers
