import csv
import io
from pathlib import Path

from core.store import CellKey
from benchmark.tables import Column, TableSpec, get_table, render_csv, render_latex, render_markdown, write_table

GOLDEN = Path(__file__).parent / "golden"

SPEC = TableSpec(
    id="demo", title="Demo table", rows=("SetA", "SetB"),
    columns=(Column("identity", "Rainy images"), Column("m1", "M1"), Column("m2", "M2"), Column("m3", "M3")),
    paper={("SetA", "identity"): (26.9, 0.838), ("SetA", "m1"): (30.0, 0.9)},
    paper_params={"m1": 1000}, params_row=True, note="A note.",
)


def _cell(method, dataset, psnr, ssim, status="ok"):
    key = CellKey(method, dataset)
    if status != "ok":
        return key.id, {"id": key.id, "status": status, "error": "boom" if status == "failed" else "no data",
                        "profile": "smoke"}
    return key.id, {"id": key.id, "status": "ok", "profile": "smoke", "n_images": 3,
                    "metrics": {"psnr_y": psnr, "ssim_y": ssim, "psnr_rgb": psnr - 1, "ssim_rgb": ssim - 0.01},
                    "dataset_info": {"release": dataset, "version": "v1", "known": True, "fingerprint": "ab" * 32},
                    "weights": {"tag": "none"}}


CELLS = dict([
    _cell("identity", "SetA", 26.904, 0.8381),
    _cell("m1", "SetA", 31.2345, 0.9012),
    _cell("m2", "SetA", 30.0, 0.9500),
    _cell("identity", "SetB", 0, 0, status="skipped"),
    _cell("m1", "SetB", 0, 0, status="failed"),
])
REGISTERED = {"identity", "m1", "m2"}
PARAMS = {"identity": {"trainable": 0, "all_variables": 0}, "m1": {"trainable": 1234, "all_variables": 1300},
          "m2": {"trainable": 10, "all_variables": 10}}


def test_markdown_golden():
    got = render_markdown(SPEC, CELLS, REGISTERED, PARAMS)
    assert got == (GOLDEN / "demo.md").read_text()


def test_best_values_are_bold_per_metric():
    md = render_markdown(SPEC, CELLS, REGISTERED, PARAMS)
    row = next(line for line in md.splitlines() if line.startswith("| SetA (ours)"))
    assert "**31.23**/0.901" in row and "30.00/**0.950**" in row and "26.90/0.838" in row


def test_csv_is_long_format_with_paper_beside_ours():
    rows = list(csv.DictReader(io.StringIO(render_csv(SPEC, CELLS, REGISTERED, PARAMS))))
    a = next(r for r in rows if r["dataset"] == "SetA" and r["method"] == "m1" and r["metric"] == "psnr_y")
    assert float(a["ours"]) == 31.2345 and float(a["paper"]) == 30.0 and a["status"] == "ok"
    b = next(r for r in rows if r["dataset"] == "SetB" and r["method"] == "m1")
    assert b["status"] == "failed" and b["ours"] == ""
    assert next(r for r in rows if r["method"] == "m3")["status"] == "n/i"


def test_latex_bold_and_escaping():
    tex = render_latex(SPEC, CELLS, REGISTERED, PARAMS)
    assert r"\textbf{31.23}/0.901" in tex and r"\begin{tabular}{lcccc}" in tex
    assert "SetA (ours)" in tex


def test_write_table_writes_three_formats(tmp_path):
    paths = write_table(SPEC, CELLS, REGISTERED, tmp_path, PARAMS)
    assert sorted(p.name for p in paths) == ["demo.csv", "demo.md", "demo.tex"]


def test_weights_line_names_every_weights_file_of_a_column():
    cells = dict(CELLS)
    for row, tag, sha in (("SetA", "light", "aa" * 32), ("SetB", "heavy", "bb" * 32)):
        key, cell = _cell("m2", row, 30.0, 0.9)
        cell["weights"] = {"tag": tag, "sha256": sha}
        cells[key] = cell
    md = render_markdown(SPEC, cells, REGISTERED, PARAMS)
    line = next(line for line in md.splitlines() if line.startswith("- Weights:"))
    assert f"M2: light ({'aa' * 6}), heavy ({'bb' * 6})" in line
    assert "M1: none;" in line  # the same file in every row is named once


def test_real_sets_run_the_models_trained_on_the_fitted_rain():
    t2, sources = get_table("table2"), get_table("rain_sources")
    ddn = next(c for c in t2.columns if c.method == "ddn")
    did = next(c for c in t2.columns if c.method == "did_mdn")
    assert [t2.key(row, ddn).weights for row in ("Rain100L", "Rain100H", "Rain12", "embedded-light",
                                                 "embedded-heavy")] == \
        ["light-real", "heavy-real", "light-real", "light", "heavy"]
    assert t2.key("Rain100H", did).weights == "density"  # one DID-MDN for every density
    assert [sources.key("Rain100H", c).weights for c in sources.columns[1:3]] == ["heavy", "heavy-real"]
    assert [sources.key("embedded-light", c).weights for c in sources.columns[1:3]] == ["light", "light-real"]
