import pytest

from models.provider import training_allowed

from core.store import CellKey, Context, Store
from benchmark.cells import run_cell
from core.profiles import get_profile
from models import registry
from core.errors import WeightsUnavailable


def test_official_weights_are_found_under_the_data_root(tmp_path):
    with pytest.raises(WeightsUnavailable, match="data root"):
        registry.official_weights("prenet", None)
    with pytest.raises(WeightsUnavailable, match="no official checkpoint"):
        registry.official_weights("prenet", tmp_path)
    path = tmp_path / "weights" / "PReNet" / "Rain100L" / "net_latest.pth"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    assert registry.official_weights("prenet", tmp_path) == path
    (tmp_path / "weights" / "DDN").mkdir()
    (tmp_path / "weights" / "DDN" / "model.index").write_bytes(b"x")  # a TF prefix counts by its index
    assert registry.official_weights("ddn", tmp_path) == tmp_path / "weights" / "DDN" / "model"
    with pytest.raises(WeightsUnavailable, match="knows no official"):
        registry.official_weights("identity", tmp_path)


def test_a_method_without_weights_is_skipped_not_failed(no_weights):
    ctx = Context(profile=get_profile("smoke"), data_root=None, store=Store(no_weights), progress=False)
    with training_allowed(False):
        cell = run_cell(CellKey("did_mdn", "embedded-light", "density"), ctx)
    assert cell["status"] == "skipped" and cell["skip_reason"] == "weights"
    assert "train did_mdn --rain density" in cell["error"]
    assert ctx.stats["skipped"] == 1 and ctx.stats["failed"] == 0


def test_every_registered_method_builds_its_architecture():
    for name in registry.names():
        net, info = registry.load(name, "init")
        counts = registry.count_parameters(net)
        assert counts["all_variables"] >= counts["trainable"] >= 0, name
