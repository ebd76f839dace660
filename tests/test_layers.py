"""The package's architecture, enforced: every import goes down a layer (or stays in its part), and none loops.

    cli -> api, harness, reproduce -> training -> boards -> catalog -> evaluation -> defenses -> attacks
        -> certification -> threat -> sources -> zoo -> data, models -> store -> registry, progress, devices

The imports are read with `ast` from the source files (module level, inside functions, and under
TYPE_CHECKING alike: each is a dependency), so the picture holds whatever a run happens to import.
Parts on one layer may import each other; an import of a higher layer, or a cycle between modules, fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each package's files live (pyproject's package-dir maps attacks/ and defenses/ into the package).
PACKAGE_DIRS = {"robustbench_karp": ROOT / "robustbench_karp", "robustbench_karp.attacks": ROOT / "attacks",
                "robustbench_karp.defenses": ROOT / "defenses"}
# Lowest first. A module belongs to the longest prefix that names it.
LAYERS = [
    ["registry", "progress", "devices"],
    ["store"],
    ["data", "models"],
    ["zoo"],
    ["sources"],
    ["threat"],
    ["certification"],
    ["attacks"],
    ["defenses"],
    ["evaluation"],
    ["catalog"],
    ["boards"],
    ["training"],
    ["api", "harness", "reproduce", ""],  # "": the package's own __init__ (lazy exports of the library calls)
    ["cli", "__main__"],
]
# The boards are pure: no torch, and matplotlib only where a curve is drawn.
PURE = ("robustbench_karp.boards", "robustbench_karp.catalog", "robustbench_karp.evaluation.protocols",
        "robustbench_karp.evaluation.cost")
DRAWS = ("robustbench_karp.boards.curves",)


def modules() -> dict[str, Path]:
    """Module name -> source file, for every module of the package (attacks/ and defenses/ included)."""
    out = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if package == "robustbench_karp" and parts[:1] in (["attacks"], ["defenses"]):
                continue  # not there: package-dir maps them from the root
            out[name] = path
    return out


def imports_of(name: str, path: Path, known: set[str], module_level_only: bool = False) -> set[str]:
    """The modules of `known`, and the outside packages, that a module imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known and target.startswith("robustbench_karp."):
                target = target.rpartition(".")[0]  # robustbench_karp.store.files.x -> the module that holds x
            found.add(target)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {t for t in imports_of(name, path, set(mods)) if t in mods} for name, path in mods.items()}


def layer_of(name: str) -> int:
    rest = name.removeprefix("robustbench_karp").removeprefix(".")
    best, rank = -1, None
    for i, parts in enumerate(LAYERS):
        for part in parts:
            if (rest == part or rest.startswith(part + ".") or (part == "" and rest == "")) and len(part) > best:
                best, rank = len(part), i
    if rank is None:
        raise AssertionError(f"{name} is in no layer: add its part to LAYERS")
    return rank


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} imports {b} (layer {layer_of(a)} -> {layer_of(b)})"
                  for a, targets in edges.items() for b in targets if layer_of(b) > layer_of(a))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), as a sorted list of names."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer_and_no_import_climbs_one():
    edges = graph()
    assert len(edges) > 80  # the walk found the package (attacks/ and defenses/ included)
    assert upward_imports(edges) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_check_catches_an_upward_import_and_a_cycle():
    edges = graph()
    assert upward_imports({**edges, "robustbench_karp.store.files": {"robustbench_karp.evaluation.engine"}}) == [
        "robustbench_karp.store.files imports robustbench_karp.evaluation.engine (layer 1 -> 9)"]
    looped = {**edges, "robustbench_karp.evaluation.evalconfig": {"robustbench_karp.evaluation.engine"},
              "robustbench_karp.evaluation.engine": edges["robustbench_karp.evaluation.engine"]
              | {"robustbench_karp.evaluation.evalconfig"}}
    assert ["robustbench_karp.evaluation.engine", "robustbench_karp.evaluation.evalconfig"] in cycles(looped)


def test_an_upward_import_written_in_a_source_file_is_found(tmp_path, monkeypatch):
    """The real walk, on a copy of the store with one climbing import added inside a function."""
    folder = tmp_path / "robustbench_karp"
    (folder / "store").mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "store" / "__init__.py").write_text("from robustbench_karp.store.files import karp_home\n")
    (folder / "store" / "files.py").write_text("def karp_home():\n    from robustbench_karp.cli import main\n")
    (folder / "cli").mkdir()
    (folder / "cli" / "__init__.py").write_text("from robustbench_karp.store import karp_home\n")
    monkeypatch.setitem(PACKAGE_DIRS, "robustbench_karp", folder)
    for key in ("robustbench_karp.attacks", "robustbench_karp.defenses"):
        monkeypatch.delitem(PACKAGE_DIRS, key)
    edges = graph()
    assert edges["robustbench_karp.store.files"] == {"robustbench_karp.cli"}
    assert upward_imports(edges) == ["robustbench_karp.store.files imports robustbench_karp.cli (layer 1 -> 14)"]
    assert cycles(edges) == [["robustbench_karp.cli", "robustbench_karp.store", "robustbench_karp.store.files"]]


def module_level_closure(start: str, mods: dict[str, Path]) -> set[str]:
    """Everything importing `start` imports at once: module-level imports, followed through the package."""
    seen, todo, outside = set(), [start], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parent = name.rpartition(".")[0]
        if parent in mods:  # importing a submodule runs its package's __init__ first
            todo.append(parent)
        for target in imports_of(name, mods[name], set(mods), module_level_only=True):
            if target in mods:
                todo.append(target)
            else:
                outside.add(target.split(".")[0])
    return outside


@pytest.mark.parametrize("name", sorted(n for n in modules() if n.startswith(PURE) and n not in DRAWS))
def test_the_boards_and_what_they_read_import_no_torch_or_matplotlib(name):
    outside = module_level_closure(name, modules())
    assert not outside & {"torch", "torchvision", "torchattacks", "matplotlib", "numpy"}, outside


def test_files_stay_short_and_function_names_mean_one_thing():
    """At most about 300 lines per module; a public function name defined twice must be the same idea."""
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 330}
    assert long == {}
    defined: dict[str, list[str]] = {}
    for name, path in modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                defined.setdefault(node.name, []).append(name)
    # Registration decorators and each plugin's own entry points share their names on purpose.
    allowed = {"register"}
    assert {k: v for k, v in defined.items() if len(v) > 1 and k not in allowed} == {}
