"""The registry of outputs: every table, figure and the report, each declared once.

An :class:`Artifact` says which deraining cells it reads, what work of its own it does (the
detection cells of the AP table, the timings of Table 4, the pictures of a picture figure),
and how it renders its files from what is stored.  ``all``, ``table``, ``figure``, ``render``
and ``check`` dispatch through :data:`ARTIFACTS` and :func:`run`; the CLI only parses
arguments.

A run computes each shared cell once, then each artifact's own work, then renders.  An
artifact drawn on data that is absent here is kept as it is (:func:`benchmark.figures.absent_data`).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from benchmark import figures, table4
from benchmark.ap_table import ap_table
from benchmark.cells import run_cells
from benchmark.executor import Progress, make_executor, parallel
from benchmark.detection import ap_cells, ap_dry_run
from benchmark.figures import FIGURES, absent_data
from benchmark.report import write_report
from benchmark.tables import TABLES, write_table
from benchmark.visual import VISUALS, draw_visual
from core.errors import DatasetMissing, WeightsUnavailable
from core.files import check_writable
from core.layout import cells_dir, output_dir, report_path
from core.profiles import PROFILES, Profile
from core.store import CellKey, Context, Store, new_stats
from models import provider, registry
from models.provider import training_allowed
from benchmark.rain_look import draw_rain_look, format_table, rain_stats_long
from core.files import atomic_write_text
from datasets.catalog import EMBEDDED
from datasets.names import REGISTERED
from datasets.rainbank import pair_folder
from benchmark.did_mdn_stages import stages_frame, write_stages
from benchmark.domain_gap import MODELS as DOMAIN_GAP_MODELS, domain_gap_frame, write_domain_gap

@dataclass
class Job:
    """One run over artifacts: the profile, the data, where results go, and how much to redo."""

    profile: Profile
    data_root: Path | None
    results: Path
    force: bool = False
    progress: bool = True
    train_missing: bool = False
    measure: bool = True   # False (render): time nothing, compute nothing
    #: where the cells' images run (benchmark.executor): serial here, local (process pool), ray
    executor: str = "serial"
    workers: int | None = None
    threads: int | None = None
    address: str | None = None
    shard_size: int | None = None
    stats: dict = field(default_factory=lambda: {**new_stats(), "failed_figures": 0})

    @property
    def store(self) -> Store:
        return Store(cells_dir(self.results, self.profile.name))

    @property
    def tables_dir(self) -> Path:
        return output_dir(self.results, "tables", self.profile.name)

    @property
    def figures_dir(self) -> Path:
        return output_dir(self.results, "figures", self.profile.name)


def _no_cells(job: Job) -> list[CellKey]:
    return []


@dataclass(frozen=True)
class Artifact:
    id: str
    kind: str  # "table", "figure", "picture" or "report"
    title: str
    render: Callable[[Job], list[Path]]
    cells: Callable[[Job], list[CellKey]] = _no_cells
    compute: Callable[[Job, Context], None] | None = None
    #: extra figures it writes that the report shows (the AP table's ap_runtime)
    report_figures: tuple[str, ...] = ()


def parameter_counts(methods) -> dict:
    """Parameter counts (:func:`models.registry.count_parameters`) of the registered ``methods``."""
    out = {}
    for m in methods:
        if m in registry.names():
            net, _ = registry.load(m, "init")
            out[m] = registry.count_parameters(net)
    return out


# ---------------------------------------------------------------- the artifacts

def table_artifact(spec) -> Artifact:
    """The artifact of a table spec (:mod:`benchmark.tables`): its cells, rendered as Markdown/CSV/LaTeX."""
    def render(job: Job) -> list[Path]:
        params = parameter_counts([c.method for c in spec.columns]) if spec.params_row else None
        return write_table(spec, job.store.all(), set(registry.names()), job.tables_dir, params)

    return Artifact(spec.id, "table", spec.title, render, cells=lambda job: spec.keys())


def _render_table4(job: Job) -> list[Path]:
    registered = set(registry.names())
    prof = job.profile
    cpu = table4.cpu_records(job.store.root, prof.runtime_size, prof.runtime_repeats, registered, job.force,
                             measure_missing=job.measure, compiled=prof.runtime_compile)
    return table4.write(job.tables_dir, cpu, table4.gpu_records(size=prof.runtime_size), registered,
                        prof.runtime_size)


def _compute_ap(job: Job, ctx: Context) -> None:
    ap_cells(job.profile.name, job.data_root, results=job.results, force=job.force, progress=ctx.progress,
             train_missing=job.train_missing, stats=job.stats, executor=ctx.executor, progress_bar=ctx.progress_bar)


def _render_ap(job: Job) -> list[Path]:
    return ap_table(job.profile.name, job.data_root, results=job.results, compute=False)


def _figure(spec) -> Artifact:
    def render(job: Job) -> list[Path]:
        runtimes = figures.timings(spec, job.store.root, job.force) if spec.kind == "compute" else None
        return [figures.draw(spec, job.store.all(), job.data_root, job.figures_dir, runtimes)]

    return Artifact(spec.id, "figure", spec.title, render, cells=lambda job: figures.keys(spec, job.data_root))


def _picture(spec) -> Artifact:
    def render(job: Job) -> list[Path]:
        """Draw the picture figure; a failure is reported and counted, and costs no other work."""
        try:
            with training_allowed(job.train_missing):
                rec = draw_visual(spec.id, job.profile, job.data_root, job.figures_dir, force=job.force)
        except (WeightsUnavailable, DatasetMissing) as exc:  # like a cell without its input: skipped, not
            print(f"skipped figure {spec.id}: {exc}")  # failed, and a committed figure is kept as it is
            return []
        except Exception as exc:  # noqa: BLE001 - one figure's failure costs no other work
            print(f"error: figure {spec.id} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            job.stats["failed_figures"] += 1
            return []
        job.stats["failed_figures"] += bool(rec["failed_panels"])
        print(f"drew {spec.id} ({rec['skipped_panels']} panels skipped, {rec['failed_panels']} failed)")
        return [job.figures_dir / f"{spec.id}.png"]

    return Artifact(spec.id, "picture", spec.title, render)


def _has_real_pairs(data_root: Path | None) -> bool:
    if data_root is None:
        return False
    try:
        pair_folder(data_root)
    except (FileNotFoundError, ValueError):
        return False
    return True


def _render_rain_look(job: Job) -> list[Path]:
    """The look of real and synthetic rain (:mod:`benchmark.rain_look`): the figure and the
    table ``rain_stats.md``.  Kept as it is on a machine without the real training pairs."""
    if not _has_real_pairs(job.data_root):
        print("kept figure rain_look: it measures the real training pairs, which are not under the data root here")
        return []
    fig = job.figures_dir / "rain_look.png"
    summary = draw_rain_look(job.data_root, fig, long=rain_stats_long(job.data_root))
    table = job.tables_dir / "rain_stats.md"
    atomic_write_text(table, format_table(summary))
    return [fig, table]


def _render_domain_gap(job: Job) -> list[Path]:
    """Heavy-rain models on the held-out real pairs (:mod:`benchmark.domain_gap`); kept as it is
    on a machine without the real training pairs."""
    if not _has_real_pairs(job.data_root):
        print("kept table domain_gap: it scores the held-out real training pairs, which are not under the data "
              "root here")
        return []
    with training_allowed(job.train_missing):
        frame = domain_gap_frame(job.data_root, job.profile.name)
    return write_domain_gap(frame, job.tables_dir)


def _render_did_mdn_stages(job: Job) -> list[Path]:
    """DID-MDN taken apart on training data (:mod:`benchmark.did_mdn_stages`); kept as it is on a
    machine without the clean training images and the real pairs."""
    if not _has_real_pairs(job.data_root) or not (Path(job.data_root) / "BSDS500" / "train").is_dir():
        print("kept table did_mdn_stages: it scores training images and real pairs not under the data root here")
        return []
    with training_allowed(job.train_missing):
        try:
            frame = stages_frame(job.data_root, job.profile.name)
        except WeightsUnavailable as exc:
            print(f"kept table did_mdn_stages: {exc}")
            return []
    return write_stages(frame, job.tables_dir)


def _render_report(job: Job) -> list[Path]:
    tables = [a.id for a in ARTIFACTS.values() if a.kind == "table"]
    figs = [a.id for a in ARTIFACTS.values() if a.kind in ("figure", "picture")]
    figs += [f for a in ARTIFACTS.values() for f in a.report_figures]
    scale = sorted((job.results / "runtime").glob("scale_out*.json")) if job.profile.name == "quick" else []
    # the shipped weights the models load (not under --results, which moves only the outputs), of this
    # profile and of the profiles that domain_gap's own entries name
    profiles = {job.profile.name} | {entry[2] for entry in DOMAIN_GAP_MODELS if len(entry) > 2}
    weights = sorted(p for name in profiles for p in provider.WEIGHTS_DIR.glob(f"*-{name}.json"))
    return [write_report(report_path(job.results, job.profile.name), job.profile.name, job.tables_dir,
                         job.figures_dir, tables, figs, scale_records=scale, weights_records=weights)]


ARTIFACTS: dict[str, Artifact] = {
    **{t.id: table_artifact(t) for t in TABLES.values()},
    "table4": Artifact("table4", "table", "running time per image (Table 4), CPU measured here, GPU from "
                       "results/runtime/", _render_table4),
    "ap": Artifact("ap", "table", "car AP of a detector on clean / rainy / derained frames (section 5.2)", _render_ap,
                   compute=_compute_ap, report_figures=("ap_runtime",)),
    **{f.id: _figure(f) for f in FIGURES.values()},
    **{v.id: _picture(v) for v in VISUALS.values()},
    "domain_gap": Artifact("domain_gap", "table", "Heavy-rain models on real heavy rain held out of the renderer's "
                           "fit (the yardstick for choosing the rain)", _render_domain_gap),
    "did_mdn_stages": Artifact("did_mdn_stages", "table", "DID-MDN stage by stage and protocol by protocol, on "
                               "training data (where its PSNR goes)", _render_did_mdn_stages),
    "rain_look": Artifact("rain_look", "figure", "Real rain against the suite's rain presets: crops at 1:1 and "
                          "streak statistics (rain-stats)", _render_rain_look),
    "report": Artifact("report", "report", "results/REPORT.md: every table and figure with the paper's numbers",
                       _render_report),
}


def ids_of(*kinds: str) -> list[str]:
    return [a.id for a in ARTIFACTS.values() if a.kind in kinds]


def get_artifact(artifact_id: str, *kinds: str) -> Artifact:
    """The artifact ``artifact_id`` of one of ``kinds``; ValueError listing the valid ids."""
    art = ARTIFACTS.get(artifact_id.lower())
    if art is None or art.kind not in kinds:
        what = " or ".join(kinds)
        raise ValueError(f"unknown {what} {artifact_id!r}; choose one of {', '.join(ids_of(*kinds))}")
    return art


# ---------------------------------------------------------------- running

def kept(arts: list[Artifact], job: Job) -> list[Artifact]:
    """``arts`` less those stored on data that is absent here (kept as they are, and named)."""
    out = []
    for art in arts:
        missing = absent_data(art.id, job.data_root, job.figures_dir) if art.kind in ("figure", "picture") else []
        if missing:
            print(f"kept figure {art.id}: drawn on {', '.join(missing)}, which is not under the data root here")
        else:
            out.append(art)
    return out


def dry_run(arts: list[Artifact], job: Job) -> int:
    """Print every cell the artifacts need and its stored state; compute nothing."""
    keys = _keys(arts, job)
    print(f"profile {job.profile.name}; {len(keys)} cells -> {job.store.root}")
    for k in keys:
        old = job.store.load(k)
        print(f"  {k.id}: {'stored (' + str(old.get('status')) + ')' if old else 'missing'}")
    if any(a.compute is _compute_ap for a in arts):
        print("\n".join(ap_dry_run(job.profile.name, job.results)))
    return 0


def _keys(arts: list[Artifact], job: Job) -> list[CellKey]:
    registered = set(registry.names())
    return list(dict.fromkeys(k for a in arts for k in a.cells(job) if k.method in registered))


def run(ids: list[str], job: Job) -> int:
    """Compute the cells of the artifacts ``ids`` (each shared cell once), their own work, then
    render them; returns the exit code (1 when a cell or a figure failed)."""
    arts = kept([ARTIFACTS[i] for i in ids], job)
    keys = _keys(arts, job)
    print(f"profile {job.profile.name}; data root {job.data_root or '(none: embedded default only)'}; "
          f"{len(keys)} cells -> {job.store.root}")
    check_writable(job.store.root, job.tables_dir, job.figures_dir)
    ex = make_executor(job.executor, job.workers, job.threads, job.address)
    bar = Progress(job.progress and parallel(ex))
    ctx = Context(profile=job.profile, data_root=job.data_root, store=job.store, force=job.force,
                  progress=job.progress and not parallel(ex), stats=job.stats, executor=ex, progress_bar=bar,
                  shard_size=job.shard_size)
    if parallel(ex):
        print(f"executor {ex.name}: {ex.workers} workers x {ex.threads} torch threads")
    try:
        with training_allowed(job.train_missing):  # weights that were never trained are skipped unless asked
            run_cells(keys, ctx)
            for art in arts:
                if art.compute is not None:
                    art.compute(job, ctx)
    finally:
        bar.close()
        ex.close()
    render(arts, job)
    s = job.stats
    print(f"cells: {s['computed']} computed, {s['reused']} reused, {s['kept']} kept (an input is absent here), "
          f"{s['skipped']} skipped (no data or no weights), {s['failed']} failed")
    return 1 if s["failed"] or s["failed_figures"] else 0


def render(arts: list[Artifact], job: Job) -> None:
    for art in arts:
        for path in art.render(job):
            print(f"wrote {path}")


def list_everything() -> int:
    """``list``: the tables, figures, methods, datasets and profiles."""
    for title, kinds in (("tables", ("table",)), ("figures", ("figure", "picture"))):
        print(f"{title}:")
        for art in ARTIFACTS.values():
            if art.kind in kinds:
                print(f"  {art.id}: {art.title}" + (" (pictures)" if art.kind == "picture" else ""))
    print("methods:")
    for m in registry.names():
        spec = registry.get(m)
        print(f"  {m}: {spec.paper_name} ({spec.task}) {spec.description}")
    print("datasets:")
    for d in EMBEDDED:
        print(f"  {d}: embedded default, synthetic rain over images shipped in installed wheels")
    for d in sorted(set(REGISTERED.values())):
        print(f"  {d}: found under the data root (--data-root or RESGUIDE_DATA)")
    print("profiles:")
    for p in PROFILES.values():
        print(f"  {p.name}: {p.description}")
    return 0
