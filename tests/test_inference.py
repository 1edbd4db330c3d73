"""The suite's one inference path (benchmark.inference): the compiled path gives the eager path's
numbers for every registered method, the rule that picks the path, and what a cell records.

Compiling costs 1-20 s per method, so the default run checks every architecture and, of the
exit-variant families (``resguidenet_1`` ... ``_5``: the first k blocks of the same network), the
paper's k = 3 only; ``RESGUIDE_ALL_METHODS=1`` checks every registered name (about 4 minutes).
"""
import os
import re

import numpy as np
import pytest
import torch

from benchmark.check import DEFAULT_TOLERANCE
from benchmark.inference import (COMPILE_MIN_MEGAPIXELS, EAGER_ENV, EAGER_ONLY, Derainer, cell_megapixels,
                                 choose_path)
from core.metrics import image_metrics, to_uint8
from models import registry


def _pairs():
    """Two small rainy/clean pairs of two orientations (as Rain100L), both larger than JORDER's crops."""
    rng = np.random.default_rng(0)
    out = []
    for h, w in ((104, 120), (120, 104)):
        yy, xx = np.mgrid[0:h, 0:w]
        clean = np.stack([(xx * 2) % 256, (yy * 2) % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
        streaks = ((xx + 3 * yy) % 17 == 0)[..., None] * 90
        out.append((np.clip(clean.astype(int) + streaks + rng.integers(0, 8, clean.shape), 0, 255).astype(np.uint8),
                    clean))
    return out


def _methods() -> list[str]:
    names = sorted(m for m, spec in registry.REGISTRY.items()  # the suite's, not other tests' stand-ins
                   if spec.factory.__module__.startswith("models."))
    if os.environ.get("RESGUIDE_ALL_METHODS"):
        return names
    return [m for m in names if not re.search(r"_[1245]$", m)]


@pytest.mark.parametrize("method", _methods())
def test_compiled_path_gives_the_eager_numbers(method, one_thread):
    torch.manual_seed(0)
    net, _ = registry.load(method, "init", "smoke")
    fast = Derainer(net, method, megapixels=COMPILE_MIN_MEGAPIXELS)
    eager = Derainer(net, method, path="eager")
    assert eager.path == "eager"
    if method in EAGER_ONLY:
        assert fast.path == "eager" and fast.why == EAGER_ONLY[method]
    else:
        assert fast.path == "compiled", fast.why
    for rainy, clean in _pairs():  # two sizes: the shape-generic graph serves both
        a, b = eager(rainy), fast(rainy)
        assert a.shape == b.shape == rainy.shape
        assert np.abs(to_uint8(a).astype(int) - to_uint8(b).astype(int)).max() <= 1
        ma, mb = image_metrics(a, clean), image_metrics(b, clean)
        for m in ("psnr_y", "psnr_rgb"):
            assert abs(ma[m] - mb[m]) <= DEFAULT_TOLERANCE["psnr"], (m, ma[m], mb[m])
        for m in ("ssim_y", "ssim_rgb"):
            assert abs(ma[m] - mb[m]) <= DEFAULT_TOLERANCE["ssim"], (m, ma[m], mb[m])


def test_the_rule_compiles_large_cells_only(monkeypatch):
    monkeypatch.delenv(EAGER_ENV, raising=False)
    assert choose_path("resguidenet", COMPILE_MIN_MEGAPIXELS)[0] == "compiled"
    path, why = choose_path("resguidenet", COMPILE_MIN_MEGAPIXELS / 2)
    assert path == "eager" and "megapixels" in why
    assert choose_path("resguidenet", 0.0, "compiled")[0] == "compiled"
    assert choose_path("gmm", 1e6, "compiled") == ("eager", EAGER_ONLY["gmm"])
    monkeypatch.setenv(EAGER_ENV, "1")  # --eager, inherited by executor workers
    assert choose_path("resguidenet", 1e6) == ("eager", "asked for (--eager)")
    with pytest.raises(ValueError, match="auto, eager or compiled"):
        choose_path("resguidenet", 1.0, "fast")


def test_cell_megapixels_counts_the_first_image_times_the_images():
    class Two:
        def __len__(self):
            return 2

        def __iter__(self):
            yield from [("a", np.zeros((1000, 500, 3), np.uint8), None)] * 2

    assert cell_megapixels(Two()) == pytest.approx(1.0)
    assert cell_megapixels([]) == 0.0


def test_a_cell_records_its_path(tmp_path):
    from benchmark.evaluate import evaluate
    from datasets.catalog import open_dataset

    ds = open_dataset("embedded-light", None, size=48, seed=0)
    net, _ = registry.load("resguidenet", "init", "smoke")
    res = evaluate(net, ds, progress=False, method="resguidenet")
    assert res["inference"]["path"] == "eager" and "megapixels" in res["inference"]["why"]
