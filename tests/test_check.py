import copy
import json

from benchmark.check import compare, reference_document, run_check


def _current():
    cell = {"id": "identity@default__embedded-light", "status": "ok", "n_images": 3,
            "metrics": {"psnr_y": 28.0, "ssim_y": 0.9, "psnr_rgb": 27.0, "ssim_rgb": 0.89},
            "dataset_info": {"fingerprint": "f"}}
    skipped = {"id": "identity@default__Rain100L", "status": "skipped", "error": "no data root"}
    return {cell["id"]: cell, skipped["id"]: skipped}


def test_compare_passes_within_tolerance_and_fails_on_drift():
    cur = _current()
    ref = reference_document(cur)
    assert "identity@default__Rain100L" not in ref["cells"]  # skipped cells are not references
    assert compare(cur, ref) == ([], [])
    moved = copy.deepcopy(cur)
    moved["identity@default__embedded-light"]["metrics"]["psnr_y"] += 0.04
    assert compare(moved, ref)[0] == []
    moved["identity@default__embedded-light"]["metrics"]["psnr_y"] += 0.02
    moved["identity@default__embedded-light"]["metrics"]["ssim_y"] -= 0.003
    failures, _ = compare(moved, ref)
    assert len(failures) == 2
    assert "psnr_y 28.0000 -> 28.0600" in failures[0] and "tolerance 0.05" in failures[0]


def test_update_keeps_cells_skipped_here_and_drops_cells_no_longer_asked_for():
    old = {"cells": {"identity@default__Rain100L": {"status": "ok", "metrics": {"psnr_y": 26.9}},
                     "gone@light__Rain100L": {"status": "ok", "metrics": {"psnr_y": 27.7}}}}
    ref = reference_document(_current(), old)
    assert ref["cells"]["identity@default__Rain100L"]["metrics"] == {"psnr_y": 26.9}  # data absent here: kept
    assert "gone@light__Rain100L" not in ref["cells"]  # no table asks for it: dropped, not a failure later
    assert compare(_current(), ref)[0] == []


def test_compare_reports_status_change_and_absent_data():
    cur = _current()
    ref = reference_document(cur)
    ref["cells"]["identity@default__Rain100L"] = {"status": "ok", "metrics": {"psnr_y": 26.9}}
    failed = copy.deepcopy(cur)
    failed["identity@default__embedded-light"] = {"status": "failed", "error": "RuntimeError: x"}
    failures, notes = compare(failed, ref)
    assert failures == ["identity@default__embedded-light: status ok -> failed RuntimeError: x"]
    assert notes and "not checked" in notes[0]


def test_run_check_fails_on_a_planted_drift(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RESGUIDE_DATA", raising=False)
    from benchmark import check

    computed = {}  # the smoke cells are computed once: the same cells serve all three runs

    def once(data_root, progress=True, methods=None, detection=True):
        if not computed:
            computed.update(real_compute(data_root, progress, methods, detection))
        return copy.deepcopy(computed)

    real_compute = check.compute_smoke
    monkeypatch.setattr(check, "compute_smoke", once)
    ref = tmp_path / "smoke.json"
    assert run_check(reference_path=ref, update=True, progress=False) == 0
    assert run_check(reference_path=ref, progress=False) == 0
    doc = json.loads(ref.read_text())
    doc["cells"]["identity@default__embedded-heavy"]["metrics"]["psnr_y"] += 0.5
    # the gate also holds the detection study's cells (shipped detector, embedded road scenes)
    det = "det__fasterrcnn_tiny_fpn__resguidenet@heavy__roads__heavy"
    assert doc["cells"][det]["status"] == "ok"
    assert {"ap40_moderate", "coco_ap50"} <= set(doc["cells"][det]["metrics"])
    doc["cells"][det]["metrics"]["ap40_moderate"] += 0.02
    ref.write_text(json.dumps(doc))
    capsys.readouterr()
    assert run_check(reference_path=ref, progress=False) == 1
    out = capsys.readouterr().out
    assert "check FAILED" in out and "identity@default__embedded-heavy: psnr_y" in out
    assert f"{det}: ap40_moderate" in out and "tolerance 0.01" in out


def test_the_gate_checks_shipped_weights_and_never_trains(no_weights):
    """A model with no shipped smoke weights is skipped by the gate (not checked), not trained on the fly."""
    from benchmark.check import compute_smoke

    cells = compute_smoke(None, progress=False, methods=("ddn",), detection=False)
    assert cells and all(c["status"] == "skipped" for c in cells.values())
    embedded = cells["ddn@heavy__embedded-heavy"]  # its data is here, its smoke weights are not
    assert embedded["skip_reason"] == "weights" and "benchmark.run train ddn" in embedded["error"]
    assert not (no_weights / "cache").exists()
