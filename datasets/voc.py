"""Pascal VOC box annotations (one XML per image), as the DAWN release ships them.

Only what a detection benchmark needs is read: ``size/{width,height}`` and every ``object`` with
its ``name`` and ``bndbox/{xmin,ymin,xmax,ymax}``.  Names become KITTI-style types
(:data:`VOC_TYPES`: ``car`` -> ``Car``, ``truck`` -> ``Truck``, ...; any other name is kept,
capitalised).  VOC has no truncation or occlusion levels, so both are 0.  Images and XML files are
paired by file stem: the XML's own ``filename`` field is not trusted (DAWN's is not reliable).

A malformed file, a missing field, a box that is empty or reaches outside the image, or a stated
size that disagrees with the image raise ValueError naming the file and the object.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from datasets.kitti import Object

__all__ = ["VOC_TYPES", "read_voc", "voc_folder"]

VOC_TYPES = {"car": "Car", "truck": "Truck", "bus": "Bus", "person": "Pedestrian", "motorcycle": "Motorcycle",
             "bicycle": "Cyclist", "van": "Van"}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _number(node, tag: str, where: str) -> float:
    child = node.find(tag)
    if child is None or child.text is None:
        raise ValueError(f"{where}: missing <{tag}>")
    try:
        value = float(child.text.strip())
    except ValueError:
        raise ValueError(f"{where}: <{tag}> is not a number: {child.text.strip()!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: <{tag}> is not finite: {child.text.strip()!r}")
    return value


def read_voc(path: str | Path, image_size: tuple[int, int] | None = None) -> tuple[tuple[int, int], list[Object]]:
    """``((width, height), objects)`` of one VOC XML file.  ``image_size`` (width, height of the
    actual image), when given, must match the file's ``size`` and bounds every box."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise ValueError(f"{path}: not a readable VOC XML file ({exc})") from None
    if root.tag != "annotation":
        raise ValueError(f"{path}: root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")
    if size is None:
        raise ValueError(f"{path}: missing <size>")
    width, height = int(_number(size, "width", f"{path} <size>")), int(_number(size, "height", f"{path} <size>"))
    if image_size is not None and tuple(image_size) != (width, height):
        raise ValueError(f"{path}: <size> says {width}x{height} but the image is {image_size[0]}x{image_size[1]}")
    objects = []
    for k, node in enumerate(root.iter("object")):
        where = f"{path} object {k}"
        name = node.find("name")
        if name is None or not (name.text or "").strip():
            raise ValueError(f"{where}: missing <name>")
        box = node.find("bndbox")
        if box is None:
            raise ValueError(f"{where}: missing <bndbox>")
        x1, y1, x2, y2 = (_number(box, t, where) for t in ("xmin", "ymin", "xmax", "ymax"))
        if not (x2 > x1 and y2 > y1):
            raise ValueError(f"{where}: empty box ({x1}, {y1}, {x2}, {y2})")
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise ValueError(f"{where}: box ({x1}, {y1}, {x2}, {y2}) reaches outside the {width}x{height} image")
        label = name.text.strip().lower()
        objects.append(Object(type=VOC_TYPES.get(label, label.capitalize()), truncated=0.0, occluded=0,
                              bbox=(x1, y1, x2, y2)))
    return (width, height), objects


def voc_folder(images: str | Path, annotations: str | Path) -> list[tuple[str, Path, list[Object]]]:
    """``[(stem, image path, objects)]`` for every image in ``images`` (sorted by name), its XML
    ``annotations/<stem>.xml``.  A missing XML, or an XML without an image, raises ValueError
    naming it."""
    from PIL import Image

    images, annotations = Path(images), Path(annotations)
    paths = sorted(p for p in images.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{images}: no images")
    stems = {p.stem for p in paths}
    orphans = sorted(p.name for p in annotations.glob("*.xml") if p.stem not in stems)
    if orphans:
        raise ValueError(f"{annotations}: annotation {orphans[0]} has no image in {images}")
    out = []
    for image in paths:
        xml = annotations / f"{image.stem}.xml"
        if not xml.is_file():
            raise ValueError(f"{image}: no annotation file {xml}")
        with Image.open(image) as img:
            size = img.size
        out.append((image.stem, image, read_voc(xml, size)[1]))
    return out
