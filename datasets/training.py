"""Clean training images and real training pairs, read from the data root (or the embedded
default): what the suite trains its derainers and denoisers on.

Deraining trains on BSDS500 train+val minus the Rain100 test backgrounds, plus Kodak24;
denoising on all of BSDS500 train+val as the paper did.  Test sets are never read here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from datasets.embedded import clean_images
from datasets.pairs import FolderPairs

#: Folder names of real paired training sets per rain type, searched under the data root.
REAL_TRAINING_SETS = {
    "light": ("RainTrainL", "Rain100L_train", "train_Rain100L"),
    "heavy": ("RainTrainH", "Rain100H_train", "train_Rain100H"),
    "ddn": ("Rain12600", "rain_data_train", "DDN_train"),
}



def real_training_pairs(data_root: Path | None, rain: str):
    """The user's real paired training set for ``rain`` under the data root, or None."""
    if data_root is None:
        return None
    wanted = {n.lower() for n in REAL_TRAINING_SETS.get(rain, ())}
    for depth in (1, 2, 3):
        for path in sorted(Path(data_root).glob("/".join(["*"] * depth))):
            if path.is_dir() and path.name.lower() in wanted:
                return FolderPairs(path)
    return None



_JPEG = {".jpg", ".jpeg"}



_BACKGROUNDS = "rain100-backgrounds.txt"



def read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 HxWx3 RGB."""
    with Image.open(path) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))



def _excluded_ids(listing: Path) -> set[str]:
    """Ids (file stems) named in the backgrounds list: "train/100075.jpg", "100075.jpg" or "100075"."""
    ids = set()
    for line in listing.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.add(Path(line.replace("\\", "/")).stem)
    return ids



def deraining_backgrounds(data_root: Path) -> tuple[list[Path], int]:
    """The clean deraining training backgrounds under ``data_root``: the BSDS500 train + val JPEGs
    (sorted, train first) minus every image named in ``BSDS500/rain100-backgrounds.txt`` (the
    Rain100 test backgrounds); returns the files and how many were left out."""
    bsds = Path(data_root) / "BSDS500"
    if not (bsds / "train").is_dir() or not (bsds / "val").is_dir():
        raise FileNotFoundError(f"no BSDS500 train/val folders in {bsds}")
    listing = bsds / _BACKGROUNDS
    if not listing.is_file():
        raise FileNotFoundError(f"{listing} is missing: without it the Rain100 test backgrounds cannot be "
                                "excluded from training")
    excluded = _excluded_ids(listing)
    files = [f for split in ("train", "val") for f in sorted((bsds / split).iterdir())
             if f.suffix.lower() in _JPEG and f.is_file()]
    kept = [f for f in files if f.stem not in excluded]
    return kept, len(files) - len(kept)


def training_images(data_root: Path | None, size: int | None = None) -> tuple[list[np.ndarray], str]:
    """Clean training images (uint8 HxWx3) and a description of where they came from.

    With ``data_root/BSDS500/train`` and ``.../val``: those JPEGs minus every image named
    in ``BSDS500/rain100-backgrounds.txt`` (the Rain100 test backgrounds), plus
    ``data_root/train/Kodak24/*.png`` if present, at native resolution. Only those folders
    are read: never Rain100L, BSD68, CBSD68, BSDS500/test or KITTI.
    Otherwise the embedded train split at ``size`` x ``size`` (default 256).
    """
    if data_root is not None:
        root = Path(data_root)
        bsds = root / "BSDS500"
        if (bsds / "train").is_dir() and (bsds / "val").is_dir():
            files, dropped = deraining_backgrounds(root)
            images: list[np.ndarray] = [read_rgb(f) for f in files]
            n_bsds = len(images)
            desc = f"BSDS500 train+val minus {dropped} Rain100 backgrounds ({n_bsds} images)"
            kodak = root / "train" / "Kodak24"
            if kodak.is_dir():
                pngs = sorted(f for f in kodak.iterdir() if f.suffix.lower() == ".png" and f.is_file())
                images.extend(read_rgb(f) for f in pngs)
                desc += f" + Kodak24 ({len(pngs)} images)"
            return images, f"{desc} from {root}, native resolution"
    return _embedded_training_images(data_root, size)



def _embedded_training_images(data_root: Path | None, size: int | None) -> tuple[list[np.ndarray], str]:
    side = int(size or 256)
    pairs = clean_images("train", side)
    reason = "no data root" if data_root is None else f"no BSDS500/train and BSDS500/val under {data_root}"
    return [img for _, img in pairs], f"embedded train split ({len(pairs)} images, {side}x{side}; {reason})"



def denoise_training_images(data_root: Path | None, size: int | None = None) -> tuple[list[np.ndarray], str]:
    """Clean training images of the denoisers (uint8 HxWx3, RGB) and where they came from.

    With ``data_root/BSDS500/train`` and ``.../val``: every JPEG of the two (200 + 100 = 300,
    the paper's "train and val set of BSD500"), at native resolution. The Rain100 backgrounds
    are not excluded: Table 5 is not scored on Rain100. Only those two folders are read: never
    BSDS500/test (Table 5's test set), BSD68/CBSD68 (inside val, so never a test set for
    these models), Train400 or Kodak24. Otherwise the embedded train split at ``size`` x
    ``size`` (default 256), and the description says so.
    """
    if data_root is not None:
        root = Path(data_root)
        bsds = root / "BSDS500"
        if (bsds / "train").is_dir() and (bsds / "val").is_dir():
            images: list[np.ndarray] = []
            counts = []
            for split in ("train", "val"):
                files = sorted(f for f in (bsds / split).iterdir() if f.suffix.lower() in _JPEG and f.is_file())
                images.extend(read_rgb(f) for f in files)
                counts.append(len(files))
            if not images:
                raise FileNotFoundError(f"{bsds}/train and {bsds}/val hold no JPEG images")
            return images, (f"BSDS500 train+val ({counts[0]} + {counts[1]} = {len(images)} images) from {root}, "
                            "native resolution")
    return _embedded_training_images(data_root, size)
