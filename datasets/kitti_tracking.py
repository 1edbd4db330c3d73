"""KITTI *tracking* frames with their official tracking labels, as detection training samples.

Layout (``<data root>/train/KITTI-tracking``)::

    image_02/SEQ/NNNNNN.jpg|png     one frame (NNNNNN = the frame number)
    label_02/SEQ.txt                the sequence's labels, one object a line

A label line is ``frame track_id type truncated occluded alpha x1 y1 x2 y2 h w l x y z
rotation_y``: the object-label format of :mod:`datasets.kitti` with two leading columns
(``truncated`` is an integer 0 / 1 / 2 there).  The label files are whole sequences, so they
also list frames whose images are absent; only frames with an image are returned.  These are
training frames only: nothing here is a scored frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets.kitti import Object, parse_label_line

__all__ = ["TRACKING_DIR", "read_tracking_labels", "tracking_samples"]

#: where the clean KITTI tracking frames live under the data root
TRACKING_DIR = "train/KITTI-tracking"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_tracking_labels(path: str | Path) -> dict[int, list[Object]]:
    """frame number -> its objects, from one ``label_02/SEQ.txt``; a malformed line raises
    ValueError naming the file and the line."""
    path = Path(path)
    frames: dict[int, list[Object]] = {}
    with path.open("r", encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            tokens = line.split()
            if not tokens:
                continue
            where = f"{path}:{number}"
            if len(tokens) != 17:
                raise ValueError(f"{where}: expected 17 fields (frame, track id and the 15 of an object "
                                 f"label), got {len(tokens)}")
            try:
                frame = int(tokens[0])
            except ValueError:
                raise ValueError(f"{where}: frame number is not an integer: {tokens[0]!r}") from None
            frames.setdefault(frame, []).append(parse_label_line(" ".join(tokens[2:]), where))
    return frames


def tracking_samples(root: str | Path) -> list[tuple[np.ndarray, list[Object], str]]:
    """``[(uint8 HxWx3 image, objects, "SEQ/NNNNNN")]`` of every frame with an image, in sequence
    and frame order.  A sequence folder without its label file, or a file name that is not a frame
    number, raises ValueError naming it."""
    from PIL import Image

    root = Path(root)
    image_root, label_root = root / "image_02", root / "label_02"
    if not image_root.is_dir():
        raise FileNotFoundError(f"no image folder {image_root} (expected image_02/SEQ/NNNNNN.jpg)")
    samples = []
    for seq_dir in sorted(p for p in image_root.iterdir() if p.is_dir()):
        label_file = label_root / f"{seq_dir.name}.txt"
        if not label_file.is_file():
            raise ValueError(f"{seq_dir}: no label file {label_file}")
        labels = read_tracking_labels(label_file)
        for image_path in sorted(p for p in seq_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES):
            try:
                frame = int(image_path.stem)
            except ValueError:
                raise ValueError(f"{image_path}: the file name is not a frame number") from None
            with Image.open(image_path) as img:
                array = np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
            samples.append((array, labels.get(frame, []), f"{seq_dir.name}/{image_path.stem}"))
    if not samples:
        raise ValueError(f"{image_root}: no frames found")
    return samples
