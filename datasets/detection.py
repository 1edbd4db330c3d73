"""Frames with car labels for the detection study, and the study's rain over them.

* ``"roads"``: the embedded road scenes (:mod:`datasets.roads`), *test* split; count and size
  from the profile's detection settings.  No download.
* ``"KITTI"``: ``<data_root>/KITTI/training/{image_2,label_2}`` through
  :class:`datasets.kitti.KittiDetection` (the first ``profile.real_limit`` frames when the
  profile sets one).  Absent -> ``DatasetMissing``.  A folder holding ``image_2/`` and
  ``label_2/`` works too.
* ``"DAWN"``: ``<data_root>/DAWN/Rain/*.jpg`` with ``Annotations/<stem>.xml`` (Pascal VOC,
  :mod:`datasets.voc`): 200 real rainy traffic photographs with hand-drawn boxes and no clean
  counterpart.  Score it with ``rain="none"``: the rain is already in the photographs.
* a COCO ``.json`` file of labelled images: a user's own frames, e.g. real rain with manual
  boxes (then use ``rain="none"``).

Rain (:func:`rainy`) is the suite's own synthesis, seeded per image from ``(seed, image id)``;
KITTI frames get the same presets at their native resolution: the streaks were calibrated on
training images only and are not retuned on the frames the detector is scored on.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from core.errors import DatasetMissing
from core.profiles import detection_profile
from datasets.kitti import KittiDetection, Object, format_label
from datasets.rain import add_rain
from datasets.roads import road_scenes
from datasets.training import read_rgb
from datasets.voc import voc_folder

#: the rains the study renders over clean frames: the first presets and the ones fitted to real pairs
RAINS = ("none", "light", "heavy", "light-real", "heavy-real")



@dataclass
class DetectionSet:
    """Frames with ground truth: ``image(i)`` is uint8 HxWx3 RGB, ``gts[i]`` the label list."""

    name: str
    ids: list[str]
    gts: list[list[Object]]
    load: Callable[[int], np.ndarray]
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, index: int) -> np.ndarray:
        return self.load(index)

    @property
    def n_objects(self) -> int:
        """Counted Car ground truths (every ``Car`` label, whatever its difficulty)."""
        return sum(1 for g in self.gts for o in g if o.type == "Car")



def _labels_digest(h, gts) -> None:
    for g in gts:
        h.update("\n".join(format_label(o) for o in g).encode())
        h.update(b"\x00")



def _files_digest(ids, paths, gts) -> str:
    """The fingerprint of labelled image files: ids, file sizes and labels."""
    h = hashlib.sha256()
    for image_id, path in zip(ids, paths):
        h.update(image_id.encode())
        h.update(str(Path(path).stat().st_size).encode())
    _labels_digest(h, gts)
    return h.hexdigest()



def detection_dataset(name: str, data_root: Path | None, profile: str = "quick") -> DetectionSet:
    """``"roads"`` (embedded test split), ``"KITTI"`` (under the data root) or a KITTI-layout folder.

    A missing KITTI folder raises :class:`core.errors.DatasetMissing` naming the path.
    """
    prof, det = detection_profile(profile)
    if name.lower() == "roads":
        scenes = road_scenes("test", det["n_test"], size=det["size"], seed=prof.seed)
        images = [s[1] for s in scenes]
        h = hashlib.sha256()
        for _, img, _ in scenes:
            h.update(img.tobytes())
        gts = [list(s[2]) for s in scenes]
        _labels_digest(h, gts)
        info = {"source": "embedded road scenes (datasets.roads), test split", "split": "test",
                "size": list(det["size"]), "seed": prof.seed, "fingerprint": h.hexdigest()}
        return DetectionSet("roads", [s[0] for s in scenes], gts, lambda i: images[i], info)

    if name.lower().endswith(".json") and Path(name).is_file():  # a user's labelled (e.g. real-rain) images
        ids, paths, gts = read_coco_labels(name)
        if prof.real_limit:
            ids, paths, gts = ids[: prof.real_limit], paths[: prof.real_limit], gts[: prof.real_limit]
        info = {"source": str(Path(name).resolve()), "limit": prof.real_limit,
                "fingerprint": _files_digest(ids, paths, gts)}
        return DetectionSet(Path(name).stem, ids, gts, lambda i: read_rgb(paths[i]), info)
    if name.lower() == "dawn":
        return _dawn(data_root, prof.real_limit)
    if name.lower() == "kitti":
        if data_root is None:
            raise DatasetMissing("KITTI: no data root; pass --data-root or set RESGUIDE_DATA "
                                 "(expected <root>/KITTI/training/{image_2,label_2})")
        root = Path(data_root) / "KITTI" / "training"
        label = "KITTI"
    elif Path(name).is_dir() and (Path(name) / "image_2").is_dir():
        root, label = Path(name), Path(name).name
    else:
        raise ValueError(f"unknown detection dataset {name!r}; choose roads, KITTI, a folder with image_2/, label_2/ "
                         "or a COCO .json file of labelled images")
    if not (root / "image_2").is_dir() or not (root / "label_2").is_dir():
        raise DatasetMissing(f"KITTI: no detection data at {root} (expected {root}/image_2 and {root}/label_2)")
    ds = KittiDetection(root)
    ids = ds.ids[: prof.real_limit] if prof.real_limit else ds.ids
    ds = KittiDetection(root, ids)
    gts = ds.all_labels()
    digest = _files_digest(ds.ids, [ds.image_path(i) for i in range(len(ds))], gts)
    info = {"source": str(root), "limit": prof.real_limit, "fingerprint": digest}
    return DetectionSet(label, list(ds.ids), gts, lambda i: read_rgb(ds.image_path(i)), info)




#: where DAWN's rainy photographs lie under the data root
DAWN_DIR = "DAWN/Rain"


def _dawn(data_root: Path | None, limit: int | None) -> DetectionSet:
    if data_root is None:
        raise DatasetMissing(f"DAWN: no data root; pass --data-root or set RESGUIDE_DATA (expected <root>/{DAWN_DIR})")
    root = Path(data_root) / DAWN_DIR
    if not (root / "Annotations").is_dir():
        raise DatasetMissing(f"DAWN: no photographs at {root} (expected {root}/*.jpg and {root}/Annotations/*.xml)")
    entries = voc_folder(root, root / "Annotations")
    if limit:
        entries = entries[:limit]
    ids, paths, gts = [e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries]
    info = {"source": f"<data root>/{DAWN_DIR}", "limit": limit, "fingerprint": _files_digest(ids, paths, gts),
            "real_rain": True}
    return DetectionSet("DAWN", ids, gts, lambda i: read_rgb(paths[i]), info)


def rain_seed(seed: int, image_id: str) -> int:
    """The rain seed of one image: a stable 32-bit hash of ``(seed, image id)``."""
    digest = hashlib.sha256(f"detection-rain/{int(seed)}/{image_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big")



def rainy(images: Sequence[np.ndarray], rain: str, seed: int, ids: Sequence[str] | None = None) -> list[np.ndarray]:
    """Rainy uint8 copies of ``images`` (uint8 HxWx3), image ``k`` seeded with ``rain_seed(seed, ids[k])``.

    ``rain`` is ``"none"`` (the images themselves are returned, uncopied), ``"light"`` or
    ``"heavy"`` (the :mod:`datasets.rain` presets, the same whatever the frame size: KITTI's
    1242x375 frames are not given retuned streaks -- no tuning on test data).  ``ids``
    default to ``"0", "1", ...``: pass the frames' ids so that an image's rain does not depend
    on where it sits in a list.
    """
    if rain not in RAINS:
        raise ValueError(f"rain must be one of {', '.join(RAINS)}, got {rain!r}")
    images = list(images)
    if ids is None:
        ids = [str(k) for k in range(len(images))]
    if len(ids) != len(images):
        raise ValueError(f"{len(images)} images but {len(ids)} ids")
    if rain == "none":
        return images

    return [add_rain(img, rain, rain_seed(seed, image_id)) for img, image_id in zip(images, ids)]


#: COCO category names (lower case) -> KITTI types; crowd annotations become DontCare
COCO_TYPES = {"car": "Car", "van": "Van"}



def read_coco_labels(json_path) -> tuple[list[str], list[Path], list[list[Object]]]:
    """A user's labelled images in a COCO JSON file -> (ids, image paths, KITTI ``Object`` labels).

    The second, real-rain data source of the detection study.  ``bbox`` ``[x, y, w, h]``
    becomes ``(x, y, x + w, y + h)``; category ``car`` -> ``Car``, ``van`` -> ``Van``, any
    other name is kept as its capitalised name (not counted for Car; a detection on it is a
    false positive, as in KITTI); ``iscrowd=1`` -> ``DontCare``.  A COCO file has no
    truncation or occlusion, so both are 0 (only the difficulty's height limit applies).
    Images are looked for at ``file_name`` relative to the JSON's folder, then under its
    ``images/`` subfolder.  Read with pycocotools; a missing file, image or malformed entry
    raises ValueError naming the file and the entry.
    """
    from pycocotools.coco import COCO

    json_path = Path(json_path)
    if not json_path.is_file():
        raise ValueError(f"COCO labels {json_path} do not exist")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(json_path))
    except Exception as exc:
        raise ValueError(f"{json_path}: not a COCO annotation file ({type(exc).__name__}: {exc})") from exc
    names = {c["id"]: str(c.get("name", "")).lower() for c in coco.dataset.get("categories", [])}
    ids, paths, labels = [], [], []
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        if "file_name" not in info:
            raise ValueError(f"{json_path}: image {image_id} has no file_name")
        candidates = [json_path.parent / info["file_name"], json_path.parent / "images" / info["file_name"]]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise ValueError(f"{json_path}: image {image_id} file {info['file_name']} not found "
                             f"(looked in {json_path.parent} and {json_path.parent / 'images'})")
        objects = []
        for ann in coco.imgToAnns.get(image_id, []):
            box = ann.get("bbox")
            if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(
                    isinstance(v, (int, float)) and math.isfinite(v) for v in box) or box[2] < 0 or box[3] < 0:
                raise ValueError(f"{json_path}: annotation {ann.get('id')} of image {image_id}: bbox must be "
                                 f"[x, y, w, h] with w, h >= 0, got {box!r}")
            if ann.get("category_id") not in names:
                raise ValueError(f"{json_path}: annotation {ann.get('id')}: unknown category_id {ann.get('category_id')!r}")
            name = names[ann["category_id"]]
            kind = "DontCare" if ann.get("iscrowd") else COCO_TYPES.get(name, name.capitalize() or "Other")
            x, y, w, h = (float(v) for v in box)
            objects.append(Object(type=kind, truncated=-1.0 if kind == "DontCare" else 0.0,
                                  occluded=-1 if kind == "DontCare" else 0, bbox=(x, y, x + w, y + h)))
        ids.append(Path(info["file_name"]).stem)
        paths.append(path)
        labels.append(objects)
    if not ids:
        raise ValueError(f"{json_path}: no images")
    return ids, paths, labels
