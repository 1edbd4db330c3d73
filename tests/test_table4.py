import json

import pytest

from benchmark import table4

pytestmark = pytest.mark.usefixtures("one_thread")


def _rec(method, dtype="float32", batch=1, median=0.01, compile=False, device="cuda", size=500):
    return {"method": method, "size": size, "device": device, "dtype": dtype, "batch": batch, "compile": compile,
            "median_s": median, "images_per_s": batch / median, "hardware": "Fake GPU"}


def test_gpu_records_pick_single_image_and_best_throughput(tmp_path):
    lines = [_rec("resguidenet"), _rec("resguidenet", "bfloat16", median=0.008),
             _rec("resguidenet", batch=32, median=0.16), _rec("resguidenet", "bfloat16", 32, 0.07, compile=True),
             _rec("resguidenet", size=256, median=1.0), _rec("ddn", device="cpu")]
    (tmp_path / "gpu-fake.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    got = table4.gpu_records(tmp_path)
    assert got["resguidenet", "fp32"]["median_s"] == 0.01
    assert got["resguidenet", "bf16"]["median_s"] == 0.008
    assert got["resguidenet", "throughput"]["compile"] is True  # 457 images/s beats 200
    assert ("ddn", "fp32") not in got  # CPU lines are not GPU records
    md = table4.render({}, got, {"resguidenet"}, 500)["md"]
    row = next(line for line in md.splitlines() if line.startswith("| GPU throughput"))
    assert "457 (b32 bf16 compiled)" in row
    assert "| n/i |" in md  # methods not registered


def test_gpu_records_name_a_bad_line(tmp_path):
    (tmp_path / "gpu-bad.jsonl").write_text(json.dumps(_rec("ddn")) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"gpu-bad\.jsonl:2"):
        table4.gpu_records(tmp_path)


def test_cpu_records_measure_store_reuse_and_record_failures(tmp_path, monkeypatch):
    calls = []

    def fake_measure(method, size, dtype, repeats, channels_last, compile):
        calls.append((method, dtype))
        if method == "ddn":
            raise RuntimeError("boom")
        return {"method": method, "size": size, "dtype": dtype, "median_s": 0.5, "hardware": "cpu"}

    monkeypatch.setattr("benchmark.runtime.measure", fake_measure)
    got = table4.cpu_records(tmp_path, 64, 1, {"resguidenet", "ddn"}, compiled=False)
    assert got["ddn", "float32"]["status"] == "failed" and "boom" in got["ddn", "float32"]["error"]
    assert got["resguidenet", "bfloat16"]["median_s"] == 0.5
    n = len(calls)
    table4.cpu_records(tmp_path, 64, 1, {"resguidenet", "ddn"}, compiled=False)
    assert len(calls) == n + 2  # ok records reused, the failed ones retried
    text = table4.render(got, {}, {"resguidenet", "ddn"}, 64)["md"]
    assert "failed" in text and "0.500" in text


def test_cpu_records_compiled_variants_run_channels_last_and_skip_gmm(tmp_path, monkeypatch):
    calls = []

    def fake_measure(method, size, dtype, repeats, channels_last, compile=False):
        calls.append((method, dtype, channels_last, compile))
        return {"method": method, "size": size, "dtype": dtype, "median_s": 0.25 if compile else 0.5}

    monkeypatch.setattr("benchmark.runtime.measure", fake_measure)
    got = table4.cpu_records(tmp_path, 64, 1, {"resguidenet", "gmm", "jorder"})
    assert sorted(c for c in calls if c[0] == "resguidenet") == [
        ("resguidenet", "bfloat16", True, False), ("resguidenet", "bfloat16", True, True),
        ("resguidenet", "float32", False, False), ("resguidenet", "float32", True, True)]
    assert [c for c in calls if c[0] == "gmm"] == [("gmm", "float32", False, False), ("gmm", "bfloat16", True, False)]
    assert ("jorder", "float32", True, True) in calls  # its crop network is compiled
    assert (tmp_path / "runtime__table4__resguidenet__float32-compiled.json").is_file()
    md = table4.render(got, {}, {"resguidenet", "gmm"}, 64)["md"]
    row = next(line for line in md.splitlines() if line.startswith("| CPU fp32 channels-last compiled"))
    assert row.split("|")[1:3] == [" CPU fp32 channels-last compiled, s (ours) ", " – "]  # GMM
    assert "0.250" in row
    # re-rendering from a profile without the compiled rows neither measures nor shows them
    n = len(calls)
    plain = table4.cpu_records(tmp_path, 64, 1, {"resguidenet", "gmm"}, measure_missing=False, compiled=False)
    assert len(calls) == n and ("resguidenet", "float32-compiled") not in plain
