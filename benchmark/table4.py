"""Table 4: running time per 500×500 image, ours (CPU measured now, GPU from committed records)
beside the paper's.

CPU records are measured by :func:`benchmark.runtime.measure` with the bare architecture and
stored as ``runtime__table4__METHOD__VARIANT.json`` beside the result cells, reused unless
``--force``. The variants: float32 eager in the contiguous format (the plain PyTorch path),
bfloat16 autocast channels-last, and both compiled channels-last (Inductor with weight freezing;
not GMM, see :data:`NOT_COMPILED`; JORDER compiles its crop network only; only where the profile
asks for it). GPU records cannot be made on a machine without one: they are the JSON lines a
GPU session wrote with ``python -m benchmark.run runtime METHOD --device cuda ...`` and
committed under ``results/runtime/gpu-*.jsonl`` (each line names its hardware).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from benchmark import runtime
from core.files import atomic_write_text
from core.layout import RESULTS

METHODS = (("gmm", "GMM"), ("ddn", "DDN"), ("jorder", "JORDER"), ("did_mdn", "DID-MDN"),
           ("resguidenet_3", "ResGuideNet_3"), ("resguidenet", "ResGuideNet"), ("prenet", "PReNet*"))
#: Table 4 of the paper (seconds per 500×500 image; CPU and GTX 1080 GPU as printed).
PAPER = {"cpu": {"gmm": 1990, "ddn": 1.51, "jorder": 295, "did_mdn": 4.20, "resguidenet_3": 1.26, "resguidenet": 3.15},
         "gpu": {"ddn": 0.16, "jorder": 0.18, "did_mdn": 0.14, "resguidenet_3": 0.06, "resguidenet": 0.11}}
GPU_RECORDS = RESULTS / "runtime"
#: CPU variants: name -> (dtype, compiled). Uncompiled bfloat16 and both compiled ones run channels-last.
VARIANTS = {"float32": ("float32", False), "bfloat16": ("bfloat16", False),
            "float32-compiled": ("float32", True), "bfloat16-compiled": ("bfloat16", True)}
#: Not compiled: GMM is an optimisation per image, not a fixed graph. (JORDER's test procedure, a
#: Python loop over overlapping 100x100 crops, compiles only its crop network: ``JORDER.compile_parts``.)
NOT_COMPILED = {"gmm"}


def cpu_records(store_root: Path, size: int, repeats: int, registered: set[str], force: bool = False,
                measure_missing: bool = True, compiled: bool = True) -> dict:
    """{(method, variant): record} measured on this CPU (stored and reused); failures are recorded.
    With ``measure_missing=False`` only stored records are returned (re-rendering); with
    ``compiled=False`` the compiled variants are neither measured nor returned."""
    out = {}
    for method, _ in METHODS:
        if method not in registered:
            continue
        for variant, (dtype, compile) in VARIANTS.items():
            if compile and (not compiled or method in NOT_COMPILED):
                continue
            path = Path(store_root) / f"runtime__table4__{method}__{variant}.json"
            if path.exists() and not force:
                rec = json.loads(path.read_text())
                if rec.get("size") == size and (rec.get("status", "ok") == "ok" or not measure_missing):
                    out[method, variant] = rec
                    continue
            if not measure_missing:
                continue
            try:
                rec = {**runtime.measure(method, size=size, dtype=dtype, repeats=repeats,
                                 channels_last=variant != "float32", compile=compile),
                       "status": "ok"}
            except Exception as exc:  # one method failing must not cost the others
                rec = {"method": method, "dtype": dtype, "compile": compile, "size": size, "status": "failed",
                       "error": f"{type(exc).__name__}: {exc}"}
            atomic_write_text(path, json.dumps(rec, indent=1) + "\n")
            out[method, variant] = rec
    return out


def gpu_records(folder: Path = GPU_RECORDS, size: int = 500) -> dict:
    """{(method, kind): record} from committed GPU JSON lines; kind is 'fp32' (batch 1, float32),
    'bf16' (batch 1, bfloat16) or 'throughput' (the most images/s at any batch)."""
    out: dict = {}
    for path in sorted(Path(folder).glob("gpu-*.jsonl")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: not a JSON line ({exc})") from None
            if rec.get("device") != "cuda" or rec.get("size") != size:
                continue
            m = rec["method"]
            if rec.get("batch") == 1 and not rec.get("compile"):
                kind = "fp32" if rec["dtype"] == "float32" else "bf16"
                out.setdefault((m, kind), rec)
            best = out.get((m, "throughput"))
            if best is None or rec["images_per_s"] > best["images_per_s"]:
                out[m, "throughput"] = rec
    return out


def _s(rec) -> str:
    if rec is None:
        return "–"
    if rec.get("status", "ok") != "ok":
        return "failed"
    return f"{rec['median_s']:.3f}"


def _malloc(cpu: dict) -> str:
    """The allocator settings the CPU records name (records older than the field: "not recorded")."""
    seen = sorted({r.get("malloc", "not recorded") for r in cpu.values() if r.get("status") != "failed"})
    return " / ".join(seen) or "–"


def rows(cpu: dict, gpu: dict, registered: set[str]) -> list[tuple[str, list[str]]]:
    def ours(fn):
        return [fn(m) if m in registered else "n/i" for m, _ in METHODS]

    hw_gpu = next((r["hardware"] for r in gpu.values()), "GPU")
    hw_cpu = next((r["hardware"] for r in cpu.values() if r.get("hardware")), "this CPU")

    def throughput(m):
        r = gpu.get((m, "throughput"))
        if r is None:
            return "–"
        how = f"b{r['batch']} {'bf16' if r['dtype'] == 'bfloat16' else 'fp32'}" + (" compiled" if r.get("compile") else "")
        return f"{r['images_per_s']:.0f} ({how})"

    return [
        (f"CPU fp32, s (ours: {hw_cpu})", ours(lambda m: _s(cpu.get((m, "float32"))))),
        ("CPU bf16 channels-last, s (ours)", ours(lambda m: _s(cpu.get((m, "bfloat16"))))),
        ("CPU fp32 channels-last compiled, s (ours)", ours(lambda m: _s(cpu.get((m, "float32-compiled"))))),
        ("CPU bf16 channels-last compiled, s (ours)", ours(lambda m: _s(cpu.get((m, "bfloat16-compiled"))))),
        ("CPU, s (paper)", [str(PAPER["cpu"].get(m, "–")) for m, _ in METHODS]),
        (f"GPU fp32, s (ours: {hw_gpu})", [_s(gpu.get((m, "fp32"))) for m, _ in METHODS]),
        ("GPU bf16 channels-last, s (ours)", [_s(gpu.get((m, "bf16"))) for m, _ in METHODS]),
        ("GPU throughput, images/s (ours)", [throughput(m) for m, _ in METHODS]),
        ("GPU, s (paper: GTX 1080)", [str(PAPER["gpu"].get(m, "–")) for m, _ in METHODS]),
    ]


def render(cpu: dict, gpu: dict, registered: set[str], size: int) -> dict[str, str]:
    body = rows(cpu, gpu, registered)
    labels = [label for _, label in METHODS]
    md = [f"### Table 4: running time per {size}×{size} image (median seconds)", "",
          "| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    md += [f"| {name} | " + " | ".join(vals) + " |" for name, vals in body]
    md += ["", "- Bare architectures (timing does not depend on the weights); warm-up, then the median of the "
               "repeats; GPU rows from committed records under results/runtime/.",
           "- Compiled: torch.compile (Inductor) with weight freezing, timed after the warm-up that compiles; "
           "GMM (an optimisation per image) is not; JORDER compiles its network on the 100×100 crops, "
           "its loop over them stays eager.",
           f"- CPU allocator: {_malloc(cpu)} (benchmark.runtime.tune_allocator).",
           "- n/i: not implemented in the suite yet; –: not measured. *PReNet is not in the paper."]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row"] + [m for m, _ in METHODS])
    for name, vals in body:
        w.writerow([name] + vals)
    tex = [r"\begin{table}[t]", r"\centering", rf"\caption{{Running time per ${size}\times{size}$ image (s)}}",
           r"\label{tab:table4}", r"\begin{tabular}{l" + "c" * len(labels) + "}", r"\toprule",
           " & " + " & ".join(lab.replace("_", r"\_") for lab in labels) + r" \\", r"\midrule"]
    tex += [name.replace("_", r"\_").replace("%", r"\%") + " & " + " & ".join(v.replace("_", r"\_") for v in vals)
            + r" \\" for name, vals in body]
    tex += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return {"md": "\n".join(md) + "\n", "csv": buf.getvalue(), "tex": "\n".join(tex) + "\n"}


def write(out_dir: Path, cpu: dict, gpu: dict, registered: set[str], size: int) -> list[Path]:
    paths = []
    for ext, text in render(cpu, gpu, registered, size).items():
        p = Path(out_dir) / f"table4.{ext}"
        atomic_write_text(p, text)
        paths.append(p)
    return paths
