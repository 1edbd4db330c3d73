"""The packages form floors and import only downward: core, datasets, models, detectors, benchmark.

Each package is imported in a fresh interpreter, every module of it, and the test fails if a
package above it was loaded.  A second check reads the sources: a project import inside a
function is allowed only for an optional dependency."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FLOORS = ("core", "datasets", "models", "detectors", "benchmark")


def _modules(package: str) -> list[str]:
    return sorted(f"{package}.{p.stem}" for p in (REPO / package).glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("floor", range(len(FLOORS)))
def test_a_package_loads_no_package_above_it(floor):
    package, above = FLOORS[floor], set(FLOORS[floor + 1:])
    code = ("import importlib, json, sys\n"
            f"for m in {_modules(package)!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & above, f"importing {package} loads {sorted(loaded & above)}, a floor above it"


def test_no_project_import_inside_a_function():
    deferred = []
    for package in FLOORS:
        for path in sorted((REPO / package).glob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for fn in ast.walk(tree):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(fn):
                    names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                             [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                    if any(n.split(".")[0] in FLOORS for n in names):
                        deferred.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert deferred == []
