"""Reading one image file as uint8 RGB, with errors that name the file.

Greyscale, palette and 16-bit images are converted to 8-bit RGB; an alpha channel is dropped;
a truncated or unreadable file raises :class:`core.errors.DatasetError` naming it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from core.errors import DatasetError


def _to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        arr = np.asarray(im, dtype=np.uint8)
    elif mode.startswith("I;16") or mode == "I":
        wide = np.asarray(im).astype(np.int64)
        wide = np.clip(wide, 0, 65535)
        gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        arr = np.repeat(gray[:, :, None], 3, axis=2)
    elif mode == "F":
        raise DatasetError("floating-point images are not supported")
    else:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DatasetError(f"unexpected decoded shape {arr.shape} (mode {mode})")
    return np.ascontiguousarray(arr)



def read_image(path: Path) -> np.ndarray:
    """Decode an image fully into a uint8 H x W x 3 RGB array.

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images are converted.
    EXIF orientation is not applied: pixels are used as stored.  Truncated files are
    refused even when PIL's LOAD_TRUNCATED_IMAGES switch is on elsewhere.
    """
    path = Path(path)
    tolerant = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb(im)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except DatasetError as exc:
        raise DatasetError(f"{path}: {exc}") from None
    except Exception as exc:   # PIL raises OSError, SyntaxError, ValueError, EOFError, ...
        raise DatasetError(f"{path}: cannot decode image ({exc})") from exc
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = tolerant


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header; pixels are not decoded."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except Exception as exc:   # PIL raises many exception types on bad headers
        raise DatasetError(f"{path}: cannot read image header ({exc})") from exc
