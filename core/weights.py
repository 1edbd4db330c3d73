"""The grammar of weights tags, shared by the floors that name weights.

A denoiser trained by the suite is tagged ``denoise-s30`` (grey) or ``denoise-color-s30``
(colour); only this canonical spelling is a tag, so that one model has one weights file.
"""
from __future__ import annotations

import re

_DENOISE_TAG = re.compile(r"^denoise(?P<color>-color)?-s(?P<sigma>[0-9]+)$")



def denoise_tag(sigma: int, colour: bool) -> str:
    """The weights tag of a denoiser: ``denoise-s30`` (grey) or ``denoise-color-s30`` (colour)."""
    return f"denoise{'-color' if colour else ''}-s{int(sigma)}"



def parse_denoise_tag(tag) -> tuple[int, bool] | None:
    """``"denoise-s30"`` -> ``(30, False)``, ``"denoise-color-s70"`` -> ``(70, True)``; None for any
    other string (a rain tag, a path). Only the canonical spelling is a tag, so that one model has
    one weights file."""
    m = _DENOISE_TAG.match(str(tag)) if tag is not None else None
    if m is None:
        return None
    return int(m["sigma"]), bool(m["color"])
