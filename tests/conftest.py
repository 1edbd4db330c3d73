import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    # Nothing a test trains may land in the repository's training cache: set before any import
    # reads it (models.provider.CACHE_DIR is fixed at import).
    if not os.environ.get("RESGUIDE_CACHE"):
        import tempfile

        os.environ["RESGUIDE_CACHE"] = tempfile.mkdtemp(prefix="resguide-test-cache-")
    # The CLI's CPU settings, made before any test starts torch's thread pool.
    from benchmark.runtime import prepare_cpu

    prepare_cpu()


@pytest.fixture
def data_root():
    """The real-data folder from RESGUIDE_DATA; tests that use it skip when it is unset."""
    value = os.environ.get("RESGUIDE_DATA")
    if not value or not Path(value).is_dir():
        pytest.skip("RESGUIDE_DATA is not set (real data absent)")
    return Path(value)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convolutions run much faster single-threaded on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def kitti_root(data_root):
    """RESGUIDE_DATA/KITTI/training (the frames and labels the data README lists); skips when absent."""
    root = data_root / "KITTI" / "training"
    if not (root / "label_2").is_dir():
        pytest.skip(f"no KITTI training folder under {data_root}")
    return root


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """An empty weights folder and training cache, so nothing shipped or trained elsewhere is found."""
    from models import provider

    monkeypatch.setattr(provider, "WEIGHTS_DIR", tmp_path / "shipped")
    monkeypatch.setattr(provider, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv("RESGUIDE_DATA", raising=False)
    return tmp_path
