"""The Python API: `from robustbench_karp import evaluate, load_model`."""

import pytest
import torch

from robustbench_karp import evaluate, load_model
from robustbench_karp.data import DATASETS, load_split


@pytest.mark.slow
def test_load_model_trains_once_then_reuses(karp_home):
    model = load_model("smallcnn", dataset="digits", defense="standard", device="cpu")
    assert not model.training
    stored = sorted((karp_home / "checkpoints").glob("*.pt"))
    mtimes = [p.stat().st_mtime_ns for p in stored]
    again = load_model("smallcnn", dataset="digits", defense="standard", device="cpu")
    assert [p.stat().st_mtime_ns for p in stored] == mtimes  # reused, not retrained
    test = load_split(DATASETS.get("digits"), train=False)
    x, y = test.batch(torch.arange(len(test)))
    assert torch.equal(model(x), again(x))
    result = evaluate(model, x, y, attacks=["fgsm", ("pgd", {"steps": 10})], norm="linf", eps=0.1, seed=0, device="cpu")
    assert result.clean_accuracy > 0.9
    assert result.robust_accuracy <= result.per_attack["fgsm"] <= result.clean_accuracy
    assert list(result.per_attack) == ["fgsm", "pgd"] and result.n_examples == len(test)
    same = evaluate(model, x, y, attacks=["fgsm", ("pgd", {"steps": 10})], norm="linf", eps=0.1, seed=0, device="cpu")
    assert same.robust == result.robust  # seeded: identical per-example results
