"""The package's arrangement is part of its design: rooms by role, imports only running down.

Every import of `pretrain/` and `kernels/` (at any depth, type-checking ones included) is read
from the source; the rooms are ordered by what they may use:

    kernels                            compute kernels and their table (kernels/backends.py)
    errors                             the one base class of bad input
    fileio, runs                       atomic writes; the run directory
    config, then commands              the typed config; what a command is
    nn, data                           the model; raw text to prepared shards and back
    parallel                           the engines around the model
    checkpoint, slurm                  saving and resuming; submitting and stopping
    train                              the loop
    hf, scaling                        hand-off; scaling laws and planning
    cli, __main__                      the entry point

An import from a room to a later one runs back up; two rooms of one rank do not import each
other; there is no cycle.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from tests.paths import REPO

RANKS = {"kernels": 0, "errors": 1, "fileio": 2, "runs": 2, "config": 3, "commands": 4,
         "nn": 5, "data": 5, "parallel": 6, "checkpoint": 7, "slurm": 7, "train": 8, "hf": 9,
         "scaling": 9, "cli": 10, "__main__": 10, "__init__": 10}
MAX_TOP_LEVEL_MODULES = 8


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for package in ("pretrain", "kernels")
            for path in sorted((REPO / package).rglob("*.py"))}


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ours that `name` imports (a `from X import Y` of a module Y counts Y)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _room(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "kernels":
        return "kernels"
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def test_every_module_has_a_room(graph):
    assert {_room(module) for module in graph} <= set(RANKS)


def test_imports_only_run_down(graph):
    upward = [f"{module} -> {target}" for module, targets in graph.items() for target in targets
              if _room(module) != _room(target) and RANKS[_room(module)] < RANKS[_room(target)]]
    assert not upward, "imports running back up:\n" + "\n".join(sorted(upward))


def test_rooms_of_one_rank_do_not_import_each_other(graph):
    sideways = [f"{module} -> {target}" for module, targets in graph.items()
                for target in targets if _room(module) != _room(target)
                and RANKS[_room(module)] == RANKS[_room(target)]
                and {_room(module), _room(target)} != {"cli", "__main__"}]
    assert not sideways, "\n".join(sorted(sideways))


def test_there_is_no_import_cycle(graph):
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(module: str, path: tuple[str, ...]) -> None:
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " -> ".join((*path, module))
        state[module] = "open"
        for target in sorted(graph[module]):
            visit(target, (*path, module))
        state[module] = "done"
        order.append(module)

    for module in sorted(graph):
        visit(module, ())
    assert len(order) == len(graph)


def test_the_engines_never_import_the_export_package(graph):
    offending = [f"{module} -> {target}" for module, targets in graph.items()
                 if module.startswith("pretrain.parallel") for target in targets
                 if target.startswith("pretrain.hf")]
    assert not offending


def test_the_readers_of_a_dataset_do_not_import_its_writer(graph):
    readers = ("pretrain.data.loader", "pretrain.train.evaluate", "pretrain.hf.export",
               "pretrain.hf.consolidate")
    assert not {reader for reader in readers if "pretrain.data.prepare" in graph[reader]}


def test_few_modules_at_the_top_of_the_package():
    top = sorted(path.name for path in (REPO / "pretrain").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_the_config_imports_no_torch(graph):
    """`pretrain --help` and config errors stay fast: torch is not on the config's path."""
    reached, todo = set(), ["pretrain.config"]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph[module])
    for module in reached:
        source = (REPO / Path(*module.split("."))).with_suffix(".py")
        if not source.is_file():
            source = REPO / Path(*module.split(".")) / "__init__.py"
        tree = ast.parse(source.read_text(encoding="utf-8"))
        top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        names = {alias.name.split(".")[0] for node in top_level if isinstance(node, ast.Import)
                 for alias in node.names}
        names |= {(node.module or "").split(".")[0] for node in top_level
                  if isinstance(node, ast.ImportFrom)}
        assert "torch" not in names, module


def test_every_symlink_in_the_tree_resolves():
    """A move must carry its links along (slurm/train.sbatch pointed at a moved template)."""
    tracked = subprocess.run(["git", "ls-files", "-s"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.splitlines()
    links = [line.split("\t", 1)[1] for line in tracked if line.startswith("120000 ")]
    assert links, "the tree has symlinks (slurm/train.sbatch)"
    broken = [link for link in links if not (REPO / link).exists()]
    assert broken == []
