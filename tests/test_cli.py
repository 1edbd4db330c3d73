import json

import pytest

from benchmark.run import main


def _last_json(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_score_prints_json_last(capsys):
    assert main(["score", "identity", "embedded-light", "--profile", "smoke", "--no-progress"]) == 0
    line = _last_json(capsys)
    for key in ("method", "dataset", "n_images", "psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "weights", "seconds"):
        assert key in line
    assert line["method"] == "identity" and line["n_images"] == 3 and line["weights"]["tag"] == "none"
    assert 20 < line["psnr_y"] < 40 and 0 < line["ssim_y"] < 1


def test_score_limit(capsys):
    assert main(["score", "identity", "embedded-heavy", "--profile", "smoke", "--limit", "2", "--no-progress"]) == 0
    assert _last_json(capsys)["n_images"] == 2


def test_score_compiled_gives_the_same_numbers(capsys):
    import torch
    from torch._dynamo.utils import counters

    args = ["score", "resguidenet_3", "embedded-heavy", "--profile", "smoke", "--limit", "2", "--no-progress"]
    assert main(args) == 0
    eager = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    counters.clear()
    assert main(args + ["--compile"]) == 0
    compiled = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert compiled["inference"]["path"] == "compiled" and eager["inference"]["path"] == "eager"
    if torch.backends.mkldnn.is_available():  # the weights were frozen: packed for oneDNN, not graph inputs
        assert counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"] > 0
    for m in ("psnr_y", "psnr_rgb"):
        assert compiled[m] == pytest.approx(eager[m], abs=1e-4)
    for m in ("ssim_y", "ssim_rgb"):
        assert compiled[m] == pytest.approx(eager[m], abs=1e-6)


def test_score_takes_the_weights_the_tables_take(capsys):
    """No --weights: the model of the dataset's rain (models.registry.weights_for), as the tables'
    cells; embedded-heavy's rain is the first heavy preset."""
    assert main(["score", "resguidenet_3", "embedded-heavy", "--profile", "smoke", "--limit", "1", "--no-progress",
                 "--eager"]) == 0
    line = _last_json(capsys)
    assert line["weights"]["tag"] == "heavy" and line["inference"]["why"] == "asked for (--eager)"


def test_params_identity(capsys):
    assert main(["params", "identity"]) == 0
    assert _last_json(capsys) == {"method": "identity", "trainable": 0, "all_variables": 0}


def test_unknown_method_and_missing_data_are_clear_errors(capsys, monkeypatch):
    monkeypatch.delenv("RESGUIDE_DATA", raising=False)
    assert main(["params", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["score", "identity", "Rain100L", "--no-progress"]) == 2
    assert "RESGUIDE_DATA" in capsys.readouterr().err


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "table2" in out and "identity" in out and "embedded-light" in out and "smoke" in out


def test_all_dry_run_computes_nothing(tmp_path, capsys):
    assert main(["all", "--profile", "smoke", "--dry-run", "--results", str(tmp_path)]) == 0
    assert "identity@default__embedded-light: missing" in capsys.readouterr().out
    assert not (tmp_path / "cells").exists()


def test_all_writes_tables(tmp_path, monkeypatch):
    monkeypatch.delenv("RESGUIDE_DATA", raising=False)
    assert main(["all", "--profile", "smoke", "--results", str(tmp_path), "--no-progress"]) == 0
    for ext in ("md", "csv", "tex"):
        assert (tmp_path / "tables" / "smoke" / f"table2.{ext}").exists()
    md = (tmp_path / "tables" / "smoke" / "table2.md").read_text()
    assert "embedded-light (ours)" in md and "26.90/0.838" in md  # the paper's number shown beside ours
    report = (tmp_path / "REPORT-smoke.md").read_text()
    assert "#### Table 2" in report and "](figures/smoke/fig6.png)" in report and "Table 4" in report
    assert "](figures/smoke/fig10.png)" in report and "Fig. 10: three test images" in report  # the pictures too
    assert "CPU fp32" in (tmp_path / "tables" / "smoke" / "table4.md").read_text()

    # re-rendering from the stored cells reproduces the files; a stale table fails the check
    render = ["render", "--profile", "smoke", "--results", str(tmp_path), "--check"]
    assert main(render) == 0
    table1 = tmp_path / "tables" / "smoke" / "table1.md"
    table1.write_text(table1.read_text().replace("|", "¦", 3))
    assert main(render) == 1
    assert main(render[:-1]) == 0 and main(render) == 0  # rendering without --check repairs it


@pytest.mark.realdata
def test_identity_on_rain100l_reproduces_the_papers_rainy_column(capsys, data_root):
    # The MATLAB protocol on the real Rain100L test set gives the paper's Table 2 "Rainy images" entry.
    assert main(["score", "identity", "Rain100L", "--data-root", str(data_root), "--no-progress"]) == 0
    line = _last_json(capsys)
    assert line["n_images"] == 100 and line["dataset_known"] is True and line["dataset_version"] == "old-100"
    assert round(line["psnr_y"], 2) == 26.90
    assert round(line["ssim_y"], 3) == 0.838


def _runtime_json(capsys, method, size, *extra):
    assert main(["runtime", method, "--size", size, *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_runtime_prints_one_json_line(capsys):
    rec = _runtime_json(capsys, "resguidenet_3", "32", "--repeats", "2", "--warmup", "1")
    assert rec["method"] == "resguidenet_3" and rec["device"] == "cpu" and rec["repeats"] == 2
    assert rec["min_s"] <= rec["median_s"] <= rec["max_s"]
    assert rec["params"] == 17865
    # convolution FLOPs of ResGuideNet_3 grow with the pixel count
    big = _runtime_json(capsys, "resguidenet_3", "64", "--repeats", "1", "--warmup", "0")
    assert big["gflops"] == pytest.approx(4 * rec["gflops"], rel=0.02)


def test_runtime_names_the_allocator_setting(capsys, monkeypatch):
    import platform

    from benchmark import runtime

    rec = _runtime_json(capsys, "identity", "16", "--repeats", "1", "--warmup", "0")
    if platform.libc_ver()[0] == "glibc":  # main() kept freed feature maps in the heap (tune_allocator)
        assert rec["malloc"] == "glibc mmap_threshold=32MiB trim_threshold=1024MiB"
    monkeypatch.setattr(runtime, "_allocator", "default")
    monkeypatch.setenv("RESGUIDE_MALLOC", "default")
    assert runtime.tune_allocator() == "default"  # the opt-out leaves glibc alone


def test_denormals_are_flushed_to_zero():
    import torch

    from benchmark.runtime import flush_denormals

    if not flush_denormals():  # set by pytest_configure as by the CLI; some CPUs cannot
        pytest.skip("this CPU cannot flush denormals")
    tiny = torch.tensor([1e-39, 1e-30])  # 1e-39 is below float32's smallest normal, 1.18e-38
    assert (tiny * 1.0).tolist()[0] == 0.0 and (tiny * 1.0).tolist()[1] > 0


def test_runtime_rejects_bad_arguments(capsys):
    assert main(["runtime", "resguidenet", "--size", "2"]) == 2
    assert "size" in capsys.readouterr().err


def test_convfloor_prints_the_conv_floor_and_matmul_rates(capsys, monkeypatch):
    from benchmark import convfloor

    monkeypatch.setattr(convfloor, "compile_for_inference", lambda net: net)  # compiling is the slow part
    assert convfloor.main(["--size", "16", "--repeats", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    convs = [r for r in lines if r["what"].startswith("conv3x3")]
    assert [(r["dtype"], r["compile"]) for r in convs] == [
        ("float32", False), ("float32", True), ("bfloat16", False), ("bfloat16", True)]
    for r in convs:
        assert r["per_conv_ms"] > 0 and r["x50_s"] == pytest.approx(50 * r["per_conv_ms"] / 1e3, abs=1e-3)
    assert [r["dtype"] for r in lines if r["what"].startswith("matmul")] == ["float32", "bfloat16"]
    assert convfloor.main(["--size", "16", "--repeats", "1", "--features", "8"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["what"].startswith("conv3x3 8->8")
    with pytest.raises(SystemExit):
        convfloor.main(["--features", "0"])
    assert "--features must be positive" in capsys.readouterr().err
