import math

import numpy as np
import pytest
from PIL import Image

from core.store import CellKey, Context, Store
from benchmark.cells import run_cell
from core.profiles import get_profile
from benchmark.tables import TABLES
from core.errors import DatasetMissing
from datasets.catalog import open_dataset
from datasets.noisy import NoisyImages, denoise_metrics, parse_name

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def root(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "BSD68").mkdir()
    for i in range(3):
        img = (rng.random((40, 48)) * 200 + 28).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / "BSD68" / f"test{i:03d}.png")
    return tmp_path


def test_names():
    assert parse_name("BSD68-s25") == ("BSD68", 25)
    assert parse_name("cbsds500-test-s70") == ("CBSDS500-test", 70)
    assert parse_name("Rain100L") is None and parse_name("BSD68") is None


def test_noise_is_seeded_float_and_has_the_right_level(root):
    a = list(NoisyImages("BSD68-s25", root))
    b = list(NoisyImages("BSD68-s25", root))
    for (na, noisy_a, clean_a), (nb, noisy_b, _) in zip(a, b):
        assert na == nb and np.array_equal(noisy_a, noisy_b)
        assert noisy_a.dtype == np.float32 and noisy_a.shape == clean_a.shape == (40, 48, 1)
    resid = np.concatenate([(noisy - clean / 255.0).ravel() for _, noisy, clean in a])
    assert resid.std() == pytest.approx(25 / 255, rel=0.05)
    assert resid.min() < -0.15  # unclipped: values below 0 survive where the image is dark enough
    other = list(NoisyImages("BSD68-s25", root, seed=1))
    assert not np.array_equal(a[0][1], other[0][1])


def test_missing_folder_is_missing_data(tmp_path):
    with pytest.raises(DatasetMissing, match="BSD68"):
        open_dataset("BSD68-s10", tmp_path, size=64, seed=0)
    with pytest.raises(DatasetMissing, match="data root"):
        open_dataset("BSD68-s10", None, size=64, seed=0)


def test_metrics_are_on_grey_levels():
    img = np.full((16, 16, 1), 100, np.uint8)
    assert denoise_metrics(img, img) == {"psnr": math.inf, "ssim": 1.0}
    out = img.astype(np.float64) / 255 + 10 / 255  # every level off by 10: PSNR = 20 log10(255 / 10)
    assert denoise_metrics(out, img)["psnr"] == pytest.approx(20 * math.log10(25.5))


def test_identity_cell_gives_the_noise_level(root, tmp_path):
    ctx = Context(profile=get_profile("smoke"), data_root=root, store=Store(tmp_path / "cells"), progress=False)
    cell = run_cell(CellKey("identity", "BSD68-s25"), ctx)
    assert cell["status"] == "ok", cell.get("error")
    # rounding to uint8 and clipping at 0/255 move it a little from 20 log10(255/25) = 20.17 dB
    assert cell["metrics"]["psnr"] == pytest.approx(20.17, abs=0.3)
    assert cell["dataset_info"]["sigma"] == 25


def test_official_dncnn_column_resolves_sigma_per_row():
    spec = TABLES["table5_official"]
    col = spec.columns[1]
    assert spec.key("BSD68-s70", col).weights == "official-s70"
    assert spec.key("BSD68-s25", col).weights == "official-s25"


@pytest.mark.realdata
def test_official_dncnn_denoises_bsd68(data_root, tmp_path):
    ctx = Context(profile=get_profile("smoke"), data_root=data_root, store=Store(tmp_path), progress=False)
    noisy = run_cell(CellKey("identity", "BSD68-s25"), ctx)
    out = run_cell(CellKey("dncnn", "BSD68-s25", "official-s25"), ctx)
    assert out["status"] == "ok", out.get("error")
    assert out["n_images"] == 8 and out["metrics"]["psnr"] > noisy["metrics"]["psnr"] + 8
