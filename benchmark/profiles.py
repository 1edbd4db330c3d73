"""Profiles scale the work (image sizes, image counts, iterations), never the code path."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    embedded_size: int        # side of the square embedded-default test images
    real_limit: int | None    # first N pairs of each real dataset (None = all)
    train_iterations: int = 0  # training schedule for methods the suite trains itself
    train_batch: int = 16
    train_patch: int = 128
    seed: int = 0
    runtime_size: int = 500   # Table 4's image side
    runtime_repeats: int = 5
    runtime_compile: bool = True  # Table 4's compiled rows (compiling DID-MDN takes minutes)
    description: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", embedded_size=64, real_limit=8, train_iterations=40, train_batch=4, train_patch=48,
                     runtime_size=64, runtime_repeats=1, runtime_compile=False,
                     description="CI and the regression gate: seconds to minutes on 2 CPU cores"),
    "quick": Profile("quick", embedded_size=192, real_limit=None, train_iterations=1000, train_batch=16,
                     train_patch=64,
                     description="the default: the embedded default (and any real data) on a laptop CPU"),
    "paper": Profile("paper", embedded_size=256, real_limit=None, train_iterations=50_000, train_batch=16,
                     train_patch=128, runtime_repeats=10,
                     description="the paper's schedule; meant for a GPU"),
}
DEFAULT_PROFILE = "quick"


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None
