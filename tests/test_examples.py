"""evaluate --save-examples: what the attacks did, as a PNG grid and as tensors that check out."""

from pathlib import Path

import torch

from robustbench_karp.cli import main
from robustbench_karp.evaluation.examples import amplified
from robustbench_karp.models import Classifier


def test_save_examples_writes_a_grid_and_true_adversarial_points(karp_home, digits_model, tmp_path, capsys):
    checkpoint = tmp_path / "smallcnn.pt"
    torch.save(digits_model.state_dict(), checkpoint)
    out = tmp_path / "examples"
    assert main(["evaluate", "--model", "smallcnn", "--dataset", "digits", "--checkpoint", str(checkpoint),
                 "--attack", "fgsm", "--attack", "pgd", "--n-examples", "120", "--batch-size", "50", "--device", "cpu",
                 "--json", "--save-examples", str(out)]) == 0
    import json

    record = json.loads(capsys.readouterr().out)
    folder = out / record["id"]
    assert sorted(p.name for p in folder.iterdir()) == ["fgsm.png", "fgsm.pt", "pgd.png", "pgd.pt"]
    assert (folder / "pgd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = torch.load(folder / "pgd.pt", weights_only=True)
    x, x_adv, y, predicted = saved["x"], saved["x_adv"], saved["y"], saved["predicted"]
    assert len(y) == 8 and x.shape == x_adv.shape == (8, 1, 8, 8)
    assert (x_adv - x).abs().max() <= record["config"]["eps"] + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert torch.equal(digits_model(x_adv).argmax(1), predicted)  # the predictions the grid shows
    broken = predicted != y
    assert broken.any() and torch.equal(broken, broken.sort(descending=True).values)  # broken points first
    # The stored positions point at the test images themselves.
    from robustbench_karp.data import DATASETS, load_split

    test = load_split(DATASETS.get("digits"), train=False)
    index = saved["batch"] * 50 + saved["position"]
    assert torch.equal(test.batch(index)[0], x) and torch.equal(test.batch(index)[1], y)
    assert isinstance(digits_model, Classifier) and Path(folder).is_dir()

    # The leaderboard page links each entry's grid (its last attack's) when given the folder.
    site = tmp_path / "site"
    assert main(["leaderboard", "build", "--out", str(site), "--examples", str(out)]) == 0
    (entry,) = [json.loads(p.read_text()) for p in (site / "entries").glob("*.json")]
    assert entry["examples"] == f"examples/{entry['entry_id']}.png"
    # the linked grid is that of the attack that broke the most points (an attack that broke none shows no change)
    drops = {"fgsm": record["clean_accuracy"] - record["per_attack"]["fgsm"],
             "pgd": record["per_attack"]["fgsm"] - record["per_attack"]["pgd"]}
    most = max(drops, key=lambda name: (drops[name], name == "fgsm"))
    assert (site / entry["examples"]).read_bytes() == (folder / f"{most}.png").read_bytes()
    assert f'<a class="examples" href="examples/{entry["entry_id"]}.png">grid</a>' in (site / "index.html").read_text()
    assert main(["leaderboard", "build", "--out", str(site)]) == 0  # a rebuild without the folder keeps it
    assert (site / entry["examples"]).is_file() and 'class="examples"' in (site / "index.html").read_text()


def test_perturbation_display_maps_the_ball_onto_the_grey_scale():
    delta = torch.tensor([-0.1, 0.0, 0.1]).view(3, 1, 1, 1)
    assert torch.allclose(amplified(delta, 0.1, "linf").flatten(), torch.tensor([0.0, 0.5, 1.0]))
