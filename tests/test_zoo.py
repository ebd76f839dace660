"""The RobustBench zoo: table lookups, checkpoint conversion, and parity with RobustBench's own networks.

tests/golden/robustbench_logits.json comes from benchmarks/robustbench_parity.py, which runs RobustBench's
code (not ours): its layout hash for every zoo entry it can build, and its logits for a few IDs filled
with tests/zoo_weights.py's deterministic weights. Here our table and families must reproduce both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from zoo_weights import fill_deterministic, layout_hash

from robustbench_karp.models.base import Classifier, Normalize
from robustbench_karp.zoo import (
    FAMILIES,
    ZooEntry,
    ZooError,
    build_backbone,
    checkpoint_location,
    convert_state_dict,
    entries,
    lookup,
)

GOLDEN = json.loads((Path(__file__).parent / "golden" / "robustbench_logits.json").read_text())
TABLE = json.loads((Path(__file__).parents[1] / "robustbench_karp" / "zoo" / "table.json").read_text())
NORM = {"Linf": "linf", "L2": "l2", "corruptions": "corruptions"}
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def classifier(entry: ZooEntry, backbone: torch.nn.Module) -> Classifier:
    mean, std = (entry.mean, entry.std) if entry.mean is not None else ((0.0,) * 3, (1.0,) * 3)
    return Classifier(Normalize(mean, std), backbone).eval()


def filled_backbone(entry: ZooEntry) -> torch.nn.Module:
    with torch.device("meta"):  # skip the default initialization that fill_deterministic overwrites anyway
        backbone = build_backbone(entry)
    return fill_deterministic(backbone.to_empty(device="cpu")).eval()


def layout_of(entry: ZooEntry) -> str:
    with torch.device("meta"):
        return layout_hash({k: tuple(v.shape) for k, v in build_backbone(entry).state_dict().items()})


def small(family: str, options: dict, mean=None, std=None, num_classes: int = 10) -> ZooEntry:
    return ZooEntry("Small", "cifar10", "Linf", family, {"num_classes": num_classes, **options}, mean, std)


# (entry, key prefix in the download, whether RobustBench's class keeps mu/sigma, input size)
ROUND_TRIPS = {
    "wide_resnet": (small("wide_resnet", {"depth": 10, "widen_factor": 2, "sub_block1": True},
                          CIFAR10_MEAN, CIFAR10_STD), "module.", True, 32),
    "wide_resnet-variants": (small("wide_resnet", {"depth": 10, "widen_factor": 1, "bias_last": False,
                                                   "input_standardization": True, "normalized_head": True}),
                             "module.", False, 32),
    "dm_wide_resnet": (small("dm_wide_resnet", {"depth": 10, "width": 1, "activation": "swish"},
                             CIFAR10_MEAN, CIFAR10_STD), "module.", False, 32),
    "dm_preact_resnet": (small("dm_preact_resnet", {"depth": 18, "activation": "silu"}, CIFAR10_MEAN, CIFAR10_STD),
                         "module.", False, 32),
    "preact_resnet-PreActBlock": (small("preact_resnet", {"block": "PreActBlock", "num_blocks": [1, 1, 1, 1]},
                                        CIFAR10_MEAN, CIFAR10_STD), "module.", True, 32),
    "preact_resnet-PreActBlockV2": (small("preact_resnet", {"block": "PreActBlockV2", "num_blocks": [1, 1, 1, 1],
                                                            "bn_before_fc": True}, CIFAR10_MEAN, CIFAR10_STD),
                                    "module.", True, 32),
    "resnet-basic": (small("resnet", {"block": "basic", "num_blocks": [1, 1, 1, 1]}), "module.", False, 32),
    "resnet-bottleneck": (small("resnet", {"block": "bottleneck", "num_blocks": [1, 1, 1, 1]},
                                CIFAR10_MEAN, CIFAR10_STD), "module.", True, 32),
    "torchvision": (ZooEntry("Small", "imagenet", "Linf", "torchvision", {"arch": "resnet18"},
                             (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "module.model.", True, 64),
}


@pytest.mark.parametrize("case", list(ROUND_TRIPS))
def test_robustbench_download_layout_round_trip(case, tmp_path):
    """Save in RobustBench's layout, torch.load(weights_only=True), convert, load strictly: the same logits."""
    entry, prefix, has_buffers, size = ROUND_TRIPS[case]
    reference = filled_backbone(entry)
    state = {prefix + k: v for k, v in reference.state_dict().items()}
    if has_buffers:  # RobustBench's class keeps its normalization in the checkpoint
        mean_key, std_key = (prefix.removesuffix("model.") + k for k in FAMILIES.get(entry.family).normalization_keys)
        state[mean_key] = torch.tensor(entry.mean).view(1, 3, 1, 1)
        state[std_key] = torch.tensor(entry.std).view(1, 3, 1, 1)
    path = checkpoint_location(tmp_path, entry)
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": state}, path)

    converted = convert_state_dict(entry, torch.load(path, map_location="cpu", weights_only=True))
    loaded = build_backbone(entry)
    assert list(converted) == list(loaded.state_dict())
    loaded.load_state_dict(converted, strict=True)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(classifier(entry, loaded)(x), classifier(entry, reference)(x))


@pytest.mark.parametrize("key", list(GOLDEN["logits"]))
def test_logits_match_robustbench(key):
    """Our table's family, options and mean/std reproduce RobustBench's own network for this ID."""
    record = GOLDEN["logits"][key]
    dataset, threat, model_id = key.split("/")
    entry = lookup(model_id, dataset, NORM[threat])
    assert layout_of(entry) == record["layout"]
    x = torch.rand(record["input_shape"], generator=torch.Generator().manual_seed(record["input_seed"]))
    with torch.no_grad():
        ours = classifier(entry, filled_backbone(entry))(x)
    reference = torch.tensor(record["logits"])
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max() / reference.abs().max() <= 1e-4


def test_golden_covers_every_family():
    families = {lookup(k.split("/")[2], k.split("/")[0], NORM[k.split("/")[1]]).family for k in GOLDEN["logits"]}
    assert families == set(FAMILIES.names())


def test_every_supported_entry_has_robustbench_layout():
    """Each supported ID builds, with exactly the (key, shape) set RobustBench's code gives that ID."""
    mismatched = [f"{e.dataset}/{e.threat}/{e.model_id}" for e in entries()
                  if layout_of(e) != GOLDEN["layouts"].get(f"{e.dataset}/{e.threat}/{e.model_id}")]
    assert mismatched == []


def test_table_lists_every_robustbench_id_and_covers_the_issue():
    listed = {f"{d}/{t}/{m}" for d, threats in TABLE.items() if not d.startswith("_")
              for t, models in threats.items() for m in models}
    assert set(GOLDEN["layouts"]) <= listed
    supported = {(d, t): sum("family" in e for e in TABLE[d][t].values()) for d in ("cifar10", "cifar100", "imagenet")
                 for t in TABLE[d]}
    assert supported["cifar10", "Linf"] >= 55 and supported["cifar10", "L2"] >= 14
    assert len(entries()) == sum(supported.values())
    assert all(("family" in e) != ("unsupported" in e) for d, threats in TABLE.items() if not d.startswith("_")
               for models in threats.values() for e in models.values())


@pytest.mark.parametrize("args, message", [
    (("Carmon2019Unlabeled", "cifar10", "l2"), "Carmon2019Unlabeled is a cifar10 Linf model, not L2; use --norm linf"),
    (("Gowal2020Uncovering_70_16", "cifar100", "linf"),
     "Gowal2020Uncovering_70_16 is a cifar10 Linf model, not cifar100; use --dataset cifar10"),
    (("Carmon2019Unlabled", "cifar10", "linf"),
     "unknown RobustBench model 'Carmon2019Unlabled' for cifar10 Linf; did you mean Carmon2019Unlabeled?"),
    (("Bai2024MixedNUTS", "cifar10", "linf"), "Bai2024MixedNUTS needs timm (comp_model.py) and loads 2 checkpoints, "
                                              "not supported"),
    (("Debenedetti2022Light_XCiT-S12", "imagenet", "linf"), "needs timm"),
    (("Standard", "cifar10", "linfinity"), "unknown RobustBench threat model 'linfinity'"),
    (("Standard", "mnist", "linf"), "unknown RobustBench dataset 'mnist'"),
    (("Gowal2020Uncovering_extra", "cifar10", "linf"), "RobustBench lists it as cifar10 L2 (--norm l2), "
                                                       "cifar100 Linf (--dataset cifar100)"),
])
def test_lookup_errors_are_one_line(args, message):
    with pytest.raises(ZooError) as error:
        lookup(*args)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_lookup_and_checkpoint_location():
    entry = lookup("Wong2020Fast", "cifar10", "linf")
    assert (entry.family, entry.mean, entry.std) == ("preact_resnet", CIFAR10_MEAN, CIFAR10_STD)
    assert lookup("Carmon2019Unlabeled", "cifar10", "linf").mean is None  # RobustBench feeds it raw pixels
    assert checkpoint_location(Path("/models"), entry) == Path("/models/cifar10/Linf/Wong2020Fast.pt")
    assert entry == lookup("Wong2020Fast", "cifar10", "linf") and len({entry, lookup("Wong2020Fast", "cifar10", "linf")}) == 1
    entry.options["num_blocks"].append(9)  # a caller's mutation does not reach the table
    assert lookup("Wong2020Fast", "cifar10", "linf").options["num_blocks"] == [2, 2, 2, 2]


def small_download(entry: ZooEntry) -> dict[str, torch.Tensor]:
    return {"module." + k: v for k, v in build_backbone(entry).state_dict().items()}


def test_convert_names_a_mu_sigma_mismatch():
    entry = small("preact_resnet", {"num_blocks": [1, 1, 1, 1]}, CIFAR10_MEAN, CIFAR10_STD)
    state = small_download(entry)
    state["module.mu"] = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
    with pytest.raises(ZooError, match=r"checkpoint mu = \[0.5, 0.5, 0.5\] differs from the table's mean \[0.4914"):
        convert_state_dict(entry, {"state_dict": state})
    raw_pixels = small("preact_resnet", {"num_blocks": [1, 1, 1, 1]})
    with pytest.raises(ZooError, match="takes raw"):
        convert_state_dict(raw_pixels, {"state_dict": state})


def test_convert_unwraps_last_drops_aux_head_and_fills_batch_counters():
    """Andriushchenko2020Understanding: {"last": ...} with a model_preact_hl1 head; pre-0.4.1 BN without counters."""
    entry = small("preact_resnet", {"num_blocks": [1, 1, 1, 1]})
    state = {k: v for k, v in small_download(entry).items() if not k.endswith("num_batches_tracked")}
    state["module.model_preact_hl1.1.weight"] = torch.zeros(10, 512)
    converted = convert_state_dict(entry, {"last": state, "best": {}})
    build_backbone(entry).load_state_dict(converted, strict=True)


def test_convert_names_missing_unexpected_and_misshapen_tensors():
    entry = small("resnet", {"num_blocks": [1, 1, 1, 1]})
    state = small_download(entry)
    state["module.extra.weight"] = state.pop("module.linear.weight")
    with pytest.raises(ZooError, match=r"1 missing \(linear.weight\), 1 unexpected \(extra.weight\)"):
        convert_state_dict(entry, state)
    state = small_download(entry)
    state["module.linear.weight"] = torch.zeros(100, 512)
    with pytest.raises(ZooError, match=r"linear.weight is \(100, 512\) in the checkpoint, \(10, 512\) in resnet"):
        convert_state_dict(entry, state)
    with pytest.raises(ZooError, match="neither a state_dict nor wrapped"):
        convert_state_dict(entry, {"epoch": 3, "net": state})
    with pytest.raises(ZooError, match="bad options for resnet"):
        build_backbone(small("resnet", {"blocks": "basic"}))
