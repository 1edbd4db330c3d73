"""Results from a folder of derained images, whatever made them (MATLAB, TensorFlow, JAX, ...).

* :func:`export_inputs` writes the exact inputs the suite's derainers get, as PNG files plus a
  ``manifest.json``: a paired set's rainy images (``<image name>.png``), or a detection set's
  frames with the study's seeded rain over them (``<frame id>.png``; DAWN's photographs as they
  are).
* :func:`score_outputs` scores a folder of derained images against a paired set's clean targets
  under the suite's protocol (:func:`core.metrics.image_metrics`, rounding included).
* :func:`detect_outputs` runs the detection study's detector on a folder of derained frames and
  gives its AP and the paired gain over the rainy frames.

The contract (docs/outputs.md): one output per input, named as the input with the extension
``.png`` (or any of :data:`OUTPUT_EXTENSIONS`, in any letter case; the name before it is
case-sensitive), the input's size.  A missing, extra, doubled, unreadable or wrong-sized output
is a :class:`core.errors.DatasetError` naming the files, never a silent skip; ``manifest.json``,
hidden files and subfolders are ignored.

A result from outputs is a cell of its own, kind ``outputs``, stored under
``<results>/cache/cells/<profile>/outputs/`` (never beside the suite's cells) and reused while
its fingerprint (the outputs' hash, the dataset's fingerprint, the protocol) is unchanged.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from benchmark.derained import save_frame
from benchmark.detection import (CI_METRICS, REAL_RAIN_DATASETS, _metrics, _round_dets, cell_detections, detect_batch,
                                 detect_cell, vehicle_entry, wants_vehicles)
from benchmark.evaluate import summarize
from benchmark.inference import to_tensor
from benchmark.tables import TABLES, Column, write_table
from core.errors import DatasetError
from core.files import atomic_write_text
from core.layout import RESULTS
from core.metrics import PROTOCOL, image_metrics
from core.profiles import detection_profile, get_profile
from core.store import Store, StoredKey, code_version, file_safe, fingerprint, stamp
from datasets.catalog import open_dataset
from datasets.detection import RAINS, detection_dataset, rainy
from datasets.images import read_image
from datasets.noisy import to_grey
from detectors.bootstrap import paired_bootstrap_ci
from detectors.torchvision_det import DEFAULT_DETECTOR
from detectors.zoo import get_detector

__all__ = ["OUTPUT_EXTENSIONS", "MANIFEST", "export_inputs", "score_outputs", "detect_outputs", "match_outputs",
           "outputs_sha256", "is_detection_set"]

#: extensions an output may have (any letter case); the part before must be the input's name exactly
OUTPUT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: the file export-inputs writes beside the images; ignored when a folder is scored
MANIFEST = "manifest.json"
OUTPUTS_FORMAT = 1
#: the detection datasets by name (a KITTI-layout folder or a COCO .json file is one too)
DETECTION_SETS = ("roads", "kitti", "dawn")
_SHOWN = 8  # file names listed in one error message
_ORDER = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")  # the order score prints


def is_detection_set(name: str) -> bool:
    """Whether ``name`` is a detection set (roads, KITTI, DAWN, a KITTI folder, a COCO file)."""
    path = Path(name)
    return (name.lower() in DETECTION_SETS or (name.lower().endswith(".json") and path.is_file())
            or (path.is_dir() and (path / "image_2").is_dir()))


def _names(items) -> str:
    items = list(items)
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def _store(results, profile: str) -> Store:
    return Store(Path(RESULTS if results is None else results) / "cache" / "cells" / profile / "outputs")


def _cell_id(*parts: str) -> str:
    return file_safe("__".join(("outputs",) + parts))


def _detection_rain(dataset: str, rain: str | None) -> str:
    rain = rain or ("none" if dataset.lower() in REAL_RAIN_DATASETS else "light")
    if rain not in RAINS:
        raise ValueError(f"rain must be one of {', '.join(RAINS)}, got {rain!r}")
    if dataset.lower() in REAL_RAIN_DATASETS and rain != "none":
        raise ValueError(f"{dataset}'s photographs are already rainy: use --rain none, not {rain!r}")
    return rain


def _image_names(ds) -> list[str]:
    """A paired set's image names in its order, without decoding a folder's images."""
    if hasattr(ds, "pairs"):
        return [p.name for p in ds.pairs]
    if hasattr(ds, "files"):
        return [f.stem for f in ds.files]
    return [n for n, _, _ in ds]


def _paired(dataset: str, data_root, profile: str, limit: int | None = None):
    if is_detection_set(dataset):
        raise ValueError(f"{dataset} is a detection set with no clean targets to score against: use detect-outputs")
    prof = get_profile(profile)
    return open_dataset(dataset, data_root, size=prof.embedded_size, seed=prof.seed, limit=limit)


# --------------------------------------------------------------------------
# export


def _check_target(folder: Path, identity: tuple) -> None:
    """Export only into an empty folder, or over an unchanged earlier export of the same inputs
    (its manifest's dataset fingerprint, rain and seed; every file as the manifest records it)."""
    present = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")) \
        if folder.is_dir() else []
    if not present:
        return
    try:
        old = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        recorded = {f["file"]: f["sha256"] for f in old["files"]}
        same = (old["dataset_fingerprint"], old["rain"], old["seed"]) == identity
    except (OSError, ValueError, KeyError, TypeError):
        same, recorded = False, {}
    if not same:
        raise DatasetError(f"{folder} is not empty ({_names(present)}) and holds no earlier export of these inputs; "
                           "export into an empty folder")
    changed = [n for n in present if n != MANIFEST and recorded.get(n) != hashlib.sha256(
        (folder / n).read_bytes()).hexdigest()]
    if changed:
        raise DatasetError(f"{folder}: files added or changed since the export, not overwritten: {_names(changed)}; "
                           "export into an empty folder")


def export_inputs(dataset: str, folder, rain: str | None = None, data_root: Path | None = None,
                  profile: str = "quick", progress: bool = False) -> dict:
    """Write the exact inputs of ``dataset`` into ``folder`` as PNG files, then ``manifest.json``;
    returns the manifest.  A file already in ``folder`` that the export would not write is an error
    (a folder to score must hold exactly one output per input)."""
    folder = Path(folder)
    prof = get_profile(profile)
    if is_detection_set(dataset):
        rain = _detection_rain(dataset, rain)
        ds = detection_dataset(dataset, data_root, prof.name)
        names, ds_name, kind, ds_fp = list(ds.ids), ds.name, "detection", ds.info["fingerprint"]

        def images():
            for i, image_id in enumerate(ds.ids):
                yield image_id, rainy([ds.image(i)], rain, prof.seed, ids=[image_id])[0]
    else:
        if rain is not None:
            raise ValueError(f"--rain is for the detection sets; {dataset} is a paired set whose rainy images are "
                             "its own")
        ds = _paired(dataset, data_root, prof.name)
        if getattr(ds, "task", None) == "denoise":
            raise ValueError(f"{dataset}: a denoising set's inputs are unclipped float images, which no 8-bit image "
                             "file holds exactly; export-inputs writes the deraining and detection sets")
        desc = ds.describe()
        names, ds_name, kind, ds_fp = None, ds.name, "paired", desc.get("fingerprint")
        rain = desc.get("rain")

        def images():
            for name, rainy_img, _ in ds:
                yield name, rainy_img
    names = _image_names(ds) if names is None else names
    bad = [n for n in names if not n or "/" in n or "\\" in n or n.startswith(".")]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if bad or doubled:
        raise DatasetError(f"{dataset}: image names that cannot be file names: {_names(bad + doubled)}")
    _check_target(folder, (ds_fp, rain, prof.seed))
    files = []
    for name, img in tqdm(images(), total=len(names), disable=not progress, desc=f"exporting {ds_name}"):
        img = np.asarray(img)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise DatasetError(f"{dataset}: input {name} is {img.dtype} {img.shape}, not uint8 RGB")
        path = folder / f"{name}.png"
        save_frame(path, img)
        data = path.read_bytes()
        files.append({"image": name, "file": path.name, "width": int(img.shape[1]), "height": int(img.shape[0]),
                      "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"format": OUTPUTS_FORMAT, "kind": kind, "dataset": ds_name, "dataset_request": dataset,
                "dataset_fingerprint": ds_fp, "rain": rain, "seed": prof.seed, "profile": prof.name,
                "suite_version": code_version(), "n_images": len(files),
                "contract": "write one derained image per file here, same name (e.g. <image>.png), same size, "
                            "8-bit RGB; see docs/outputs.md",
                "files": files}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


# --------------------------------------------------------------------------
# matching and reading outputs


def match_outputs(folder, names, scored=None) -> dict[str, Path]:
    """``{image name: output file}`` for the names in ``scored`` (default: all ``names``).

    A file matches an image when its name is ``<image name><ext>`` with ``ext`` one of
    :data:`OUTPUT_EXTENSIONS` (any letter case), the image name exact (case-sensitive).  Raises
    DatasetError naming every missing output, every file that matches no image of ``names``,
    and every image with more than one output."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder of outputs")
    names = list(names)
    scored = names if scored is None else list(scored)
    known, lower = set(names), {n.lower(): n for n in names}
    found: dict[str, list[str]] = {}
    extra = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.name == MANIFEST:
            continue
        if p.suffix.lower() in OUTPUT_EXTENSIONS and p.stem in known:
            found.setdefault(p.stem, []).append(p.name)
        elif p.suffix.lower() in OUTPUT_EXTENSIONS and p.stem.lower() in lower:
            extra.append(f"{p.name} (names are case-sensitive: expected {lower[p.stem.lower()]}{p.suffix})")
        else:
            extra.append(p.name)
    problems = []
    missing = [f"{n}.png" for n in scored if n not in found]
    if missing:
        problems.append(f"{len(missing)} output(s) missing: {_names(missing)}")
    if extra:
        problems.append(f"{len(extra)} file(s) match no image of the dataset: {_names(extra)} (an output is named "
                        f"as its input, e.g. {names[0] if names else 'IMAGE'}.png)")
    doubled = [" and ".join(v) for k, v in found.items() if len(v) > 1]
    if doubled:
        problems.append(f"more than one output for an image: {_names(doubled)}")
    if problems:
        raise DatasetError(f"{folder}: " + "; ".join(problems))
    return {n: folder / found[n][0] for n in scored}


def outputs_sha256(paths: dict[str, Path]) -> str:
    """One hash of the output files: their names and contents, in image-name order."""
    h = hashlib.sha256()
    for name in sorted(paths):
        h.update(f"{paths[name].name}\x00{hashlib.sha256(paths[name].read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def _read_output(path: Path, shape: tuple) -> np.ndarray:
    """An output as uint8 of ``shape`` (H, W, 3 or 1); DatasetError naming the file otherwise."""
    img = read_image(path)  # uint8 RGB; names the file when it cannot be decoded
    if len(shape) == 3 and shape[2] == 1:
        img = to_grey(img)
    if img.shape[:2] != tuple(shape[:2]):
        raise DatasetError(f"{path.name}: {img.shape[1]}x{img.shape[0]}, but its input is {shape[1]}x{shape[0]} "
                           "(width x height)")
    return img


def _raise_problems(folder: Path, problems: list[str]) -> None:
    if problems:
        raise DatasetError(f"{folder}: {len(problems)} output(s) cannot be scored: " + "; ".join(problems[:_SHOWN])
                           + (f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""))


# --------------------------------------------------------------------------
# score-outputs


def score_outputs(folder, dataset: str, name: str | None = None, data_root: Path | None = None,
                  profile: str = "quick", limit: int | None = None, results=None, progress: bool = False) -> dict:
    """Score the derained images in ``folder`` against ``dataset``'s clean targets; returns the
    ``score``-style line (``method`` = ``name``, default the folder's name) with ``outputs_sha256``,
    the stored cell's path and whether it was ``reused``.  With ``limit``, the first N images are
    scored and outputs of the others are not read."""
    folder = Path(folder)
    prof = get_profile(profile)
    name = name or folder.resolve().name
    ds = _paired(dataset, data_root, prof.name, limit)
    scored = _image_names(ds)
    paths = match_outputs(folder, scored if limit is None else _image_names(_paired(dataset, data_root, prof.name)),
                          scored)
    sha = outputs_sha256(paths)
    desc = ds.describe()
    measure = getattr(ds, "metrics", None)
    protocol = PROTOCOL if measure is None else {"metrics": f"{type(ds).__name__}.metrics"}
    measure = measure or image_metrics
    fp = fingerprint({"format": OUTPUTS_FORMAT, "command": "score", "outputs": sha,
                      "dataset": desc.get("fingerprint"), "n_images": len(ds), "protocol": protocol})
    store = _store(results, prof.name)
    key = StoredKey(_cell_id("score", name, ds.name))
    cell = store.load(key)
    reused = bool(cell and cell.get("status") == "ok" and cell.get("fingerprint") == fp)
    if not reused:
        t0 = time.perf_counter()
        per_image, problems = [], []
        for image, _, clean in tqdm(ds, total=len(ds), disable=not progress, desc=f"{name} on {ds.name}"):
            try:
                out = _read_output(paths[image], clean.shape)
            except DatasetError as exc:
                problems.append(str(exc))
                continue
            if not problems:  # once one is bad, the rest are only checked
                per_image.append({"image": image, **measure(out, clean)})
        _raise_problems(folder, problems)
        res = summarize(per_image, time.perf_counter() - t0, ds.name)
        cell = stamp({"format": OUTPUTS_FORMAT, "id": key.id, "kind": "outputs", "command": "score",
                       "status": "ok", "name": name, "dataset": ds.name, "dataset_request": dataset,
                       "profile": prof.name, "seed": prof.seed, "limit": limit, "metrics": res["metrics"],
                       "per_image": res["per_image"], "n_images": res["n_images"], "seconds": res["seconds"],
                       "outputs": str(folder.resolve()), "outputs_sha256": sha,
                       "files": {k: p.name for k, p in paths.items()}, "dataset_info": desc, "protocol": protocol,
                       "fingerprint": fp})
        store.save(cell)
    metrics = dict(sorted(cell["metrics"].items(), key=lambda kv: (kv[0] not in _ORDER, _ORDER.index(kv[0])
                                                                   if kv[0] in _ORDER else kv[0])))
    return {"method": name, "name": name, "dataset": ds.name, "n_images": cell["n_images"], **metrics,
            "seconds": round(cell["seconds"], 3), "dataset_version": desc.get("version"),
            "dataset_known": desc.get("known"), "dataset_fingerprint": desc.get("fingerprint"),
            "profile": prof.name, "outputs_sha256": sha, "cell": str(store.path(key)), "reused": reused}


# --------------------------------------------------------------------------
# detect-outputs


def detect_outputs(folder, dataset: str, rain: str | None = None, detector: str | None = None, *,
                   name: str | None = None, data_root: Path | None = None, profile: str = "quick",
                   detector_weights=None, results=None, progress: bool = False, batch: int = 4) -> dict:
    """The detection study's metrics for the derained frames in ``folder`` (frames of ``dataset``
    with ``rain``, as export-inputs writes them), and the paired gain over the rainy frames'
    cell (:func:`benchmark.detection.detect_cell` with no derainer, computed or reused): AP40
    Moderate on KITTI-style sets, COCO AP50 on DAWN.  Returns the JSON line."""
    folder = Path(folder)
    if not is_detection_set(dataset):
        raise ValueError(f"{dataset} is not a detection set (roads, KITTI, DAWN, a KITTI folder or a COCO .json): "
                         "score a paired set's outputs with score-outputs")
    prof, det_prof = detection_profile(profile)
    rain = _detection_rain(dataset, rain)
    detector = detector or DEFAULT_DETECTOR
    name = name or folder.resolve().name
    n_boot = det_prof["n_boot"]
    kitti_levels = dataset.lower() not in REAL_RAIN_DATASETS
    gain_metric = "ap40_moderate" if kitti_levels else "coco_ap50"
    ds = detection_dataset(dataset, data_root, prof.name)
    paths = match_outputs(folder, ds.ids)
    sha = outputs_sha256(paths)
    det = get_detector(detector, detector_weights, prof.name, data_root)
    ident = det.meta["identity"]
    fp = fingerprint({"format": OUTPUTS_FORMAT, "command": "detect", "outputs": sha, "dataset": ds.info["fingerprint"],
                      "n_images": len(ds), "rain": rain, "seed": prof.seed, "n_boot": n_boot,
                      "detector": ident["sha256"], "detector_name": detector,
                      "detector_size": [det.meta["min_size"], det.meta["max_size"]], "gain_metric": gain_metric,
                      "vehicle": wants_vehicles(det, dataset)})
    store = _store(results, prof.name)
    key = StoredKey(_cell_id("detect", detector, name, ds.name, rain))
    cell = store.load(key)
    reused = bool(cell and cell.get("status") == "ok" and cell.get("fingerprint") == fp)
    if not reused:
        base = detect_cell("none", dataset, rain, detector, profile=prof.name, data_root=data_root,
                           detector_weights=detector_weights, results=results, progress=progress)
        if base.get("status") != "ok":
            raise ValueError(f"the rainy frames' cell {base['id']} is {base.get('status')}: {base.get('error')}")
        if [p["id"] for p in base["per_image"]] != list(ds.ids):
            raise ValueError(f"the rainy frames' cell {base['id']} covers other frames than {ds.name} has now")
        t0 = time.perf_counter()
        dets, vrows, pending, problems = [], [], [], []
        vehicles = wants_vehicles(det, dataset)

        def flush():
            cars, rows = detect_batch(det, pending, vehicles)
            dets.extend(cars)
            vrows.extend(rows)
            pending.clear()

        for i in tqdm(range(len(ds)), disable=not progress, desc=f"{name} on {ds.name} ({rain})"):
            try:
                img = _read_output(paths[ds.ids[i]], ds.image(i).shape)
            except DatasetError as exc:
                problems.append(str(exc))
                continue
            if problems:
                continue
            pending.append(to_tensor(img)[0])
            if len(pending) >= batch:  # the batches of detect_cell: the same detections
                flush()
        _raise_problems(folder, problems)
        if pending:
            flush()
        scored = _metrics(ds.gts, dets, n_boot, prof.seed, kitti_levels)
        if not kitti_levels:
            scored["vehicle"] = vehicle_entry(ds.gts, vrows, vehicles, detector, n_boot, prof.seed)
        gts, rainy_dets = cell_detections(base)
        gain = scored["metrics"][gain_metric] - base["metrics"][gain_metric]
        gain_ci = list(paired_bootstrap_ci(CI_METRICS[gain_metric], gts, rainy_dets, dets, n=n_boot, seed=prof.seed))
        cell = stamp({"format": OUTPUTS_FORMAT, "id": key.id, "kind": "outputs", "command": "detect",
                       "status": "ok", "name": name, "dataset": ds.name, "dataset_request": dataset, "rain": rain,
                       "detector": detector, "detector_weights": ident, "profile": prof.name, "seed": prof.seed,
                       "n_boot": n_boot, **scored, "gain_metric": gain_metric, "gain": gain, "gain_ci": gain_ci,
                       "rainy_cell": base["id"], "rainy_metrics": base["metrics"], "n_images": len(ds),
                       "n_objects": ds.n_objects, "seconds": time.perf_counter() - t0,
                       "outputs": str(folder.resolve()), "outputs_sha256": sha, "dataset_info": ds.info,
                       "fingerprint": fp,
                       "per_image": [{"id": i, "dets": _round_dets(d),
                                      **({"vehicle_dets": vrows[k]} if vehicles else {})}
                                     for k, (i, d) in enumerate(zip(ds.ids, dets))]})
        store.save(cell)
    return {"name": name, "dataset": cell["dataset"], "rain": rain, "detector": detector, "profile": prof.name,
            "metrics": cell["metrics"], "ci": cell["ci"], "gain_metric": gain_metric, "gain": cell["gain"],
            "gain_ci": cell["gain_ci"], "rainy_cell": cell["rainy_cell"],
            "rainy": {gain_metric: cell["rainy_metrics"][gain_metric]}, "n_images": cell["n_images"],
            "n_objects": cell["n_objects"], "outputs_sha256": sha, "seconds": round(cell["seconds"], 3),
            "cell": str(store.path(key)), "reused": reused,
            **({"vehicle": cell["vehicle"]} if "vehicle" in cell else {})}


# --------------------------------------------------------------------------
# a table with outputs beside the suite's columns


def table_with_outputs(table_id: str, names: list[str], cells: dict, registered: set, results=None,
                       profile: str = "quick") -> list[Path]:
    """``table ID --with NAME``: the table ``table_id`` with one more column per ``names``, the
    ``score-outputs`` cells of that name on the table's rows, written as ``ID-with-NAME.{md,csv,tex}``
    under ``results/cache/tables/<profile>/``: the committed table never shows a user's outputs."""
    if table_id not in TABLES:
        raise DatasetError(f"--with adds columns to the PSNR/SSIM tables ({', '.join(TABLES)}), not to "
                           f"{table_id}; detect-outputs prints its own AP and gain")
    spec, store = TABLES[table_id], _store(results, profile)
    merged, extra = dict(cells), []
    for name in names:
        col = Column(f"outputs:{name}", f"{name} (outputs)")
        found = {row: store.load(StoredKey(_cell_id("score", name, row))) for row in spec.rows}
        found = {row: cell for row, cell in found.items() if cell and cell.get("status") == "ok"}
        if not found:
            raise DatasetError(f"no score-outputs result named {name!r} on a row of {spec.id} "
                               f"({', '.join(spec.rows)}): run `python -m benchmark.run score-outputs DIR DATASET "
                               f"--name {name}` first")
        merged.update({spec.key(row, col).id: {**cell, "method": col.method} for row, cell in found.items()})
        extra.append(col)
    wider = dataclasses.replace(spec, id=f"{spec.id}-with-{'-'.join(names)}", columns=spec.columns + tuple(extra))
    out = Path(RESULTS if results is None else results) / "cache" / "tables" / profile
    return write_table(wider, merged, set(registered) | {c.method for c in extra}, out)
