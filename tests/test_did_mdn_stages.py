"""DID-MDN taken apart (benchmark.did_mdn_stages): the label override and the table's rows."""
import numpy as np
import pytest
import torch

from benchmark import did_mdn_stages
from models.did_mdn import DIDMDN

pytestmark = pytest.mark.usefixtures("one_thread")


def test_forward_takes_the_true_density_in_place_of_the_classifier_s():
    torch.manual_seed(0)
    net = DIDMDN(protocol="native", stretch=False).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        given = [net(x, torch.tensor([k])) for k in (0, 2)]
    assert net.last_density.tolist() == [2]
    assert not torch.equal(given[0], given[1])  # the label reaches the generator


def test_stages_table_scores_every_stage_of_every_group(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    rainy = np.clip(clean.astype(int) + 40, 0, 255).astype(np.uint8)
    monkeypatch.setattr(did_mdn_stages, "groups", lambda root, n: [("light", 2, [(rainy, clean)])])
    torch.manual_seed(0)
    monkeypatch.setattr(did_mdn_stages.registry, "load", lambda *a: (DIDMDN(), {"tag": "init"}))
    df = did_mdn_stages.stages_frame(tmp_path)
    stages = list(df["stage"])
    assert stages[:3] == ["rainy", "resize 512 and back (clean image, no network)", "residual net (stage 1), 512"]
    assert stages[3:] == [row[0] for row in did_mdn_stages.GENERATOR_ROWS]
    assert (df["n_images"] == 1).all() and df["psnr_y"].notna().all()
    rainy_psnr = df.loc[df["stage"] == "rainy", "psnr_y"].item()
    assert 14 < rainy_psnr < 22  # +40 grey levels (less where clipped): about 17.5 dB on Y
    assert df.loc[df["stage"].str.startswith("resize"), "psnr_y"].item() > 20
    md, csv = did_mdn_stages.write_stages(df, tmp_path)
    text = md.read_text()
    assert "**light** (true density light; 1 images; classifier accuracy" in text and "Table 2" in text
    assert csv.read_text().count("\n") == len(df) + 1
