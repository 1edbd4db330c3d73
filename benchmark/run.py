"""Command line of the suite: ``python -m benchmark.run COMMAND``.

    all     [--profile P] [--data-root DIR] [--force] [--dry-run] [--train-missing]   every table and figure
            [--executor serial|local|ray] [--workers N] [--threads T] [--address ADDR] [--shard-size N]
    table   ID [same options]                                      one table
    figure  ID [same options]                                      one figure (PNG)
    list                                                           tables, methods, datasets, profiles
    score   METHOD DATASET [--data-root DIR] [--weights W] [--limit N] [--dtype D] [--contiguous] [--tile T]
    params  METHOD                                                 parameter counts
    train   METHOD [--rain light|heavy [--seed N] | --sigma N [--grey|--color]] [--profile P] [--data-root DIR]
            [--ship]
            [--device cuda] [--workers N] [--max-seconds S]      (exit 3: stopped at the limit, rerun resumes)
    render  [--profile P] [--check]                                tables + report from stored cells
    runtime METHOD [--size 500] [--device cpu|cuda] [--dtype float32|bfloat16] [--batch N] [--repeats N]
    check   [--data-root DIR] [--reference FILE] [--update]        regression gate
    rain-stats [--data-root DIR]                                   real rain against the presets (table, figure)
    detect  DERAINER DATASET [--rain none|light|heavy|light-real|heavy-real] [--detector NAME] [--detector-weights PATH]
            [--data-root DIR] [--profile P]          car AP of a detector after deraining (JSON line)
    train-detector [--detector NAME] [--profile P] [--max-seconds S]   (exit 3: stopped at the limit)
    table ap                                       the section 5.2 car AP table (clean / rainy / derained)
    export-inputs DATASET DIR [--rain R] [--profile P] [--data-root DIR]   the exact inputs as PNG + manifest.json
    score-outputs DIR DATASET [--name NAME] [--limit N]     score a folder of derained images (JSON line)
    detect-outputs DIR DATASET [--rain R] [--detector NAME] [--name NAME]   detection metrics of a folder (JSON)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmark import artifacts
from benchmark.artifacts import ARTIFACTS, Job, get_artifact
from benchmark.check import run_check
from benchmark.detection import REAL_RAIN_DATASETS, contract, detect_cell
from benchmark.evaluate import evaluate
from benchmark.executor import DEFAULT_EXECUTOR, EXECUTORS, Progress, ResultsLock, make_executor, parallel
from benchmark.inference import EAGER_ENV
from benchmark.outputs import detect_outputs, export_inputs, score_outputs, table_with_outputs
from benchmark.runtime import measure_against_naive, prepare_cpu
from core.layout import RESULTS, report_path
from core.profiles import DEFAULT_PROFILE, PROFILES, get_profile
from core.weights import RAIN_TAGS, denoise_tag, seeded_tag
from datasets.detection import RAINS
from datasets.catalog import data_root_from, open_dataset
from datasets.noisy import refuse_seen_test_set
from detectors.zoo import train_detector_cmd
from models import provider, registry
from models.tiling import Tiled


def cmd_render(job: Job, check: bool) -> int:
    """Re-render every table and the report from the stored cells and timing records, computing
    nothing; with ``check``, exit 1 if any of those files changed (the committed ones are stale)."""
    tdir = job.tables_dir

    def watched() -> list[Path]:
        return sorted([*tdir.glob("*.md"), *tdir.glob("*.csv"), *tdir.glob("*.tex"),
                       report_path(job.results, job.profile.name)])

    before = {p: p.read_bytes() for p in watched() if p.exists()}
    artifacts.render([ARTIFACTS[i] for i in artifacts.ids_of("table", "report")], job)
    changed = [p for p in watched() if p.exists() and before.get(p) != p.read_bytes()]
    for p in changed:
        print(f"{'stale' if check else 'updated'}: {p}")
    if check and changed:
        print(f"error: {len(changed)} rendered file(s) differ from what the stored cells give; run "
              f"`python -m benchmark.run render --profile {job.profile.name}` and commit them", file=sys.stderr)
        return 1
    print(f"{len(watched())} files checked, {len(changed)} changed")
    return 0


def cmd_score(method: str, dataset: str, data_root_arg, weights, limit, profile_name: str, progress=True,
              dtype: str = "float32", channels_last: bool = True, tile: int | None = None, halo: int = 64,
              compile: bool = False) -> int:
    profile = get_profile(profile_name)
    data_root = data_root_from(data_root_arg)
    ds = open_dataset(dataset, data_root, size=profile.embedded_size, seed=profile.seed, limit=limit)
    if weights is None:  # the model the tables run on this dataset (Table 2's cell for Rain100L)
        weights = registry.weights_for(method, ds.name)
    net, winfo = registry.load(method, weights, profile.name, data_root)
    refuse_seen_test_set(dataset, weights, winfo)
    if tile:
        net = Tiled(net, tile, halo)
    t0 = time.perf_counter()
    path = "compiled" if compile else "auto"  # --eager reaches the path through RESGUIDE_EAGER (main)
    res = evaluate(net, ds, progress=progress, desc=f"{method} on {ds.name}", dtype=dtype, channels_last=channels_last,
                   path=path, method=method)
    desc = ds.describe()
    line = {"method": method, "dataset": ds.name, "n_images": res["n_images"], **res["metrics"],
            "weights": winfo, "seconds": round(time.perf_counter() - t0, 3),
            "dataset_version": desc.get("version"), "dataset_known": desc.get("known"),
            "dataset_fingerprint": desc.get("fingerprint"), "profile": profile.name,
            "dtype": dtype, "channels_last": channels_last, "inference": res["inference"], "tile": tile,
            "halo": halo if tile else None}
    print(json.dumps(line))
    return 0


def cmd_params(method: str) -> int:
    counts = artifacts.parameter_counts([method])
    if method not in counts:
        registry.get(method)  # raises with the list of registered names
    print(json.dumps({"method": method, **counts[method]}))
    return 0


def cmd_train(method: str, rain: str | None, profile_name: str, data_root_arg, ship: bool, progress=True,
              device: str = "cpu", workers: int = 0, max_seconds: float | None = None,
              sigma: int | None = None, colour: bool | None = None, seed: int | None = None) -> int:
    """Train (or resume training) a method the suite trains itself; ``--ship`` copies the weights
    and their record into results/weights/ for committing.

    A derainer trains for ``rain`` (default light); a denoiser (Table 5) for noise level ``sigma``
    (0-255 scale), grey or ``colour`` (default: the method's own channels, grey for resguidenet).
    ``seed`` (derainers) trains a repeat with that seed in place of the profile's: weights tag
    ``RAIN-seedN``."""
    profile = get_profile(profile_name)
    spec = registry.get(method)
    family = getattr(spec.factory, "family", None)
    if family is None:
        raise ValueError(f"method {method!r} is not trained by the suite")
    tasks = getattr(spec.factory, "tasks", ("derain",))
    if sigma is None:
        if colour is not None:
            raise ValueError("--grey/--color choose a denoiser's channels; they need --sigma")
        if "derain" not in tasks:
            raise ValueError(f"{method} is a denoiser: train it with --sigma N (noise level on the 0-255 scale), "
                             "not --rain")
        rain = rain or "light"
        if rain not in RAIN_TAGS:
            raise ValueError(f"unknown rain {rain!r} for --rain; the suite trains derainers for: "
                             f"{', '.join(RAIN_TAGS)}")
        tag = seeded_tag(rain, None if seed == profile.seed else seed)  # the profile's seed: the plain tag
    else:
        if seed is not None:
            raise ValueError("--seed trains a derainer's repeat (with --rain); denoisers train with their "
                             "profile's seed")
        if "denoise" not in tasks:
            can = sorted(m for m in registry.names()
                         if m == getattr(registry.get(m).factory, "family", None)
                         and "denoise" in getattr(registry.get(m).factory, "tasks", ()))
            raise ValueError(f"{method} is trained for deraining only (--rain); --sigma is for the denoisers "
                             f"the suite trains: {', '.join(can)}")
        if not 1 <= sigma <= 255:
            raise ValueError(f"--sigma must be in 1..255 (0-255 scale), got {sigma}")
        fixed = getattr(spec.factory, "channels", None)
        if colour is None:
            colour = fixed == 3
        elif fixed is not None and (3 if colour else 1) != fixed:
            raise ValueError(f"{method} is {'colour' if fixed == 3 else 'grayscale'} only; for "
                             f"{'--color' if colour else '--grey'} train {'dncnn_color' if colour else 'dncnn'}")
        tag = denoise_tag(sigma, colour)
    path = provider.find(family, tag, profile_name)
    if path is not None:  # a changed schedule does not retrain on its own: say which file stands
        print(f"{method} ({tag}, {profile_name}) is already trained: {path}; nothing trained. To train it again, "
              f"move that file and its .json away (a run's checkpoint in {provider.CACHE_DIR} resumes it).",
              file=sys.stderr)
    else:
        try:
            with provider.train_options(device, workers, max_seconds, progress):
                registry.load(method, tag, profile_name, data_root_from(data_root_arg))
        except provider.TrainingIncomplete as exc:
            print(f"incomplete: {exc}", file=sys.stderr)
            if ship:
                print(f"committed run checkpoint: {provider.ship_checkpoint(family, tag, profile_name)}",
                      file=sys.stderr)
            return 3
        path = provider.find(family, tag, profile_name)
    if ship and path.parent != provider.WEIGHTS_DIR:
        path = provider.ship(family, tag, profile_name)
    record = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() else {}
    print(json.dumps({"method": method, "family": family, "rain": rain if sigma is None else None, "sigma": sigma,
                      "colour": colour, "seed": seed, "tag": tag, "profile": profile_name,
                      "weights": str(path), "seconds": record.get("seconds"),
                      "iterations": record.get("iterations"), "final_loss": record.get("final_loss")}))
    return 0


def _at_least(low: int):
    """An argparse type: an integer no smaller than ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmark.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES))
        p.add_argument("--data-root", default=None, help="folder holding real datasets (else $RESGUIDE_DATA)")
        p.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)
        p.add_argument("--no-progress", dest="progress", action="store_false")
        p.add_argument("--eager", action="store_true",
                       help="derain on the eager path (no compilation), for debugging and comparison")

    def scale(p):
        p.add_argument("--executor", default=DEFAULT_EXECUTOR, choices=EXECUTORS,
                       help="where the cells' images run: serial (this process), local (a process pool; the "
                            "default) or ray (a Ray cluster, pip install '.[ray]')")
        p.add_argument("--workers", type=_at_least(1), default=None,
                       help="local / ray: worker processes (default: the CPU count over --threads)")
        p.add_argument("--threads", type=_at_least(1), default=None,
                       help="torch threads per task (default 1 in local / ray workers; serial: torch's default)")
        p.add_argument("--address", default=None, help="ray: the cluster's address (default: start one here)")
        p.add_argument("--shard-size", type=_at_least(1), default=None,
                       help="images per shard (default: about 4 shards per worker and cell)")

    def batch(p):
        scale(p)
        p.add_argument("--force", action="store_true", help="recompute fresh cells too")
        p.add_argument("--dry-run", action="store_true", help="list the cells and their state; compute nothing")
        p.add_argument("--train-missing", action="store_true",
                       help="train weights that do not exist yet (else their cells are skipped)")

    p = sub.add_parser("all", help="compute every table")
    common(p)
    batch(p)
    p = sub.add_parser("table", help="compute one table")
    p.add_argument("table_id", metavar="ID", help=", ".join(artifacts.ids_of("table")))
    p.add_argument("--with", dest="with_outputs", action="append", default=[], metavar="NAME",
                   help="also write the table with a column of your score-outputs results named NAME "
                        "(to results/cache/tables/; the committed table is left as it is)")
    common(p)
    batch(p)
    p = sub.add_parser("figure", help="compute one figure: results/figures/ID.png")
    p.add_argument("figure_id", metavar="ID", help=", ".join(artifacts.ids_of("figure", "picture")))
    common(p)
    batch(p)
    sub.add_parser("list", help="tables, figures, methods, datasets, profiles")
    p = sub.add_parser("score", help="score one method on one dataset; last stdout line is JSON")
    p.add_argument("method")
    p.add_argument("dataset", help="registered name, embedded-light/embedded-heavy, or a folder of pairs")
    common(p)
    p.add_argument("--weights", default=None, help="weights tag or checkpoint path")
    p.add_argument("--limit", type=int, default=None, help="first N pairs only")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="bfloat16 runs under CPU autocast (a fast path; the cells use float32)")
    p.add_argument("--contiguous", dest="channels_last", action="store_false",
                   help="NCHW memory format instead of the default channels-last (same numbers, slower)")
    p.add_argument("--compile", action="store_true",
                   help="compile the model (weight freezing) even where the image count does not pay for it")
    p.add_argument("--tile", type=_at_least(16), default=None,
                   help="run the model on TILE x TILE blocks, TILE >= 16 (bounded memory)")
    p.add_argument("--halo", type=_at_least(0), default=64, help="context pixels around each tile (default 64)")
    p = sub.add_parser("params", help="parameter counts of a method (JSON)")
    p.add_argument("method")
    p = sub.add_parser("train", help="train a method the suite trains (resumes); --ship to results/weights")
    p.add_argument("method")
    task = p.add_mutually_exclusive_group()
    task.add_argument("--rain", default=None, help="derainers: rain type of the training data: light (default), "
                      "heavy, ...")
    p.add_argument("--seed", type=_at_least(0), default=None,
                   help="derainers: train a repeat with this seed in place of the profile's (weights tag "
                        "RAIN-seedN, e.g. --weights heavy-seed1)")
    task.add_argument("--sigma", type=int, default=None,
                      help="denoisers (Table 5): Gaussian noise level on the 0-255 scale, e.g. 10, 30, 70")
    chans = p.add_mutually_exclusive_group()
    chans.add_argument("--grey", "--gray", dest="colour", action="store_const", const=False, default=None,
                       help="with --sigma: a grayscale denoiser (default for resguidenet and dncnn)")
    chans.add_argument("--color", "--colour", dest="colour", action="store_const", const=True,
                       help="with --sigma: a colour denoiser (dncnn_color is colour only)")
    common(p)
    p.add_argument("--ship", action="store_true", help="copy the weights and their record into results/weights/")
    p.add_argument("--device", default="cpu", help="where the training steps run: cpu (default), cuda, cuda:1")
    p.add_argument("--workers", type=int, default=0, help="processes making the batches ahead (same batches)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop after this much wall time with a checkpoint; the same command resumes (exit 3)")
    p = sub.add_parser("render", help="re-render tables and the report from stored cells (computes nothing)")
    p.add_argument("--profile", default=DEFAULT_PROFILE, choices=list(PROFILES))
    p.add_argument("--check", action="store_true", help="exit 1 if the committed files differ from the cells")
    p.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    p = sub.add_parser("runtime", help="running time of one method (JSON line)")
    p.add_argument("method")
    p.add_argument("--size", type=int, default=500, help="image side in pixels (default 500, as Table 4)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--eager", action="store_true",
                   help="time the eager channels-last path instead of the compiled one the cells use")
    p = sub.add_parser("check", help="regression gate: recompute smoke cells and compare with the reference")
    p.add_argument("--data-root", default=None)
    p.add_argument("--reference", type=Path, default=None, help="reference JSON (default results/reference/smoke.json)")
    p.add_argument("--update", action="store_true", help="write the current values as the new reference")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p = sub.add_parser("rain-stats", help="the look of real and synthetic rain side by side (table and figure)")
    p.add_argument("--data-root", default=None, help="holds train/RainTrainH-sample18 (else $RESGUIDE_DATA)")
    p.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    p = sub.add_parser("detect", help="car AP of a detector on rainy frames after a derainer (JSON line)")
    p.add_argument("derainer", help="a registered method, or none / identity (no deraining)")
    p.add_argument("dataset", help="roads (embedded road scenes), KITTI (under the data root), a KITTI folder "
                   "(image_2/, label_2/) or a COCO .json of labelled images (e.g. real rain: use --rain none)")
    p.add_argument("--rain", default=None, choices=list(RAINS),
                   help="rain rendered over the frames (default light; none for DAWN, whose photographs are rainy)")
    p.add_argument("--detector", default=None, help="torchvision detector name (default fasterrcnn_tiny_fpn)")
    p.add_argument("--detector-weights", default=None, help="local detector checkpoint (else the trained one)")
    p.add_argument("--detector-config", default=None, metavar="CFG",
                   help="an mmdet config (.py): use the mmdet back end with --detector-weights as its checkpoint "
                        "(needs pip install .[mmdet])")
    p.add_argument("--weights", default=None, help="derainer weights tag or path (default: matches the rain)")
    p.add_argument("--force", action="store_true", help="recompute a fresh cell too")
    scale(p)
    common(p)
    p = sub.add_parser("train-detector", help="train the detection study's detector on the road scenes (resumes)")
    p.add_argument("--detector", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--train-data", default=None, metavar="DIR",
                   help="a KITTI-layout folder (image_2/, label_2/) of clean training frames instead of the road scenes")
    p.add_argument("--init", default=None, metavar="CKPT",
                   help="with --train-data: fine-tune from this local checkpoint (e.g. torchvision's COCO .pth)")
    p.add_argument("--min-size", type=int, default=None, help="resize limit, short side (KITTI: 375)")
    p.add_argument("--max-size", type=int, default=None, help="resize limit, long side (KITTI: 1242)")
    p.add_argument("--iterations", type=int, default=None, help="training steps (default: the profile's)")
    p.add_argument("--out", default=None, metavar="PATH", help="with --train-data: where the weights go")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop after this much wall time with a checkpoint; the same command resumes (exit 3)")
    common(p)
    p = sub.add_parser("export-inputs", help="write a dataset's exact inputs as PNG files and manifest.json")
    p.add_argument("dataset", help="a paired set (embedded-light, Rain100L, a folder of pairs) or a detection set "
                   "(roads, KITTI, DAWN)")
    p.add_argument("dir", type=Path, metavar="DIR", help="where the PNG files go (created; extra files refused)")
    p.add_argument("--rain", default=None, choices=list(RAINS),
                   help="detection sets: the rain over the frames (default light; none for DAWN)")
    common(p)
    p = sub.add_parser("score-outputs", help="score a folder of derained images against a paired set (JSON line)")
    p.add_argument("dir", type=Path, metavar="DIR", help="one output per input: <image name>.png, the input's size")
    p.add_argument("dataset", help="the paired set the outputs were made from")
    p.add_argument("--name", default=None, help="the derainer's name in the results (default: DIR's name)")
    p.add_argument("--limit", type=_at_least(1), default=None, help="first N images only (their outputs)")
    common(p)
    p = sub.add_parser("detect-outputs", help="detection metrics of a folder of derained frames (JSON line)")
    p.add_argument("dir", type=Path, metavar="DIR", help="one output per frame: <frame id>.png, the frame's size")
    p.add_argument("dataset", help="roads, KITTI, DAWN, a KITTI folder or a COCO .json")
    p.add_argument("--rain", default=None, choices=list(RAINS),
                   help="the rain the frames were exported with (default light; none for DAWN)")
    p.add_argument("--detector", default=None, help="detector name (default fasterrcnn_tiny_fpn)")
    p.add_argument("--detector-weights", default=None, help="local detector checkpoint (else the trained one)")
    p.add_argument("--name", default=None, help="the derainer's name in the results (default: DIR's name)")
    common(p)
    return ap


def cmd_rain_stats(job: Job) -> int:
    """The ``rain_look`` artifact (figure and table), then the table on standard output."""
    if job.data_root is None:
        raise ValueError("rain-stats measures the real training pairs: pass --data-root or set RESGUIDE_DATA "
                         "(expected <root>/train/RainTrainH-sample18)")
    code = artifacts.run(["rain_look"], job)
    print((job.tables_dir / "rain_stats.md").read_text(encoding="utf-8"), end="")
    return code


def cmd_detect(args) -> int:
    """One detection cell; prints its summary as one JSON line (exit 2 when skipped or failed)."""
    get_profile(args.profile)
    ex = make_executor(args.executor, args.workers, args.threads, args.address)
    bar = Progress(args.progress and parallel(ex), unit="frame", desc="frames")
    try:
        rain = args.rain or ("none" if args.dataset.lower() in REAL_RAIN_DATASETS else "light")
        cell = detect_cell(args.derainer, args.dataset, rain, args.detector, profile=args.profile,
                           data_root=data_root_from(args.data_root), detector_weights=args.detector_weights,
                           derainer_weights=args.weights, results=args.results, force=args.force,
                           progress=args.progress, detector_config=args.detector_config, executor=ex,
                           progress_bar=bar)
    finally:
        bar.close()
        ex.close()
    print(json.dumps(contract(cell)))
    if cell["status"] != "ok":
        if cell["status"] == "skipped":  # a failed cell was reported when it failed
            print(f"error: skipped: {cell.get('error')}", file=sys.stderr)
        return 2
    return 0


def cmd_train_detector(args) -> int:
    get_profile(args.profile)
    res = train_detector_cmd(args.detector, args.profile, data_root_from(args.data_root), args.max_seconds,
                             args.progress, args.device, train_data=args.train_data, init=args.init,
                             min_size=args.min_size, max_size=args.max_size, iterations=args.iterations,
                             out_path=args.out)
    print(json.dumps(res, default=str))
    return 0 if res["complete"] else 3


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    before = os.environ.get(EAGER_ENV)
    if getattr(args, "eager", False) and args.command != "runtime":
        os.environ[EAGER_ENV] = "1"  # every derainer of this command, and of its executor's workers
    try:
        return _dispatch(args)
    finally:  # main called in-process (a script, the tests) leaves the environment as it found it
        if before is None:
            os.environ.pop(EAGER_ENV, None)
        else:
            os.environ[EAGER_ENV] = before


def _dispatch(args) -> int:
    prepare_cpu()
    try:
        if args.command in ("all", "table", "figure"):
            if args.command == "all":
                ids = list(ARTIFACTS)
            elif args.command == "table":
                ids = [get_artifact(args.table_id, "table").id]
            else:
                ids = [get_artifact(args.figure_id, "figure", "picture").id]
            job = Job(get_profile(args.profile), data_root_from(args.data_root), args.results, args.force,
                      args.progress, args.train_missing, executor=args.executor, workers=args.workers,
                      threads=args.threads, address=args.address, shard_size=args.shard_size)
            if args.dry_run:
                return artifacts.dry_run([ARTIFACTS[i] for i in ids], job)
            with ResultsLock(args.results):
                rc = artifacts.run(ids, job)
                if args.command == "table" and args.with_outputs:
                    for p in table_with_outputs(ids[0], args.with_outputs, job.store.all(), set(registry.names()),
                                                args.results, job.profile.name):
                        print(f"wrote {p}")
                return rc
        if args.command == "list":
            return artifacts.list_everything()
        if args.command == "score":
            return cmd_score(args.method, args.dataset, args.data_root, args.weights, args.limit, args.profile,
                             args.progress, args.dtype, args.channels_last, args.tile, args.halo, args.compile)
        if args.command == "params":
            return cmd_params(args.method)
        if args.command == "train":
            return cmd_train(args.method, args.rain, args.profile, args.data_root, args.ship, args.progress,
                             args.device, args.workers, args.max_seconds, args.sigma, args.colour,
                             args.seed)
        if args.command == "render":
            return cmd_render(Job(get_profile(args.profile), None, args.results, measure=False), args.check)
        if args.command == "runtime":
            print(json.dumps(measure_against_naive(args.method, args.size, args.device, args.dtype, args.batch,
                                                   args.repeats, args.warmup, eager=args.eager)))
            return 0
        if args.command == "check":
            return run_check(args.data_root, args.reference, args.update, args.progress)
        if args.command == "rain-stats":
            return cmd_rain_stats(Job(get_profile(DEFAULT_PROFILE), data_root_from(args.data_root), args.results,
                                      progress=False))
        if args.command == "detect":
            with ResultsLock(args.results):
                return cmd_detect(args)
        if args.command == "train-detector":
            return cmd_train_detector(args)
        if args.command == "export-inputs":
            manifest = export_inputs(args.dataset, args.dir, args.rain, data_root_from(args.data_root), args.profile,
                                     args.progress)
            print(json.dumps({**{k: v for k, v in manifest.items() if k != "files"},
                              "folder": str(args.dir), "manifest": str(args.dir / "manifest.json")}))
            return 0
        if args.command == "score-outputs":
            print(json.dumps(score_outputs(args.dir, args.dataset, args.name, data_root_from(args.data_root),
                                           args.profile, args.limit, args.results, args.progress)))
            return 0
        if args.command == "detect-outputs":
            with ResultsLock(args.results):  # it may compute the rainy frames' cell
                print(json.dumps(detect_outputs(args.dir, args.dataset, args.rain, args.detector, name=args.name,
                                                data_root=data_root_from(args.data_root), profile=args.profile,
                                                detector_weights=args.detector_weights, results=args.results,
                                                progress=args.progress)))
            return 0
    except (ValueError, LookupError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: every finished cell, figure and checkpoint is saved under "
              f"{getattr(args, 'results', RESULTS)}; run the same command again to resume", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
