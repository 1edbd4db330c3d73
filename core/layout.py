"""Where the suite keeps things: the repository root and the layout of ``results/``.

Every path the suite writes is derived here, so that one place defines the layout:

    results/cells/<profile>/             result cells (JSON), detection cells in detection/
    results/tables/[<profile>/]          tables (.md, .csv, .tex); the default profile has no subfolder
    results/figures/[<profile>/]         figures (.png, .csv, .json)
    results/REPORT[-<profile>].md        the report
    results/weights/                     small weights the suite ships on purpose
    results/cache/                       this machine's own: training cache, one-off cells (not committed)
"""
from __future__ import annotations

import os
from pathlib import Path

from core.profiles import DEFAULT_PROFILE

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
#: Weights shipped in the repository (found before the cache).
WEIGHTS_DIR = RESULTS / "weights"


def cache_root() -> Path:
    """This machine's cache: ``$RESGUIDE_CACHE`` or ``results/cache`` (ignored by git)."""
    return Path(os.environ.get("RESGUIDE_CACHE") or RESULTS / "cache")


def cells_dir(results: Path, profile: str) -> Path:
    return Path(results) / "cells" / profile


def output_dir(results: Path, kind: str, profile: str) -> Path:
    """results/<kind>/ for the default profile, results/<kind>/<profile>/ for the others."""
    return Path(results) / kind if profile == DEFAULT_PROFILE else Path(results) / kind / profile


def report_path(results: Path, profile: str) -> Path:
    return Path(results) / ("REPORT.md" if profile == DEFAULT_PROFILE else f"REPORT-{profile}.md")
