"""RobustBench's model zoo: its IDs as data (table.json) and its networks with RobustBench's exact state_dict layout.

    entry = lookup("Carmon2019Unlabeled", "cifar10", "linf")             # ZooError (one line) if not usable
    backbone = build_backbone(entry)                                      # no input normalization inside
    payload = torch.load(checkpoint_location(root, entry), map_location="cpu", weights_only=True)
    backbone.load_state_dict(convert_state_dict(entry, payload), strict=True)
    model = Classifier(Normalize(entry.mean, entry.std), backbone)       # mean None: Normalize((0,)*3, (1,)*3)

Families live in zoo/architectures (one file each); a checkpoint quirk is declared on its family.
"""

from robustbench_karp.zoo import architectures  # noqa: F401  (registers the families)
from robustbench_karp.zoo.base import FAMILIES, Family, ZooEntry, ZooError
from robustbench_karp.zoo.convert import build_backbone, convert_state_dict
from robustbench_karp.zoo.table import checkpoint_location, entries, lookup

__all__ = ["FAMILIES", "Family", "ZooEntry", "ZooError", "build_backbone", "checkpoint_location",
           "convert_state_dict", "entries", "lookup"]
