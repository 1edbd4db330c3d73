"""Reading KITTI object labels and a plain-folder KITTI detection dataset.

Label format (``label_2/*.txt``, one object a line, whitespace-separated)::

    type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y [score]

15 fields for ground truth; detections (result files of the official devkit)
carry a 16th field, the score.  ``DontCare`` regions use -1 for truncated /
occluded and -10 / -1000 placeholders for the 3-D fields.

Why not :class:`torchvision.datasets.Kitti`: it expects the layout
``<root>/Kitti/raw/training/{image_2,label_2}`` (the one its ``download=True``
produces) and refuses any other, whereas the data here is a plain folder
``<root>/{image_2,label_2}`` (e.g. ``.../KITTI/training``).  Its target is also
a list of dicts rather than typed objects, it finds label files lazily (a
missing one fails only on access) and it returns PIL images.  So the files are
read here directly, in exactly the same on-disk format (``image_2/<id>.png``
paired by stem with ``label_2/<id>.txt``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["Object", "parse_label_line", "read_labels", "format_label", "write_labels", "KittiDetection"]

_FIELD_NAMES = (
    "type",
    "truncated",
    "occluded",
    "alpha",
    "x1",
    "y1",
    "x2",
    "y2",
    "height",
    "width",
    "length",
    "x",
    "y",
    "z",
    "rotation_y",
    "score",
)


@dataclass(frozen=True)
class Object:
    """One KITTI object: a ground-truth label or a detection (``score`` set)."""

    type: str
    truncated: float
    occluded: int
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    score: float | None = None
    alpha: float = -10.0
    dimensions: tuple[float, float, float] = (-1.0, -1.0, -1.0)  # h, w, l (m)
    location: tuple[float, float, float] = (-1000.0, -1000.0, -1000.0)  # x, y, z (m)
    rotation_y: float = -10.0

    @property
    def height(self) -> float:
        """Box height in pixels (y2 - y1), the quantity the difficulty filter uses."""
        return self.bbox[3] - self.bbox[1]


def _number(token: str, name: str, where: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise ValueError(f"{where}: field '{name}' is not a number: {token!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: field '{name}' is not finite: {token!r}")
    return value


def parse_label_line(line: str, where: str = "<line>") -> Object:
    """Parse one label line; ``where`` (e.g. ``"file.txt:3"``) prefixes any error."""
    tokens = line.split()
    if len(tokens) not in (15, 16):
        raise ValueError(
            f"{where}: expected 15 fields (16 with a score), got {len(tokens)}: {line.strip()!r}"
        )
    values = [_number(tok, _FIELD_NAMES[k], where) for k, tok in enumerate(tokens[1:], start=1)]
    occluded_token = tokens[2]
    try:
        occluded = int(occluded_token)
    except ValueError:
        raise ValueError(f"{where}: field 'occluded' is not an integer: {occluded_token!r}") from None
    truncated, _, alpha, x1, y1, x2, y2, h, w, l, x, y, z, ry = values[:14]
    if x2 < x1 or y2 < y1:
        raise ValueError(f"{where}: bbox has x2 < x1 or y2 < y1: ({x1}, {y1}, {x2}, {y2})")
    score = values[14] if len(values) == 15 else None
    return Object(
        type=tokens[0],
        truncated=truncated,
        occluded=occluded,
        bbox=(x1, y1, x2, y2),
        score=score,
        alpha=alpha,
        dimensions=(h, w, l),
        location=(x, y, z),
        rotation_y=ry,
    )


def read_labels(path: str | Path) -> list[Object]:
    """Read a KITTI label (or detection result) file.

    Blank lines are skipped.  A malformed line raises ``ValueError`` naming the
    file, the 1-based line number and what is wrong.
    """
    path = Path(path)
    objects = []
    with path.open("r", encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            objects.append(parse_label_line(line, where=f"{path}:{number}"))
    return objects


def format_label(obj: Object) -> str:
    """One line in KITTI format (16 fields when the object has a score)."""
    h, w, l = obj.dimensions
    x, y, z = obj.location
    fields = [
        obj.type,
        f"{obj.truncated:.2f}",
        str(int(obj.occluded)),
        f"{obj.alpha:.2f}",
        *(f"{v:.2f}" for v in obj.bbox),
        f"{h:.2f}",
        f"{w:.2f}",
        f"{l:.2f}",
        f"{x:.2f}",
        f"{y:.2f}",
        f"{z:.2f}",
        f"{obj.rotation_y:.2f}",
    ]
    if obj.score is not None:
        fields.append(f"{obj.score:.6f}")
    return " ".join(fields)


def write_labels(path: str | Path, objects: Iterable[Object]) -> None:
    """Write objects in KITTI format (e.g. detections for the official devkit)."""
    Path(path).write_text("".join(format_label(o) + "\n" for o in objects), encoding="utf-8")


class KittiDetection:
    """KITTI object detection over a plain folder ``root/image_2/*.png`` + ``root/label_2/*.txt``.

    Images and labels are paired by file stem (``000123.png`` <-> ``000123.txt``);
    a missing label file raises ``FileNotFoundError`` naming it, at construction.
    ``dataset[i]`` is ``(image, objects, image_id)``: a float tensor 3xHxW in
    [0, 1], the list of :class:`Object` and the stem.  See the module docstring
    for why :class:`torchvision.datasets.Kitti` is not used.
    """

    def __init__(self, root: str | Path, ids: Sequence[str] | None = None):
        self.root = Path(root)
        self.image_dir = self.root / "image_2"
        self.label_dir = self.root / "label_2"
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"no image folder {self.image_dir}")
        if ids is None:
            ids = sorted(p.stem for p in self.image_dir.glob("*.png"))
        else:
            ids = list(ids)
            for image_id in ids:
                image = self.image_dir / f"{image_id}.png"
                if not image.is_file():
                    raise FileNotFoundError(f"missing image file {image}")
        for image_id in ids:
            label = self.label_dir / f"{image_id}.txt"
            if not label.is_file():
                raise FileNotFoundError(f"missing label file {label} for image {image_id}.png")
        self.ids: list[str] = list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / f"{self.ids[index]}.png"

    def label_path(self, index: int) -> Path:
        return self.label_dir / f"{self.ids[index]}.txt"

    def labels(self, index: int) -> list[Object]:
        """The objects of one frame, without decoding the image."""
        return read_labels(self.label_path(index))

    def all_labels(self) -> list[list[Object]]:
        """Ground truth of every frame, in dataset order (the ``gts`` of the evaluators)."""
        return [self.labels(i) for i in range(len(self))]

    def load_image(self, index: int):
        import numpy as np
        import torch
        from PIL import Image

        with Image.open(self.image_path(index)) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.load_image(index), self.labels(index), self.ids[index]
