"""What a ``--weights`` value asks for, parsed once at the edge into a small value type.

The text has nine spellings, each with one meaning:

============================  ==========  ===============================================
text                          kind        meaning
============================  ==========  ===============================================
(none)                        default     the method's own default (its factory decides)
``init``                      init        the bare architecture, freshly initialised
``light`` ``heavy`` ``ddn``   rain        the suite-trained model for that rain
``heavy-seed1``               rain        the same, trained with seed 1 (a repeat, docs/training.md)
``official``                  official    the authors' checkpoint under the data root
``official-s25``              official    the authors' model for noise level 25 (DnCNN)
``denoise-s30``               denoise     the suite-trained grey denoiser for sigma 30
``denoise-color-s30``         denoise     the suite-trained colour denoiser for sigma 30
anything else                 path        a checkpoint file
============================  ==========  ===============================================

Factories receive a :class:`Weights`, never the raw text; :attr:`Weights.tag` gives the
canonical text back (it names cells and weights files).  Only the canonical spelling of a
denoiser tag is one, so that one model has one weights file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: The rain types the suite trains derainers for.
RAIN_TAGS = ("light", "heavy", "ddn", "light-real", "heavy-real", "heavy-real-spread", "bank-heavy", "bank-mix-heavy",
             "pairs-heavy", "pairs-heavy-warm", "pairs-mix-heavy-warm", "density")

_DENOISE_TAG = re.compile(r"^denoise(?P<color>-color)?-s(?P<sigma>[0-9]+)$")
_OFFICIAL_TAG = re.compile(r"^official-s(?P<sigma>[0-9]+)$")
_SEED_SUFFIX = re.compile(r"^(?P<rain>.+)-seed(?P<seed>[0-9]+)$")


def seeded_tag(rain: str, seed: int | None) -> str:
    """The weights tag of a model trained for ``rain`` with ``seed`` instead of its profile's:
    ``heavy-seed1`` (``rain`` itself when ``seed`` is None)."""
    return rain if seed is None else f"{rain}-seed{int(seed)}"


def split_seed(tag: str) -> tuple[str, int | None]:
    """``"heavy-seed1"`` -> ``("heavy", 1)``; any other tag -> ``(tag, None)``."""
    m = _SEED_SUFFIX.match(tag)
    if m is None or m["rain"] not in RAIN_TAGS:
        return tag, None
    return m["rain"], int(m["seed"])


def denoise_tag(sigma: int, colour: bool) -> str:
    """The weights tag of a denoiser: ``denoise-s30`` (grey) or ``denoise-color-s30`` (colour)."""
    return f"denoise{'-color' if colour else ''}-s{int(sigma)}"


def parse_denoise_tag(tag) -> tuple[int, bool] | None:
    """``"denoise-s30"`` -> ``(30, False)``, ``"denoise-color-s70"`` -> ``(70, True)``; None for any
    other value (a rain tag, a path)."""
    m = _DENOISE_TAG.match(str(tag)) if tag is not None else None
    if m is None:
        return None
    return int(m["sigma"]), bool(m["color"])


@dataclass(frozen=True)
class Weights:
    """One weights request; build it with :func:`parse_weights`."""

    kind: str = "default"
    rain: str | None = None      # kind "rain"
    seed: int | None = None      # kind "rain": a training seed other than the profile's
    sigma: int | None = None     # kind "denoise", or "official" for a per-noise-level release
    colour: bool = False         # kind "denoise"
    path: Path | None = None     # kind "path"

    @property
    def tag(self) -> str | None:
        """The canonical text of the request (None for the default)."""
        if self.kind == "default":
            return None
        if self.kind == "rain":
            return seeded_tag(self.rain, self.seed)
        if self.kind == "official":
            return "official" if self.sigma is None else f"official-s{self.sigma}"
        if self.kind == "denoise":
            return denoise_tag(self.sigma, self.colour)
        if self.kind == "path":
            return str(self.path)
        return self.kind

    def __str__(self) -> str:
        return self.tag or "default"

    @property
    def trained_here(self) -> bool:
        """A model the suite trains itself (the default or a rain tag)."""
        return self.kind in ("default", "rain")


def parse_weights(value: str | Path | Weights | None) -> Weights:
    """The :class:`Weights` of a ``--weights`` text (see the module doc); a Weights passes through."""
    if isinstance(value, Weights):
        return value
    if value is None or str(value).strip() == "":
        return Weights()
    if isinstance(value, Path):
        return Weights("path", path=value)
    text = str(value).strip()
    if text == "init":
        return Weights("init")
    rain, seed = split_seed(text)
    if rain in RAIN_TAGS:
        return Weights("rain", rain=rain, seed=seed)
    if text == "official":
        return Weights("official")
    official = _OFFICIAL_TAG.match(text)
    if official:
        return Weights("official", sigma=int(official["sigma"]))
    denoise = parse_denoise_tag(text)
    if denoise is not None:
        return Weights("denoise", sigma=denoise[0], colour=denoise[1])
    return Weights("path", path=Path(text).expanduser())


def require_file(weights: Weights) -> Path:
    """The checkpoint file of a ``path`` request; FileNotFoundError that lists the tags when the
    text is neither a tag nor an existing file (a misspelt tag reads like a missing file)."""
    if weights.kind != "path":
        raise ValueError(f"weights {weights} are a tag, not a file")
    if not weights.path.is_file():
        raise FileNotFoundError(
            f"weights {str(weights.path)!r} are neither a tag (init, {', '.join(RAIN_TAGS)}, RAIN-seedN, official, "
            "official-sSIGMA, denoise-sSIGMA, denoise-color-sSIGMA) nor a file")
    return weights.path
