"""The packages form floors, each importing only the floors below it: utils (the ground: nothing else of the
project), engine (the training loop, checkpoints, run directories, processes), modeling (networks and their
layers), evaluation (metrics, PQ, the evaluators), dataloaders, config_utils, search, retrain, then the
scripts. So there is no import ring."""

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

FLOORS = ["utils", "engine", "modeling", "evaluation", "dataloaders", "config_utils", "search", "retrain"]
PROJECT = set(FLOORS) | {"mypath"}


def project_imports(path: Path) -> set[str]:
    """The top-level project packages a module imports, wherever in the file the import stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        found |= {name.split(".")[0] for name in names} & PROJECT
    return found


@pytest.mark.parametrize("package", FLOORS)
def test_a_package_imports_only_the_floors_below_it(package):
    allowed = set(FLOORS[:FLOORS.index(package) + 1]) | ({"mypath"} if package == "dataloaders" else set())
    offenders = {str(path.relative_to(ROOT)): sorted(project_imports(path) - allowed)
                 for path in sorted((ROOT / package).rglob("*.py"))}
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from dataloaders.registry import IGNORE_INDEX\n")
    assert project_imports(module) == {"dataloaders"}
