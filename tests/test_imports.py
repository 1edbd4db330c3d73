import importlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_datasets_package_is_this_repository():
    # The PyPI package `datasets` must never shadow ours.
    mod = importlib.import_module("datasets")
    assert Path(mod.__file__).resolve().parent == REPO / "datasets"
    for name in ("benchmark", "models", "detectors"):
        assert Path(importlib.import_module(name).__file__).resolve().parent == REPO / name
